"""The resilience part of the folded state: retry policy, breakers, errors, incidents.

Design note. Like ``capacity.tracker``: the fold methods are called by ``state.apply``
for the events that carry the facts (an attempt's end with its failure class, a
reported turn, a dispatch, a journaled ``BreakerChanged``); the queries (``blocked``,
``due``, ``next_wakeup``) never mutate and are what ``decide`` reads. The policy is
journaled (``ResilienceConfigured``) when the config changes, so replay uses the policy
that was in force.
"""

from __future__ import annotations

from collections import Counter, deque

import msgspec

from trafficcontrol.domain.breakers import (
    BreakerPolicy,
    BreakerRecord,
    BreakerState,
    Incident,
    apply_change,
    due,
    next_change_at,
    observe,
)
from trafficcontrol.domain.failures import FailureClass, FailureRule
from trafficcontrol.domain.retries import RetryPolicy

_KEEP_ERRORS = 200
_KEEP_INCIDENTS = 100
SLOW_KEY = "slow:"
"""Incidents of slow orchestrator operations are keyed ``slow:<operation>``."""
_COUNTED = (FailureClass.TRANSIENT, FailureClass.INFRASTRUCTURE)


class ResilienceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    breaker: BreakerPolicy = msgspec.field(default_factory=BreakerPolicy)
    rules: list[FailureRule] = msgspec.field(default_factory=list)
    """Failure rules tried before the built-in table (``domain.failures``)."""


class ErrorRecord(msgspec.Struct, frozen=True, kw_only=True):
    at: float
    attempt_id: str
    failure_class: FailureClass
    rule: str
    message: str
    key: str


class ResilienceSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    config: ResilienceConfig
    breakers: list[BreakerRecord]
    incidents: list[Incident]
    errors: list[ErrorRecord]
    errors_by_class: dict[str, int]
    answered: list[str] = msgspec.field(default_factory=list)


class Resilience:
    def __init__(self, config: ResilienceConfig | None = None) -> None:
        self.config = config or ResilienceConfig()
        self.breakers: dict[str, BreakerRecord] = {}
        self.incidents: deque[Incident] = deque(maxlen=_KEEP_INCIDENTS)
        self.errors: deque[ErrorRecord] = deque(maxlen=_KEEP_ERRORS)
        self.errors_by_class: Counter[str] = Counter()
        self.answered_attempts: set[str] = set()
        """Running attempts the provider has answered (counted as a success already)."""
        self._probes: dict[str, str] = {}
        """attempt id -> breaker key, for probes in flight."""

    # -- folds ------------------------------------------------------------------------
    def dispatched(self, attempt_id: str, key: str) -> None:
        record = self.breakers.get(key)
        if record is not None and record.state is BreakerState.HALF_OPEN and record.probe is None:
            record.probe = attempt_id
            record.probes += 1
            self._probes[attempt_id] = key

    def answered(self, attempt_id: str, key: str, at: float) -> None:
        """The provider answered the attempt (its first turn was reported): a success for
        the breaker now, not only when the attempt ends (failures are fast, successes
        slow: counting them at the end alone would over-count the failure rate)."""
        if attempt_id in self.answered_attempts:
            return
        self.answered_attempts.add(attempt_id)
        record = self.breakers.get(key)
        if record is not None:
            observe(record, at, False, self.config.breaker)
        probe_key = self._probes.pop(attempt_id, None)
        if probe_key is not None:
            probe = self.breakers[probe_key]
            if probe.probe == attempt_id and probe.probe_result is None:
                probe.probe_result = True

    def finished(
        self,
        attempt_id: str,
        key: str,
        at: float,
        failure_class: FailureClass | None,
        *,
        succeeded: bool,
        rule: str | None,
        message: str,
    ) -> None:
        counted = failure_class in _COUNTED
        was_answered = attempt_id in self.answered_attempts
        self.answered_attempts.discard(attempt_id)
        if failure_class is not None:
            self.errors_by_class[failure_class.value] += 1
            self.errors.append(
                ErrorRecord(
                    at=at,
                    attempt_id=attempt_id,
                    failure_class=failure_class,
                    rule=rule or "",
                    message=message[:300],
                    key=key,
                )
            )
        if not counted and not succeeded and failure_class is None:
            self._probes.pop(attempt_id, None)
            return  # stopped, interrupted: says nothing about the dependency
        record = self.breakers.get(key)
        if record is None:
            if not counted:
                return
            record = self.breakers[key] = BreakerRecord(key=key)
        if counted or not was_answered:
            observe(record, at, counted, self.config.breaker)
        probe_key = self._probes.pop(attempt_id, None)
        if probe_key == key and record.probe == attempt_id and record.probe_result is None:
            record.probe_result = not counted

    def change(self, key: str, state: BreakerState, reason: str, at: float) -> None:
        record = self.breakers.setdefault(key, BreakerRecord(key=key))
        if record.probe is not None:
            self._probes.pop(record.probe, None)
        incident = apply_change(record, state, reason, at)
        if incident is not None:
            self.incidents.append(incident)

    def slow_opened(self, key: str, at: float, reason: str) -> None:
        """A slow-operation incident begins (``SlowOperation``)."""
        if not any(i.key == key and i.closed_at is None for i in self.incidents):
            self.incidents.append(Incident(key=key, opened_at=at, closed_at=None, reason=reason))

    def slow_closed(self, key: str, at: float, reason: str | None = None) -> None:
        """The open incident ``key`` ends (cleared, or its orchestrator is gone)."""
        for index, incident in enumerate(self.incidents):
            if incident.key == key and incident.closed_at is None:
                self.incidents[index] = msgspec.structs.replace(
                    incident, closed_at=at, reason=reason or incident.reason
                )

    def close_slow(self, at: float) -> None:
        """Its orchestrator stopped (or a new one starts after a crash): the slow
        incidents it had open ended with it."""
        for incident in list(self.incidents):
            if incident.key.startswith(SLOW_KEY) and incident.closed_at is None:
                self.slow_closed(incident.key, at)

    def outage(self, key: str, started_at: float, ended_at: float, reason: str) -> None:
        """A dependency that was down and is back, journaled after the fact (the store
        cannot journal its own outage while it lasts): an incident, for MTTR."""
        self.incidents.append(
            Incident(key=key, opened_at=started_at, closed_at=ended_at, reason=reason)
        )

    # -- queries ----------------------------------------------------------------------
    def blocked(self, key: str, probing: set[str]) -> str | None:
        """Why no attempt may go to ``key`` now (None: it may). ``probing``: keys this
        ``decide`` pass already sent a half-open probe to."""
        record = self.breakers.get(key)
        if record is None or record.state is BreakerState.CLOSED:
            return None
        if record.state is BreakerState.OPEN:
            return f"breaker {key} open ({record.reason})"
        if record.probe is not None or key in probing:
            return f"breaker {key} half-open, probe running"
        return None

    def is_probe(self, key: str) -> bool:
        record = self.breakers.get(key)
        return record is not None and record.state is BreakerState.HALF_OPEN

    def due(self, now: float) -> list[tuple[str, BreakerState, str]]:
        out = []
        for key, record in self.breakers.items():
            change = due(record, now, self.config.breaker)
            if change is not None:
                out.append((key, *change))
        return out

    def next_wakeup(self) -> float | None:
        times = [
            t
            for r in self.breakers.values()
            if (t := next_change_at(r, self.config.breaker)) is not None
        ]
        return min(times) if times else None

    def degraded(self) -> bool:
        return any(r.state is not BreakerState.CLOSED for r in self.breakers.values())

    # -- snapshots --------------------------------------------------------------------
    def snapshot(self) -> ResilienceSnapshot:
        return ResilienceSnapshot(
            config=self.config,
            breakers=[msgspec.structs.replace(r) for r in self.breakers.values()],
            incidents=list(self.incidents),
            errors=list(self.errors),
            errors_by_class=dict(self.errors_by_class),
            answered=sorted(self.answered_attempts),
        )

    @classmethod
    def restore(cls, data: ResilienceSnapshot) -> Resilience:
        out = cls(data.config)
        for record in data.breakers:
            copy = msgspec.structs.replace(record, recent=list(record.recent))
            out.breakers[record.key] = copy
            if copy.probe is not None and copy.probe_result is None:
                out._probes[copy.probe] = copy.key
        out.incidents.extend(data.incidents)
        out.errors.extend(data.errors)
        out.errors_by_class.update(data.errors_by_class)
        out.answered_attempts.update(data.answered)
        return out
