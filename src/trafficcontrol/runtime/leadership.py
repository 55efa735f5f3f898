"""Leading by a lease: renewing it, and knowing when it can no longer be trusted.

Design note. The store decides expiry on its own clock (``ports.Leases``); this side
only has to stop acting *before* the store could give the lease to someone else, on
a clock it trusts. A renewal sent at monotonic time ``t`` and granted means the store
extended the lease to at least ``t + ttl`` of real time (the store's clock read the
time after we sent, whatever the wall clocks say), so the lease is trusted until
``t + ttl * TRUST`` on our monotonic clock — a clock that keeps counting while the
process is stopped (SIGSTOP) and, being ``CLOCK_BOOTTIME`` (``boottime``), while the
machine is suspended, which ``time.monotonic`` does not count — so a leader that wakes
up late finds its deadline passed before it does anything, never acting on an expired
lease. ``TRUST``
leaves a fifth of the TTL for the monotonic clock running slow and the first action
after the check. Renewals go every ``ttl / 3``: two can fail before the lease is
distrusted. The orchestrator asks ``valid()`` at every turn and steps down when it is
false; the journal refuses its writes anyway once another instance holds the lease
(``FencedError``), which covers whatever runs between the check and the write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from trafficcontrol.errors import StoreError
from trafficcontrol.ports import Clock, Fence, InstanceBeat, LeaseGrant, Leases

log = logging.getLogger(__name__)

TRUST = 0.8
"""The part of the TTL after a granted renewal that the lease is trusted for."""
RENEW_EVERY = 1 / 3
"""Renewals per TTL: every third of it."""


def boottime() -> float:
    """Seconds on a monotonic clock that also counts system suspend (Linux
    ``CLOCK_BOOTTIME``; ``time.monotonic`` elsewhere)."""
    if _BOOTTIME is None:
        return time.monotonic()
    return time.clock_gettime(_BOOTTIME)


_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def heartbeat(
    instance: str, role: str, version: str, seq: int, details: dict[str, Any]
) -> InstanceBeat:
    """What this process says of itself in ``tc cluster`` (leader or standby)."""
    return InstanceBeat(
        instance=instance,
        host=socket.gethostname(),
        pid=os.getpid(),
        role=role,
        version=version,
        seq=seq,
        details=details,
    )


class Leadership:
    def __init__(
        self,
        leases: Leases,
        grant: LeaseGrant,
        clock: Clock,
        *,
        asked_at: float,
        version: str = "",
        seq: Callable[[], int] = lambda: 0,
        lease_clock: Callable[[], float] | None = None,
    ) -> None:
        """``asked_at``: the ``lease_clock`` time the ``acquire`` that made ``grant`` was
        sent. ``lease_clock``: a monotonic clock that counts while the machine sleeps
        (``boottime``; default: ``clock.monotonic``)."""
        self._leases = leases
        self.grant = grant
        self._clock = clock
        self._monotonic = lease_clock or clock.monotonic
        self._deadline = asked_at + grant.ttl_s * TRUST
        self.lost: str | None = None
        """Why the lease is lost (None: held)."""
        self.on_lost: Callable[[], None] = lambda: None
        """Told once, when the lease is lost (the loop wakes up to step down)."""
        self._version = version
        self._seq = seq
        self.renewals = 0
        self.renew_errors = 0

    @property
    def fence(self) -> Fence:
        return self.grant.fence

    @property
    def epoch(self) -> int:
        return self.grant.epoch

    def valid(self) -> bool:
        """The lease may be acted on now. Once false, false for good."""
        if self.lost is None and self._monotonic() >= self._deadline:
            self._lose("not renewed in time: the lease can no longer be trusted")
        return self.lost is None

    def trusted_for(self) -> float:
        """Seconds until the lease stops being trusted (0 once lost)."""
        if not self.valid():
            return 0.0
        return max(0.0, self._deadline - self._monotonic())

    def fenced(self, error: StoreError) -> None:
        """The store refused a write of ours: another leads, or the lease expired."""
        self._lose(error.message)

    async def keep(self) -> None:
        """Renew every third of the TTL until the lease is lost or this task is
        cancelled; a heartbeat rides along with each renewal."""
        interval = self.grant.ttl_s * RENEW_EVERY
        await self._beat()  # the cluster learns of the new leader at once
        while self.valid():
            await self._clock.sleep(min(interval, self.trusted_for()))
            if not self.valid():
                return
            asked = self._monotonic()
            try:
                renewed = await asyncio.to_thread(self._leases.renew, self.grant)
            except StoreError as exc:
                self.renew_errors += 1
                log.warning("lease_renew_failed epoch=%d error=%r", self.epoch, exc.message)
                if not exc.retryable:
                    self._lose(exc.message)
                continue
            if renewed is None:
                self._lose("the lease was taken by another instance, or expired")
                return
            self.grant = renewed
            self._deadline = asked + renewed.ttl_s * TRUST
            self.renewals += 1
            await self._beat()

    async def release(self) -> None:
        """Give the lease up (a clean stop or a handoff): a standby takes over at once."""
        if self.lost is not None:
            return
        self.lost = "released"
        try:
            await asyncio.to_thread(self._leases.release, self.grant)
        except StoreError as exc:  # it expires by itself then
            log.warning("lease_release_failed epoch=%d error=%r", self.epoch, exc.message)

    async def _beat(self) -> None:
        try:
            await asyncio.to_thread(self._leases.beat, self.beat("leader"))
        except StoreError as exc:  # a heartbeat is information, never a reason to stop
            log.debug("heartbeat_failed error=%r", exc.message)

    def beat(self, role: str) -> InstanceBeat:
        details = {"shard": self.grant.shard, "epoch": self.epoch}
        return heartbeat(self.grant.holder, role, self._version, self._seq(), details)

    def _lose(self, why: str) -> None:
        if self.lost is not None:
            return
        self.lost = why
        log.error("lease_lost shard=%s epoch=%d why=%r", self.grant.shard, self.epoch, why)
        self.on_lost()
