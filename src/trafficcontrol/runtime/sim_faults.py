"""What the simulator injects (``Faults``) and how its virtual world runs (``SimOptions``).

Every rate is a probability per occasion (an attempt, a commit); the run's single
``random.Random(seed)`` decides, and a rate of zero draws nothing, so turning one
fault kind off does not disturb the draws of a run without faults.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from trafficcontrol.domain.capacity.tracker import CapacityConfig
from trafficcontrol.domain.resilience import ResilienceConfig

AGENT_CRASH_ERROR = "simulated agent crash: the agent process died (signal 9)"
CrashPoint = Literal["before the commit", "after the commit", "after acting"]
CRASH_POINTS: tuple[CrashPoint, ...] = ("before the commit", "after the commit", "after acting")
"""Where in a turn an orchestrator crash falls: before the batch is durable (it is
lost), after it (its commands are never acted on), or after acting on it."""


class Outage(msgspec.Struct, frozen=True, kw_only=True):
    """The provider is down for a model family (None: all) from ``start_s`` to ``end_s``:
    every attempt that starts meanwhile fails at once with an overloaded (529) error."""

    start_s: float
    end_s: float
    family: str | None = None

    def covers(self, at: float, family: str) -> bool:
        return self.start_s <= at < self.end_s and self.family in (None, family)


class ScheduledCrash(msgspec.Struct, frozen=True, kw_only=True):
    """The orchestrator crashes at the first commit at or after ``at_s`` (virtual
    seconds), at ``point``: a crash placed exactly, for tests of what survives it."""

    at_s: float
    point: CrashPoint = "after the commit"


class Faults(msgspec.Struct, frozen=True, kw_only=True):
    """Fault rates of a simulation; all zero (no faults) by default."""

    agent_crash: float = 0.0
    """Probability that an attempt's agent dies partway through (the attempt fails)."""
    agent_hang: float = 0.0
    """Probability that an agent never ends by itself; only its task's timeout ends it."""
    orchestrator_crash: float = 0.0
    """Probability, per committed batch, that the orchestrator crashes at that boundary
    (before the commit, after it, or after acting on it) and recovers."""
    store_failure: float = 0.0
    """Probability that appending a batch fails: the batch is lost and the orchestrator
    crashes and recovers."""
    slow_disk: float = 0.0
    """Probability that a commit is slow, so agent events pile up into bigger batches."""
    slow_disk_s: float = 3.0
    """A slow commit takes up to this many extra seconds (uniform)."""
    max_crashes: int = 20
    """No orchestrator crash or store failure after this many, so every run ends."""
    transient: float = 0.0
    """Probability that an attempt fails at once with a transient provider error (529)."""
    outages: tuple[Outage, ...] = ()
    """Provider outages (attempts starting in one fail with 529)."""
    supervisor_lost: float = 0.0
    """Probability, per agent running at an orchestrator crash, that its supervisor died
    with the orchestrator: the agent is gone and leaves no exit record, so the recovery
    journals its attempt interrupted. Otherwise the agent runs on and is adopted."""
    crashes: tuple[ScheduledCrash, ...] = ()
    """Orchestrator crashes at fixed times, besides the random ones (drawing nothing)."""

    @classmethod
    def all_on(cls) -> Faults:
        """Every fault kind at the rates the CI property runs with."""
        return cls(
            agent_crash=0.05,
            agent_hang=0.03,
            orchestrator_crash=0.03,
            store_failure=0.01,
            slow_disk=0.05,
            supervisor_lost=0.2,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.crashes) or any(
            rate > 0
            for rate in (
                self.agent_crash,
                self.agent_hang,
                self.orchestrator_crash,
                self.store_failure,
                self.slow_disk,
                self.supervisor_lost,
            )
        )


class SimOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How the simulated world runs, apart from its faults."""

    mean_duration_s: float = 600.0
    """Mean attempt duration of tasks without sim settings on another backend (claude,
    command); sim-backend tasks without settings use the sim adapter's defaults."""
    hang_timeout_factor: float = 10.0
    """When hangs are on, a task with no timeout gets this many times its mean duration."""
    snapshot_every_s: float = 10.0
    """Virtual seconds between snapshots of the state."""
    keep_snapshots: int = 3
    restart_s: float = 1.0
    """Virtual seconds from a crash to the recovered orchestrator."""
    stop_s: float = 1.0
    """Virtual seconds from a journaled stop to the agent's end (SIGTERM, grace, kill)."""
    commit_s: float = 0.0
    """Latency of an ordinary commit."""
    max_events: int = 200_000
    """A run with more journal events than this is reported as not settling."""
    check_recovery: bool = True
    """After each recovery, compare snapshot + tail with a full replay of the journal."""
    capacity: CapacityConfig | None = None
    """The plan to meter usage against (journaled at the start, as ``tc run`` does)."""
    resilience: ResilienceConfig | None = None
    """Retry and breaker policy (journaled at the start, as ``tc run`` does)."""
    first_turn_s: float | None = None
    """Agents report their first model turn this long after they start (None: never;
    a breaker's probe succeeds on it)."""
    until_s: float | None = None
    """Stop the run at this virtual time even if work is left (the report says unsettled)."""
