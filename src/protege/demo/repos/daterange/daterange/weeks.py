"""ISO 8601 weeks: Monday to Sunday, week 1 holds the year's first Thursday."""

from datetime import date, timedelta

DAYS_PER_WEEK = 7
# December 28 always falls in the last ISO week of its year.
LAST_WEEK_DAY = (12, 28)


def week_start(day: date) -> date:
    """The Monday of `day`'s ISO week."""
    return day - timedelta(days=day.isoweekday() - 1)


def week_end(day: date) -> date:
    """The Sunday of `day`'s ISO week."""
    return week_start(day) + timedelta(days=DAYS_PER_WEEK - 1)


def weeks_in_year(year: int) -> int:
    """52 or 53."""
    return date(year, *LAST_WEEK_DAY).isocalendar().week
