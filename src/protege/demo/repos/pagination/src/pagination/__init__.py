"""Numbered pages over a sequence."""

from pagination.pages import Paginator
from pagination.window import page_window

__all__ = ["Paginator", "page_window"]
