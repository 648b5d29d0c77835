"""Comparing and sorting version strings by semver precedence."""

from collections.abc import Iterable

from semverlite.version import Version


def precedence_key(version: Version) -> tuple:
    """Sort key: equal keys for versions of equal precedence (build metadata ignored)."""
    return (version.major, version.minor, version.patch, version.prerelease)


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as version `a` has lower, equal or higher precedence than `b`."""
    key_a, key_b = precedence_key(Version.parse(a)), precedence_key(Version.parse(b))
    return (key_a > key_b) - (key_a < key_b)


def sort_versions(versions: Iterable[str]) -> list[str]:
    """`versions` from lowest to highest precedence (stable for equal precedence)."""
    return sorted(versions, key=lambda text: precedence_key(Version.parse(text)))


def max_version(versions: Iterable[str], *, include_prerelease: bool = False) -> str | None:
    """The highest version, pre-releases skipped unless `include_prerelease`; None if none is left."""
    candidates = [v for v in versions if include_prerelease or not Version.parse(v).is_prerelease]
    return sort_versions(candidates)[-1] if candidates else None
