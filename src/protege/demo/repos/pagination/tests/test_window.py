import pytest

from pagination import page_window


def test_window_centred_on_current():
    assert page_window(5, 10) == [3, 4, 5, 6, 7]


def test_window_clamped_at_both_ends():
    assert page_window(1, 10) == [1, 2, 3, 4, 5]
    assert page_window(10, 10) == [6, 7, 8, 9, 10]


def test_window_wider_than_the_pages():
    assert page_window(2, 3) == [1, 2, 3]


def test_current_out_of_range():
    with pytest.raises(ValueError):
        page_window(4, 3)
