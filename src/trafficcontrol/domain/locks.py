"""Lock table for task resources.

Design note. A task names every resource it needs up front; ``decide`` dispatches it
only when all of them are free and ``apply`` takes them all in one event, so no
attempt ever holds one lock while waiting for another (no hold-and-wait): lock
deadlock cannot occur. Locks are released by the event that ends the attempt,
whatever its outcome. Rejected alternative: per-resource queues with incremental
acquisition — they need deadlock detection and gain nothing for whole-task locks.

Invariant: a name is held either by exactly one exclusive holder or by any number
of shared holders, never both.
"""

from __future__ import annotations

from collections.abc import Iterable

from trafficcontrol.domain.model import AttemptId, lock_name


class LockTable:
    __slots__ = ("exclusive", "shared")

    def __init__(self) -> None:
        self.exclusive: dict[str, AttemptId] = {}
        self.shared: dict[str, set[AttemptId]] = {}

    def can_acquire(self, resources: Iterable[str]) -> bool:
        for resource in resources:
            name, shared = lock_name(resource)
            if name in self.exclusive:
                return False
            if not shared and self.shared.get(name):
                return False
        return True

    def acquire(self, holder: AttemptId, resources: Iterable[str]) -> None:
        for resource in resources:
            name, shared = lock_name(resource)
            if shared:
                self.shared.setdefault(name, set()).add(holder)
            else:
                self.exclusive[name] = holder

    def release(self, holder: AttemptId, resources: Iterable[str]) -> None:
        for resource in resources:
            name, shared = lock_name(resource)
            if shared:
                holders = self.shared.get(name)
                if holders is not None:
                    holders.discard(holder)
                    if not holders:
                        del self.shared[name]
            elif self.exclusive.get(name) == holder:
                del self.exclusive[name]

    def holders(self) -> dict[str, list[AttemptId]]:
        """Every held name with its holders (for status and invariant checks)."""
        held: dict[str, list[AttemptId]] = {n: [h] for n, h in self.exclusive.items()}
        for name, holders in self.shared.items():
            held.setdefault(name, []).extend(sorted(holders))
        return held


class TentativeLocks:
    """The lock table plus the locks that one ``decide`` pass has already promised."""

    __slots__ = ("_exclusive", "_shared", "_table")

    def __init__(self, table: LockTable) -> None:
        self._table = table
        self._exclusive: set[str] = set()
        self._shared: set[str] = set()

    def can_take(self, resources: tuple[str, ...]) -> bool:
        if not resources:
            return True
        if not self._table.can_acquire(resources):
            return False
        for resource in resources:
            name, shared = lock_name(resource)
            if name in self._exclusive or (not shared and name in self._shared):
                return False
        return True

    def try_take(self, resources: tuple[str, ...]) -> bool:
        if not self.can_take(resources):
            return False
        for resource in resources:
            name, shared = lock_name(resource)
            (self._shared if shared else self._exclusive).add(name)
        return True
