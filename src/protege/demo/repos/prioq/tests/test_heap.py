import pytest

from prioq import heap


def test_push_keeps_minimum_at_root():
    h = []
    for value in (5, 2, 8):
        heap.push(h, value)
    assert h[0] == 2


def test_pop_returns_items_in_order():
    h = heap.heapify([3, 1, 2])
    assert [heap.pop(h), heap.pop(h), heap.pop(h)] == [1, 2, 3]


def test_pop_from_empty_heap():
    with pytest.raises(IndexError):
        heap.pop([])
