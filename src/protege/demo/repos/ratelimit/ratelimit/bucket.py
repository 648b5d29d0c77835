"""A token-bucket rate limiter."""

from ratelimit.clock import Clock, MonotonicClock


class TokenBucket:
    """Holds up to `capacity` tokens and gains `rate` tokens per second; a call spends tokens."""

    def __init__(self, rate: float, capacity: float, clock: Clock | None = None):
        if rate <= 0 or capacity <= 0:
            raise ValueError(f"need rate > 0 and capacity > 0, got rate={rate}, capacity={capacity}")
        self.rate = rate
        self.capacity = capacity
        self.clock = clock or MonotonicClock()
        self._tokens = capacity
        self._updated = self.clock.now()

    def _refill(self) -> None:
        now = self.clock.now()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def try_acquire(self, tokens: float = 1.0) -> bool:
        """Spend `tokens` and return True if the bucket holds that many; otherwise return False."""
        self._refill()
        if tokens > self._tokens:
            return False
        self._tokens -= tokens
        return True
