"""Filters usable as `{{ value|name }}`; each takes a value and returns a new one."""

from collections.abc import Callable
from typing import Any


def _length(value: Any) -> int:
    return len(value)


FILTERS: dict[str, Callable[[Any], Any]] = {
    "upper": lambda value: str(value).upper(),
    "lower": lambda value: str(value).lower(),
    "title": lambda value: str(value).title(),
    "trim": lambda value: str(value).strip(),
    "length": _length,
}
