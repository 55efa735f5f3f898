"""The loop's inbox: events from agents and timers, batched for group commit."""

from __future__ import annotations

import asyncio
import contextlib

from trafficcontrol.domain.events import AnyEvent


class Inbox:
    """Producers put events without waiting; the loop takes everything queued at once.

    While the loop is busy committing a batch, new events pile up here and go into
    the next batch together: that is the group commit.
    """

    def __init__(self) -> None:
        self._items: list[AnyEvent] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()

    def put(self, event: AnyEvent) -> None:
        self._items.append(event)
        self._wakeup.set()

    async def put_durable(self, event: AnyEvent) -> None:
        """Put and wait until the event is committed (acknowledged once durable)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.put(event)
        await waiter

    def pending(self) -> bool:
        return bool(self._items)

    def poke(self) -> None:
        """Wake the loop without an event (a signal, a request to look at)."""
        self._wakeup.set()

    async def wait(self, timeout: float | None) -> None:
        if self._items or self._wakeup.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def take(self) -> tuple[list[AnyEvent], list[asyncio.Future[None]]]:
        items, waiters = self._items, self._waiters
        self._items, self._waiters = [], []
        self._wakeup.clear()
        return items, waiters
