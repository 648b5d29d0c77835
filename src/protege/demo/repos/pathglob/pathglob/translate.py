"""Translating glob patterns into regular expressions."""

import re
from functools import lru_cache

CACHE_SIZE = 256


def _class(body: str) -> str:
    negate = body.startswith("!")
    body = body[1:] if negate else body
    body = body.replace("\\", "\\\\")
    # A negated class must not match '/' either: it stays inside one segment.
    return f"[^/{body}]" if negate else f"[{body}]"


@lru_cache(maxsize=CACHE_SIZE)
def translate(pattern: str) -> re.Pattern[str]:
    """A compiled regex that matches exactly the paths `pattern` matches."""
    parts = []
    i, n = 0, len(pattern)
    while i < n:
        at_segment_start = i == 0 or pattern[i - 1] == "/"
        if at_segment_start and pattern.startswith("**/", i):
            parts.append("(?:[^/]+/)*")
            i += 3
        elif at_segment_start and pattern.startswith("**", i) and i + 2 == n:
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append(".*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            parts.append(_class(pattern[i + 1 : end]))
            i = end + 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z")
