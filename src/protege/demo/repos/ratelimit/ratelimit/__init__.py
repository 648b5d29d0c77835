"""Rate limiters with an injectable clock."""

__version__ = "1.0.0"
