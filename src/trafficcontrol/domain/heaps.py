"""Reading a binary heap in order without popping it.

``decide`` is pure, so it cannot pop the ready heap; walking the heap's implicit tree
with a small frontier heap yields entries in order at O(log k) each for the k entries
read, instead of sorting all n.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T", bound=tuple[Any, ...])


def iter_sorted(heap: list[T]) -> Iterator[T]:
    if not heap:
        return
    frontier: list[tuple[T, int]] = [(heap[0], 0)]
    size = len(heap)
    while frontier:
        item, index = heapq.heappop(frontier)
        yield item
        left = 2 * index + 1
        if left < size:
            heapq.heappush(frontier, (heap[left], left))
            if left + 1 < size:
                heapq.heappush(frontier, (heap[left + 1], left + 1))
