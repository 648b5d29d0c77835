import pytest

from pagination import Paginator


def test_first_and_last_partial_page(letters):
    pages = Paginator(letters, per_page=4)
    assert pages.num_pages == 3
    assert pages.page(1) == ["a", "b", "c", "d"]
    assert pages.page(3) == ["i", "j"]


def test_pages_match_more_itertools_chunked(letters, chunks):
    assert list(Paginator(letters, per_page=3)) == chunks(letters, 3)


def test_empty_sequence_has_one_empty_page():
    pages = Paginator([], per_page=5)
    assert pages.num_pages == 1
    assert pages.page(1) == []


def test_page_out_of_range():
    with pytest.raises(IndexError):
        Paginator("abc", per_page=2).page(3)


def test_per_page_must_be_positive():
    with pytest.raises(ValueError):
        Paginator("abc", per_page=0)
