"""A least-recently-used cache with hit statistics."""

from lrucache.cache import LRUCache
from lrucache.stats import CacheStats

__all__ = ["CacheStats", "LRUCache"]
__version__ = "1.0.0"
