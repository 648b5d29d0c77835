from datetime import date

import pytest

from daterange.ranges import date_range, days_between, overlap


def test_range_is_empty_when_end_is_before_start():
    assert date_range(date(2024, 3, 2), date(2024, 3, 1)) == []


def test_range_with_step_stops_before_end():
    assert date_range(date(2024, 1, 1), date(2024, 1, 6), step=2) == [
        date(2024, 1, 1),
        date(2024, 1, 3),
        date(2024, 1, 5),
    ]


def test_step_must_be_positive():
    with pytest.raises(ValueError, match="step"):
        date_range(date(2024, 1, 1), date(2024, 1, 2), step=0)


def test_days_between():
    assert days_between(date(2024, 2, 28), date(2024, 3, 1)) == 2
    assert days_between(date(2024, 3, 1), date(2024, 2, 28)) == -2


def test_overlap():
    a = (date(2024, 1, 1), date(2024, 1, 10))
    b = (date(2024, 1, 5), date(2024, 1, 20))
    assert overlap(a, b) == (date(2024, 1, 5), date(2024, 1, 10))


def test_disjoint_ranges_do_not_overlap():
    assert overlap((date(2024, 1, 1), date(2024, 1, 2)), (date(2024, 1, 3), date(2024, 1, 4))) is None
