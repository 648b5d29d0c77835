"""A stable priority queue on a binary heap."""

from prioq.queue import PriorityQueue

__all__ = ["PriorityQueue"]
__version__ = "1.0.0"
