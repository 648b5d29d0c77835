"""Parse and compare semantic versions."""

__version__ = "1.0.0"
