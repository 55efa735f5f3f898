"""The simulator with several instances: leases, fencing, pauses and skewed clocks.

Design note. ``ClusterSimulator`` is the ``Simulator`` whose one orchestrator at a time
is whichever of ``instances`` holds the lease, on a ``LeaseTable`` whose clock is the
virtual time (the store's clock) — the in-memory table that passes the same lease
conformance suite as PostgreSQL's. Every instance has a monotonic clock of its own
running at a seeded rate in ``[1 - clock_skew, 1 + clock_skew]`` of true time; it
renews every third of the TTL *by its own clock* and trusts its lease until
``asked + ttl * TRUST`` by that clock (``runtime.leadership``'s rule). Each turn the
leader first checks that trust (a lost one: it steps down, its memory dropped).

Faults on top of the single-instance ones: between two turns the leader may *pause*
(SIGSTOP: its clock runs on, it finds its deadline passed when it resumes) or
*suspend* (a machine asleep: its clock stands still, so it resumes believing its
lease, decides from its stale memory and tries to journal that — which the fenced
journal must refuse once a standby has taken over or the lease has expired). A
standby takes over once the lease is free by the store's clock (``acquire``), at its
next poll, and starts as after a crash (``Simulator._recover``: snapshot + journal,
adopting what the supervisors still run). A crash ends the holder's session: the
lease is taken at once.

Invariants beyond the simulator's: one grant per (shard, epoch), epochs rising; every
accepted append carries the current, unexpired lease's epoch (epochs never decrease
along the journal); no instance acts (starts or stops an agent) unless its lease is
live at the store at that instant — unless its clock stood still (a suspend on a
clock that does not count it: ``runtime.leadership`` uses ``CLOCK_BOOTTIME``, which
does), when only fencing and recovery can keep the work exactly once, and do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import AnyEvent, AttemptDispatched
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.domain.state import State
from trafficcontrol.ports import LeaseGrant
from trafficcontrol.runtime.leadership import RENEW_EVERY, TRUST
from trafficcontrol.runtime.sim_faults import Faults, SimOptions
from trafficcontrol.runtime.sim_report import SimReport
from trafficcontrol.runtime.simulator import Simulator, _Crash
from trafficcontrol.testing.memory_leases import LeaseTable, MemoryLeases

SHARD = "main"
_EPSILON = 1e-6
"""Seconds: a renewal due this close is due (float time must not stall the loop)."""


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    instances: int = 3
    lease_ttl_s: float = 6.0
    poll_s: float = 0.25
    clock_skew: float = 0.1
    """Each instance's monotonic clock runs at a rate within 1 ± this of true time."""
    pause: float = 0.02
    """Probability, per leader turn, that the leader is SIGSTOPped."""
    suspend: float = 0.01
    """Probability, per leader turn, that the leader's machine sleeps (its clock stops)."""
    pause_ttls: tuple[float, float] = (0.2, 3.0)
    """How long a pause or suspend lasts, in TTLs (uniform)."""
    max_pauses: int = 30


@dataclass
class _Instance:
    name: str
    rate: float
    leases: MemoryLeases
    base_true: float = 0.0
    base_local: float = 0.0
    grant: LeaseGrant | None = None
    trusted_until: float = 0.0
    """Local clock time the lease stops being trusted."""
    renewed_at: float = 0.0
    """Local clock time of the last renewal sent."""
    memory: State | None = None
    resume_at: float | None = None
    """True time a paused or suspended instance runs again."""
    frozen: bool = False
    """Its clock stood still (a suspend) since it took the lease: its trust is wrong."""
    inbox: list[AnyEvent] = field(default_factory=list)
    """What had reached the process but was not folded when it paused."""

    def local(self, now: float) -> float:
        return self.base_local + self.rate * (now - self.base_true)


@dataclass
class ClusterCounts:
    takeovers: int = 0
    pauses: int = 0
    suspends: int = 0
    stepped_down: int = 0
    """Leaders that found their lease untrusted and stepped down without writing."""
    refused: int = 0
    """Appends the fenced journal refused."""
    acted_on_a_wrong_clock: int = 0
    """Agents started by a leader whose clock stood still, after its lease expired at the
    store: not preventable locally; the journal (fenced) and the next leader's recovery
    (adopting or ending those attempts) keep the work exactly once."""
    epochs: list[int] = field(default_factory=list)
    """The epoch of each journaled event, in order."""


class ClusterSimulator(Simulator):
    def __init__(
        self,
        request: SubmitRequest,
        config: SchedulerConfig,
        *,
        seed: int,
        faults: Faults | None = None,
        options: SimOptions | None = None,
        cluster: ClusterOptions | None = None,
    ) -> None:
        super().__init__(request, config, seed=seed, faults=faults, options=options)
        self.cluster = cluster or ClusterOptions()
        self.table = LeaseTable(store_now=lambda: self.now)
        crng = random.Random(seed * 7919 + 1)
        skew = self.cluster.clock_skew
        self.instances = [
            _Instance(f"i{n}", crng.uniform(1 - skew, 1 + skew), MemoryLeases(self.table))
            for n in range(self.cluster.instances)
        ]
        self._crng = crng
        self.leader: _Instance | None = None
        self.counts = ClusterCounts()

    # -- the loop's hooks ---------------------------------------------------------------
    def _turn(self) -> bool:
        leader = self._leader()
        self._resume_due(but=leader)
        self._keep_lease(leader)
        acted = super()._turn()
        options = self.cluster
        if self.counts.pauses + self.counts.suspends < options.max_pauses:
            roll = self._crng.random()
            if roll < options.pause:
                self._pause(leader, frozen=False)
            elif roll < options.pause + options.suspend:
                self._pause(leader, frozen=True)
        return acted

    def _advance(self) -> bool:
        """Also wake for the leader's next renewal (the runtime's lease timer)."""
        if self.leader is not None:
            leader = self.leader
            due_local = leader.renewed_at + self.cluster.lease_ttl_s * RENEW_EVERY
            due = self.now + max(_EPSILON, (due_local - leader.local(self.now)) / leader.rate)
            if self._next_wakeup is None or due < self._next_wakeup:
                self._next_wakeup = due
        return super()._advance()

    def _commit(self, events: list[AnyEvent]) -> None:
        """The fenced journal: the store checks the writer's lease when the append's
        statement runs (before the commit's latency); then, as ``Orchestrator._act``
        does, the leader acts only if it still trusts its lease once the commit returns
        (a slow commit may outlive it)."""
        leader = self.leader
        if leader is not None and events:
            fence = None if leader.grant is None else leader.grant.fence
            if not self.table.admits(fence):
                self.counts.refused += 1
                self._step_down(leader, "its append was refused (fenced)")
        super()._commit(events)
        if leader is not None and events and leader.local(self.now) >= leader.trusted_until:
            self.counts.stepped_down += 1
            self._step_down(leader, "the commit outlived the lease's trust: not acting")

    def _append(self, events: list[AnyEvent]) -> None:
        leader = self.leader
        fence = None if leader is None or leader.grant is None else leader.grant.fence
        epoch = 0 if fence is None else fence.epoch
        if self.counts.epochs and epoch < self.counts.epochs[-1]:
            self.violations.append(
                f"an append at epoch {epoch} after epoch {self.counts.epochs[-1]}"
            )
        self.counts.epochs.extend([epoch] * len(events))
        super()._append(events)

    def _start_agent(self, event: AttemptDispatched) -> None:
        self._check_acting("starts the agent of " + event.attempt_id)
        super()._start_agent(event)

    def _crash(self, reason: str, kind: str) -> None:
        leader = self.leader
        if leader is not None:  # the process is gone: so is its session
            self.table.end_session(leader.leases.sid)
            leader.leases = MemoryLeases(self.table)
            leader.grant, leader.memory = None, None
            self.leader = None
        super()._crash(reason, kind)

    def _recover(self) -> None:
        """A paused holder resumes, or a standby takes the lease (once the store says it
        is free, at its next poll) and starts."""
        while True:
            row = self.table.rows.get(SHARD)
            holder = next((i for i in self.instances if row and i.name == row.holder), None)
            self._resume_due(but=holder)
            if row is not None and holder is not None and holder.resume_at is not None:
                takeover_at = max(self.now, row.expires_at + self.cluster.poll_s)
                if holder.resume_at <= takeover_at:
                    self.now = max(self.now, holder.resume_at)
                    if self._resume(holder):
                        return
                    continue
            standby = self._standby()
            asked = standby.local(self.now)
            grant = standby.leases.acquire(SHARD, standby.name, self.cluster.lease_ttl_s)
            if grant is None:  # live: the standby polls until it expires
                assert row is not None
                self.now = max(self.now + self.cluster.poll_s, row.expires_at + self.cluster.poll_s)
                continue
            standby.grant = grant
            standby.frozen = False
            standby.renewed_at = asked
            standby.trusted_until = asked + grant.ttl_s * TRUST
            self.leader = standby
            self.counts.takeovers += 1
            super()._recover()
            standby.memory = self.state
            return

    # -- leases -------------------------------------------------------------------------
    def _keep_lease(self, leader: _Instance) -> None:
        local = leader.local(self.now)
        if local >= leader.trusted_until:
            self.counts.stepped_down += 1
            self._step_down(leader, "its lease is no longer trusted")
        if local - leader.renewed_at >= self.cluster.lease_ttl_s * RENEW_EVERY - _EPSILON:
            assert leader.grant is not None
            renewed = leader.leases.renew(leader.grant)
            if renewed is None:
                self.counts.stepped_down += 1
                self._step_down(leader, "its renewal was refused")
            leader.grant = renewed
            leader.renewed_at = local
            leader.trusted_until = local + self.cluster.lease_ttl_s * TRUST

    def _check_acting(self, what: str) -> None:
        leader = self._leader()
        fence = None if leader.grant is None else leader.grant.fence
        if self.table.admits(fence):
            return
        if leader.frozen:  # its clock stood still: nothing local can tell; fencing must
            self.counts.acted_on_a_wrong_clock += 1
            return
        self.violations.append(
            f"t={self.now:.3f}: {leader.name} {what} without a live lease at the store"
        )

    def _pause(self, leader: _Instance, *, frozen: bool) -> None:
        low, high = self.cluster.pause_ttls
        duration = self._crng.uniform(low, high) * self.cluster.lease_ttl_s
        if frozen:
            self.counts.suspends += 1
        else:
            self.counts.pauses += 1
        leader.memory = self.state
        leader.resume_at = self.now + duration
        leader.frozen = frozen
        if frozen:  # its clock stands still while the machine sleeps
            leader.base_local = leader.local(self.now)
            leader.base_true = leader.resume_at
        leader.inbox, self._inbox = self._inbox, []
        self.leader = None
        self.state = None
        raise _Crash("paused")

    def _resume(self, instance: _Instance) -> bool:
        """The paused instance runs again: True when it leads on (its next write is
        fenced like any); False when it stepped down at once."""
        instance.resume_at = None
        if instance.local(self.now) >= instance.trusted_until or instance.memory is None:
            self.counts.stepped_down += 1
            instance.memory, instance.grant = None, None
            return False
        self.leader = instance
        self.state = instance.memory
        self._inbox, instance.inbox = instance.inbox, []
        return True

    def _resume_due(self, *, but: _Instance | None = None) -> None:
        """Paused instances whose time has come, other than ``but``, run again and find
        their lease gone: one whose clock says its lease is over steps down at once;
        one whose clock stood still (a suspend) still trusts it and tries to journal
        what it decided — the fenced journal must refuse that. Either way it comes back
        as a standby (it follows the journal: nothing of its memory is kept)."""
        for instance in self.instances:
            if instance is but or instance.resume_at is None or instance.resume_at > self.now:
                continue
            instance.resume_at = None
            if instance.memory is not None and instance.grant is not None:
                if instance.local(self.now) >= instance.trusted_until:
                    self.counts.stepped_down += 1
                elif self.table.admits(instance.grant.fence):
                    self.violations.append(
                        f"t={self.now:.3f}: {instance.name} resumed and its write at epoch"
                        f" {instance.grant.epoch} was accepted while {self._instance()} leads"
                    )
                else:
                    self.counts.refused += 1
            instance.memory, instance.grant, instance.inbox = None, None, []

    def _standby(self) -> _Instance:
        for instance in self.instances:
            if instance.resume_at is None and instance is not self.leader:
                return instance
        # Every other instance is paused: the first to resume takes over.
        soonest = min(self.instances, key=lambda i: i.resume_at or 0.0)
        self.now = max(self.now, soonest.resume_at or self.now)
        self._resume_due()
        return soonest

    def _step_down(self, leader: _Instance, why: str) -> None:
        """Its memory goes, with what had reached it unfolded: the next leader reads the
        agents' files instead."""
        leader.memory, leader.grant = None, None
        self.leader = None
        self.state = None
        self._inbox = []
        self._next_wakeup = None
        self.crashes.append(f"t={self.now:.3f}s: {leader.name} stepped down: {why}")
        raise _Crash(why)

    def _leader(self) -> _Instance:
        assert self.leader is not None, "no leader"
        return self.leader

    def _instance(self) -> str:
        return self.leader.name if self.leader is not None else "none"


def simulate_cluster(
    request: SubmitRequest,
    config: SchedulerConfig,
    *,
    seed: int,
    faults: Faults | None = None,
    options: SimOptions | None = None,
    cluster: ClusterOptions | None = None,
) -> tuple[SimReport, ClusterSimulator]:
    simulator = ClusterSimulator(
        request, config, seed=seed, faults=faults, options=options, cluster=cluster
    )
    return simulator.run(), simulator
