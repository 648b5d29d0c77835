"""Binary min-heap operations on a plain list (entries are compared with `<`)."""

from typing import Any


def push(heap: list[Any], entry: Any) -> None:
    """Add `entry`, keeping the heap property."""
    heap.append(entry)
    _sift_up(heap, len(heap) - 1)


def pop(heap: list[Any]) -> Any:
    """Remove and return the smallest entry."""
    if not heap:
        raise IndexError("pop from an empty heap")
    last = heap.pop()
    if not heap:
        return last
    smallest, heap[0] = heap[0], last
    _sift_down(heap, 0)
    return smallest


def heapify(items: list[Any]) -> list[Any]:
    """A new heap holding `items`."""
    heap: list[Any] = []
    for item in items:
        push(heap, item)
    return heap


def _sift_up(heap: list[Any], index: int) -> None:
    while index > 0:
        parent = (index - 1) // 2
        if not heap[index] < heap[parent]:
            return
        heap[index], heap[parent] = heap[parent], heap[index]
        index = parent


def _sift_down(heap: list[Any], index: int) -> None:
    size = len(heap)
    while True:
        smallest = index
        left, right = 2 * index + 1, 2 * index + 2
        if left < size and heap[left] < heap[smallest]:
            smallest = left
        if right < size - 1 and heap[right] < heap[smallest]:
            smallest = right
        if smallest == index:
            return
        heap[index], heap[smallest] = heap[smallest], heap[index]
        index = smallest
