"""Counters kept by a cache."""

from dataclasses import dataclass


@dataclass
class CacheStats:
    """Lookups that found a value (hits), lookups that did not (misses), and evictions."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    def hit_rate(self) -> float:
        """Fraction of lookups that were hits; 0.0 before the first lookup."""
        return self.hits / self.lookups if self.lookups else 0.0
