"""Circuit breakers per (backend, model family) and per dependency. Pure.

Design note. A breaker counts outcomes in a sliding window of ``window_s``:

    closed --(failures_to_open failures in a row, or a failure rate >= failure_rate
              over at least min_calls calls, within window_s)--> open
    open --(probe_interval_s passed)--> half_open
    half_open --(the one probe succeeds)--> closed
    half_open --(the probe fails)--> open (for another interval)

Only failures that say something about the dependency count (``transient`` and
``infrastructure`` classes); a task failure or a limit is the work's or the plan's, not
the backend's. While open, ``decide`` sends no attempt to the key (it routes eligible
work a tier down instead); half-open admits exactly one probe attempt. The probe
succeeds as soon as the provider answers at all (a turn's usage is reported) or the
attempt ends without a counting failure.

Transitions are decided in ``decide`` (``due``) and journaled as ``BreakerChanged``
events whose fold (``apply_change``) moves the state, so each change is visible in the
journal, in ``tc status`` and ``tc health`` with its reason. Incidents (open -> closed)
keep their duration for MTTR.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum

import msgspec


class BreakerPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    failures_to_open: int = 6
    """Failures in a row that open it (at 30% random failures, 6 in a row is ~1 in 1,400)."""
    window_s: float = 120.0
    min_calls: int = 20
    failure_rate: float = 0.6
    """Scattered failures (a few percent, even 30%) are retried, not a reason to stop."""
    probe_interval_s: float = 15.0
    """How long a breaker stays open before it lets one probe through."""

    def __post_init__(self) -> None:
        if self.failures_to_open < 1 or self.min_calls < 1:
            raise ValueError("breaker failures_to_open and min_calls must be >= 1")
        if not 0.0 < self.failure_rate <= 1.0:
            raise ValueError("breaker failure_rate must be in (0, 1]")
        if self.window_s <= 0 or self.probe_interval_s <= 0:
            raise ValueError("breaker window_s and probe_interval_s must be > 0")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Incident(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    opened_at: float
    closed_at: float | None
    reason: str


class BreakerRecord(msgspec.Struct, kw_only=True):
    """One breaker's state (snapshotted as is)."""

    key: str
    state: BreakerState = BreakerState.CLOSED
    changed_at: float = 0.0
    reason: str = ""
    recent: list[tuple[float, bool]] = msgspec.field(default_factory=list)
    """(time, failed) of the outcomes within the window, oldest first."""
    probe: str | None = None
    """The attempt admitted as the half-open probe."""
    probe_result: bool | None = None
    """True: the probe showed the dependency works; False: it failed; None: not yet."""
    opened_at: float | None = None
    """Start of the current incident (the first open since closed)."""
    probes: int = 0
    """Probe attempts admitted so far (all incidents)."""


def key_for(backend: str, family: str) -> str:
    return f"{backend}/{family}"


def observe(record: BreakerRecord, at: float, failed: bool, policy: BreakerPolicy) -> None:
    """Fold one outcome of a call through the breaker's key."""
    recent = deque(record.recent)
    recent.append((at, failed))
    # Old outcomes leave the window, but the last few stay for the failure streak: with
    # backoff, the failures of an outage can be minutes apart.
    while len(recent) > policy.failures_to_open and recent[0][0] < at - policy.window_s:
        recent.popleft()
    record.recent = list(recent)


def due(
    record: BreakerRecord, now: float, policy: BreakerPolicy
) -> tuple[BreakerState, str] | None:
    """The transition the breaker should make at ``now`` (journal it), or None."""
    if record.state is BreakerState.CLOSED:
        window = [f for t, f in record.recent if t >= now - policy.window_s]
        streak = 0
        for _at, failed in reversed(record.recent):
            if not failed:
                break
            streak += 1
        if streak >= policy.failures_to_open:
            return BreakerState.OPEN, f"{streak} failures in a row"
        failures = sum(window)
        if len(window) >= policy.min_calls and failures / len(window) >= policy.failure_rate:
            return BreakerState.OPEN, (
                f"{failures} of {len(window)} calls failed in {policy.window_s:g}s"
            )
        return None
    if record.state is BreakerState.OPEN:
        if now >= record.changed_at + policy.probe_interval_s:
            return BreakerState.HALF_OPEN, "probe interval passed: one probe"
        return None
    if record.probe_result is True:
        return BreakerState.CLOSED, "probe succeeded"
    if record.probe_result is False:
        return BreakerState.OPEN, "probe failed"
    return None


def apply_change(
    record: BreakerRecord, state: BreakerState, reason: str, at: float
) -> Incident | None:
    """Fold a journaled transition; returns the incident it closes, if any."""
    closed: Incident | None = None
    if state is BreakerState.OPEN and record.opened_at is None:
        record.opened_at = at
    if state is BreakerState.CLOSED and record.opened_at is not None:
        closed = Incident(key=record.key, opened_at=record.opened_at, closed_at=at, reason=reason)
        record.opened_at = None
        record.recent = []
    record.state = state
    record.changed_at = at
    record.reason = reason
    record.probe = None
    record.probe_result = None
    return closed


def next_change_at(record: BreakerRecord, policy: BreakerPolicy) -> float | None:
    """When an open breaker will let a probe through (for ``decide``'s wake-up)."""
    if record.state is BreakerState.OPEN:
        return record.changed_at + policy.probe_interval_s
    return None
