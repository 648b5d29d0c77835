"""A stable priority queue."""

import itertools
from typing import Any

from prioq import heap


class PriorityQueue:
    """Pops the item with the lowest priority value first; equal priorities pop in insertion order.

    Items themselves are never compared, so any object can be queued.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Any]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: Any, priority: float) -> None:
        heap.push(self._heap, (priority, next(self._order), item))

    def pop(self) -> Any:
        if not self._heap:
            raise IndexError("pop from an empty PriorityQueue")
        return heap.pop(self._heap)[2]

    def peek(self) -> Any:
        if not self._heap:
            raise IndexError("peek at an empty PriorityQueue")
        return self._heap[0][2]

    def drain(self) -> list[Any]:
        """Pop every item, in order."""
        return [self.pop() for _ in range(len(self._heap))]
