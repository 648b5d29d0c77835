"""Inclusive ranges of calendar dates."""

from datetime import date, timedelta


def date_range(start: date, end: date, step: int = 1) -> list[date]:
    """Every `step`-th day from `start` to `end`, both included; empty when `end` is before `start`."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    days = []
    current = start
    while current < end:
        days.append(current)
        current += timedelta(days=step)
    return days


def days_between(start: date, end: date) -> int:
    """Days from `start` to `end`; negative when `end` is earlier."""
    return (end - start).days


def overlap(a: tuple[date, date], b: tuple[date, date]) -> tuple[date, date] | None:
    """The intersection of two inclusive ranges given as (start, end), or None if they are disjoint."""
    start, end = max(a[0], b[0]), min(a[1], b[1])
    return (start, end) if start <= end else None
