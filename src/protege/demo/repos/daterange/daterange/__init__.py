"""Helpers for ranges of calendar dates."""

from daterange.ranges import date_range, days_between, overlap

__all__ = ["date_range", "days_between", "overlap"]
__version__ = "1.0.0"
