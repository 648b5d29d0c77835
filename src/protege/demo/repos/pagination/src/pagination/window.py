"""The page numbers a pager shows around the current page."""

from __future__ import annotations


def page_window(current: int, num_pages: int, width: int = 5) -> list[int]:
    """Up to `width` consecutive page numbers centred on `current`, kept inside 1..num_pages."""
    if not 1 <= current <= num_pages:
        raise ValueError(f"current page {current} is out of range 1..{num_pages}")
    first = max(1, min(current - width // 2, num_pages - width + 1))
    return list(range(first, min(num_pages, first + width - 1) + 1))
