"""Memoize a function of hashable positional arguments in an LRUCache."""

import functools
from collections.abc import Callable
from typing import Any

from lrucache.cache import LRUCache

DEFAULT_CAPACITY = 128
_MISSING = object()


def lru_memoize(capacity: int = DEFAULT_CAPACITY) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: cache results by positional arguments; the cache is exposed as `wrapper.cache`."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        cache = LRUCache(capacity)

        @functools.wraps(func)
        def wrapper(*args: Any) -> Any:
            result = cache.get(args, _MISSING)
            if result is _MISSING:
                result = func(*args)
                cache.put(args, result)
            return result

        wrapper.cache = cache  # type: ignore[attr-defined]
        return wrapper

    return decorate
