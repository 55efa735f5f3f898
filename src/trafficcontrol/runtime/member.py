"""One ``tc run`` among several on a shared store: standby, leader, standby again.

Design note. Each turn of the cycle builds a fresh orchestrator from the journal
(``make``: recovered from the newest snapshot and the journal's tail), follows the
journal as a standby until the lease is won, then leads until the backlog is done, the
member is stopped, or the lease is lost. A lost lease is never recovered in place:
the orchestrator that lost it holds folded events the journal refused, so it is
dropped and the member goes back to following the journal with a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from trafficcontrol.errors import StoreError
from trafficcontrol.ports import Clock, Journal, Leases
from trafficcontrol.runtime.leadership import Leadership
from trafficcontrol.runtime.orchestrator import Orchestrator
from trafficcontrol.runtime.standby import Standby

log = logging.getLogger(__name__)

SHARD = "main"
"""The one shard while instances do not shard by project."""


class Member:
    def __init__(
        self,
        *,
        make: Callable[[], Orchestrator],
        journal: Journal,
        leases: Leases,
        clock: Clock,
        ttl_s: float,
        poll_s: float,
        version: str,
        on_role: Callable[[str, str], None] = lambda role, detail: None,
        shard: str = SHARD,
        lease_clock: Callable[[], float] | None = None,
    ) -> None:
        self._lease_clock = lease_clock
        self._make = make
        self._journal = journal
        self._leases = leases
        self._clock = clock
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self.version = version
        self.shard = shard
        self._on_role = on_role
        self.role = "starting"
        self.orchestrator: Orchestrator | None = None
        self.standby: Standby | None = None
        self.takeovers = 0
        self._stopping = False
        self._prepared: Orchestrator | None = None

    def prepare(self) -> Orchestrator:
        """The first orchestrator, built now (its recovery's errors raised here, before
        anything runs); ``run`` starts with it."""
        if self._prepared is None:
            self._prepared = self.orchestrator = self._make()
        return self._prepared

    def cluster(self) -> dict[str, object]:
        """Role, epoch and lag (``/readyz``, ``tc cluster``)."""
        standby, orchestrator = self.standby, self.orchestrator
        info: dict[str, object] = {"role": self.role, "shard": self.shard}
        if standby is not None:
            info.update(
                leader=standby.leader,
                epoch=standby.leader_epoch,
                lag_events=standby.lag_events,
                caught_up_at=standby.caught_up_at,
            )
        elif orchestrator is not None and orchestrator.leadership is not None:
            info.update(epoch=orchestrator.leadership.epoch, lag_events=0)
        return info

    def stop(self) -> None:
        """Stop following, or stop leading (gracefully, as ``Orchestrator.stop``)."""
        self._stopping = True
        if self.standby is not None:
            self.standby.stop()
        if self.orchestrator is not None:
            self.orchestrator.stop()

    async def run(self, *, until_idle: bool) -> Orchestrator:
        """Until the backlog is done (``until_idle``) or ``stop()``; the last orchestrator."""
        try:
            return await self._cycle(until_idle=until_idle)
        finally:
            if self.orchestrator is not None:  # tc cluster forgets it at once
                with contextlib.suppress(StoreError):
                    await asyncio.to_thread(self._leases.forget, self.orchestrator.instance)

    async def _cycle(self, *, until_idle: bool) -> Orchestrator:
        while True:
            orchestrator, self._prepared = self._prepared or self._make(), None
            self.orchestrator = orchestrator
            standby = Standby(
                journal=self._journal,
                leases=self._leases,
                clock=self._clock,
                state=orchestrator.state,
                shard=self.shard,
                holder=orchestrator.instance,
                ttl_s=self.ttl_s,
                poll_s=self.poll_s,
                version=self.version,
                lease_clock=self._lease_clock,
            )
            self.standby = standby
            if self._stopping:
                return orchestrator
            self.role = "standby"
            standby.on_waiting = lambda s=standby: self._set_role(  # type: ignore[misc]
                "standby", f"following the journal; {s.leader or 'another instance'} leads"
            )
            takeover = await standby.run()
            self.standby = None
            if takeover is None:
                return orchestrator
            self.takeovers += 1
            orchestrator.leadership = Leadership(
                self._leases,
                takeover.grant,
                self._clock,
                asked_at=takeover.asked_at,
                version=self.version,
                seq=lambda o=orchestrator: o.state.seq,  # type: ignore[misc]
                lease_clock=self._lease_clock,
            )
            self._set_role("leader", f"epoch {takeover.grant.epoch}")
            if self._stopping:
                orchestrator.stop()
            await orchestrator.run(until_idle=until_idle)
            if orchestrator.stepped_down is None:
                return orchestrator
            self._set_role("standby", f"stepped down: {orchestrator.stepped_down}")
            if self._stopping:
                return orchestrator

    def _set_role(self, role: str, detail: str) -> None:
        self.role = role
        log.info("role=%s %s", role, detail)
        self._on_role(role, detail)
