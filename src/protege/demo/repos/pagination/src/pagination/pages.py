"""Split a sequence into numbered pages of a fixed size (the last one may be shorter)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from more_itertools import chunked


class Paginator:
    """Pages of `per_page` items, numbered from 1. An empty sequence has one empty page."""

    def __init__(self, items: Iterable[Any], per_page: int) -> None:
        if per_page < 1:
            raise ValueError("per_page must be at least 1")
        self.items = list(items)
        self.per_page = per_page

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def num_pages(self) -> int:
        return self.count // self.per_page + 1

    def page(self, number: int) -> list[Any]:
        """The items on page `number`; IndexError outside 1..num_pages."""
        if not 1 <= number <= self.num_pages:
            raise IndexError(f"page {number} is out of range 1..{self.num_pages}")
        start = (number - 1) * self.per_page
        return self.items[start : start + self.per_page]

    def __iter__(self) -> Iterator[list[Any]]:
        yield from chunked(self.items, self.per_page) if self.items else [[]]
