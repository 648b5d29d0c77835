import pytest

from ratelimit.clock import ManualClock
from ratelimit.window import SlidingWindowLimiter


def make(limit=2, period=10.0):
    clock = ManualClock()
    return clock, SlidingWindowLimiter(limit, period, clock)


def test_allows_up_to_limit():
    _, limiter = make()
    assert [limiter.try_acquire() for _ in range(3)] == [True, True, False]


def test_slot_frees_after_period():
    clock, limiter = make()
    limiter.try_acquire()
    limiter.try_acquire()
    clock.advance(11)
    assert limiter.try_acquire()


def test_remaining():
    clock, limiter = make(limit=3)
    limiter.try_acquire()
    assert limiter.remaining() == 2


def test_retry_after_when_full():
    clock, limiter = make()
    limiter.try_acquire()
    clock.advance(4)
    limiter.try_acquire()
    assert limiter.retry_after() == 6.0


def test_invalid_arguments():
    with pytest.raises(ValueError, match="limit"):
        SlidingWindowLimiter(0, 1.0)
