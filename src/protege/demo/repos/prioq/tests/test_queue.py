import pytest

from prioq.queue import PriorityQueue


def test_lowest_priority_first():
    q = PriorityQueue()
    q.push("low", 5)
    q.push("high", 1)
    q.push("mid", 3)
    assert q.drain() == ["high", "mid", "low"]


def test_equal_priorities_keep_insertion_order():
    q = PriorityQueue()
    for name in ("a", "b", "c"):
        q.push(name, 1)
    assert q.drain() == ["a", "b", "c"]


def test_items_are_never_compared():
    q = PriorityQueue()
    q.push({"job": 1}, 2)
    q.push({"job": 2}, 2)
    assert q.pop() == {"job": 1}


def test_peek_does_not_remove():
    q = PriorityQueue()
    q.push("x", 1)
    assert q.peek() == "x"
    assert len(q) == 1


def test_pop_from_empty_queue():
    with pytest.raises(IndexError, match="empty PriorityQueue"):
        PriorityQueue().pop()
