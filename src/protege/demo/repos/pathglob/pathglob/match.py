"""Matching paths against glob patterns."""

from collections.abc import Iterable

from pathglob.translate import translate


def normalize(path: str) -> str:
    """Forward slashes, no leading './'."""
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def match(path: str, pattern: str) -> bool:
    """True when the whole of `path` matches `pattern`."""
    return translate(normalize(pattern)).match(normalize(path)) is not None


def match_any(path: str, patterns: Iterable[str]) -> bool:
    return any(match(path, pattern) for pattern in patterns)


def filter_paths(paths: Iterable[str], pattern: str) -> list[str]:
    """The paths that match `pattern`, in their original order."""
    return [path for path in paths if match(path, pattern)]
