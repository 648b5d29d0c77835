from datetime import date

from daterange.weeks import week_end, week_start, weeks_in_year


def test_week_bounds():
    wednesday = date(2024, 3, 6)
    assert week_start(wednesday) == date(2024, 3, 4)
    assert week_end(wednesday) == date(2024, 3, 10)


def test_weeks_in_year():
    assert weeks_in_year(2020) == 53
    assert weeks_in_year(2023) == 52
