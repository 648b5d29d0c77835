from ratelimit.bucket import TokenBucket
from ratelimit.clock import ManualClock


def test_bucket_refills_over_time():
    clock = ManualClock()
    bucket = TokenBucket(rate=1.0, capacity=2.0, clock=clock)
    assert [bucket.try_acquire(), bucket.try_acquire(), bucket.try_acquire()] == [True, True, False]
    clock.advance(1)
    assert bucket.try_acquire()


def test_bucket_never_exceeds_capacity():
    clock = ManualClock()
    bucket = TokenBucket(rate=5.0, capacity=1.0, clock=clock)
    clock.advance(100)
    assert bucket.try_acquire() and not bucket.try_acquire()
