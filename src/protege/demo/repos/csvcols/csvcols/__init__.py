"""Select, filter and sort columns of CSV text."""

__version__ = "1.0.0"
