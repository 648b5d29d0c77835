"""A sliding-window rate limiter."""

from collections import deque

from ratelimit.clock import Clock, MonotonicClock


class SlidingWindowLimiter:
    """Allows at most `limit` calls in any window of `period` seconds.

    A call made at time t counts against the limit until t + period; from then on its slot is
    free again.
    """

    def __init__(self, limit: int, period: float, clock: Clock | None = None):
        if limit < 1 or period <= 0:
            raise ValueError(f"need limit >= 1 and period > 0, got limit={limit}, period={period}")
        self.limit = limit
        self.period = period
        self.clock = clock or MonotonicClock()
        self._calls: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._calls and self._calls[0] < now - self.period:
            self._calls.popleft()

    def try_acquire(self) -> bool:
        """Record a call and return True if it is allowed now; otherwise return False."""
        now = self.clock.now()
        self._expire(now)
        if len(self._calls) >= self.limit:
            return False
        self._calls.append(now)
        return True

    def remaining(self) -> int:
        """Calls still allowed right now."""
        self._expire(self.clock.now())
        return self.limit - len(self._calls)

    def retry_after(self) -> float:
        """Seconds until the next call will be allowed (0.0 if one is allowed now)."""
        now = self.clock.now()
        self._expire(now)
        if len(self._calls) < self.limit:
            return 0.0
        return self._calls[0] + self.period - now
