"""Exact money amounts with currencies, allocation and formatting."""

__version__ = "1.0.0"
