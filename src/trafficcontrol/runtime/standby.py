"""A hot standby: follow the journal another instance writes, and take over its lease.

Design note. A standby folds the journal into the same ``State`` the orchestrator it
will become reads, so a takeover starts from a state already current: it folds what
the old leader appended before the takeover (the lease's row lock orders every append
either before the new epoch or refuses it, ``adapters.stores.pg_leases``), then the
orchestrator starts as after a crash — adopting the supervised agents that still run,
journaling the others interrupted — and dispatches.

Wake-ups: the journal's LISTEN/NOTIFY (``ports.AppendNotifier``: every append, every
lease release) folds at once; a poll every ``poll_s`` is the fallback and the pace of
``acquire`` tries, which is also how a dead leader is noticed (the store sees its
session gone and grants the lease at once; a stopped or cut-off one, at expiry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from trafficcontrol.domain.state import State, apply
from trafficcontrol.errors import StoreError
from trafficcontrol.ports import AppendNotifier, Clock, Journal, LeaseGrant, Leases
from trafficcontrol.runtime.leadership import heartbeat

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Takeover:
    grant: LeaseGrant
    asked_at: float
    """Lease-clock time the winning ``acquire`` was sent (``Leadership``'s deadline)."""


class Standby:
    def __init__(
        self,
        *,
        journal: Journal,
        leases: Leases,
        clock: Clock,
        state: State,
        shard: str,
        holder: str,
        ttl_s: float,
        poll_s: float,
        version: str = "",
        lease_clock: Callable[[], float] | None = None,
    ) -> None:
        self._journal = journal
        self._monotonic = lease_clock or clock.monotonic
        self._leases = leases
        self._clock = clock
        self.state = state
        self.shard = shard
        self.holder = holder
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self._version = version
        self._wake = asyncio.Event()
        self._closing: asyncio.Task[None] | None = None
        self._stopping = False
        self.leader: str | None = None
        """Who holds the lease, as last seen."""
        self.leader_epoch = 0
        self.head = 0
        """The journal's last seq, as last seen."""
        self.caught_up_at: float | None = None
        """Epoch seconds the folded state last equalled the journal's head."""
        self.waiting = False
        """The lease was held by another at least once: this instance stands by."""
        self.on_waiting: Callable[[], None] = lambda: None
        """Told once, when the lease is first found held by another."""

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    @property
    def lag_events(self) -> int:
        return max(0, self.head - self.state.seq)

    async def run(self) -> Takeover | None:
        """Follow until the lease is ours (the takeover) or ``stop()`` (None)."""
        loop = asyncio.get_running_loop()
        stop_listening: Callable[[], None] | None = None
        if isinstance(self._journal, AppendNotifier):

            def wake() -> None:  # from the listener's thread
                loop.call_soon_threadsafe(self._wake.set)

            stop_listening = self._journal.on_append(wake)
        try:
            while not self._stopping:
                self._wake.clear()  # before reading: a wake-up during the read is kept
                await self._catch_up()
                asked = self._monotonic()
                grant = await self._try(self._leases.acquire, self.shard, self.holder, self.ttl_s)
                if grant is not None:
                    await self._catch_up()  # what the old leader wrote before the new epoch
                    log.warning("lease_taken shard=%s epoch=%d", self.shard, grant.epoch)
                    return Takeover(grant, asked)
                await self._look()
                if not self.waiting:
                    self.waiting = True
                    self.on_waiting()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
            return None
        finally:
            if stop_listening is not None:
                # Not awaited: the listener notices within its poll (half a second), and
                # a takeover must not wait for that.
                self._closing = asyncio.create_task(asyncio.to_thread(stop_listening))

    async def _catch_up(self) -> None:
        def read() -> int:
            head = self._journal.last_seq()
            for _seq, event in self._journal.read(after=self.state.seq):
                apply(self.state, event)
            return head

        head = await self._try(read)
        if head is not None:
            self.head = max(head, self.state.seq)
            self.caught_up_at = self._clock.now()

    async def _look(self) -> None:
        """Who leads, and a heartbeat of ours (``tc cluster``)."""
        leases = await self._try(self._leases.leases)
        for info in leases or []:
            if info.shard == self.shard:
                self.leader = info.holder if info.live else None
                self.leader_epoch = info.epoch
        details = {"shard": self.shard, "lag_events": self.lag_events, "leader": self.leader}
        beat = heartbeat(self.holder, "standby", self._version, self.state.seq, details)
        await self._try(self._leases.beat, beat)

    async def _try(self, fn: Callable[..., T], *args: object) -> T | None:
        """A blocking store call in a thread; an unavailable store is waited out."""
        try:
            return await asyncio.to_thread(fn, *args)
        except StoreError as exc:
            if not exc.retryable:
                raise
            log.warning("standby_store_unavailable error=%r", exc.message)
            return None
