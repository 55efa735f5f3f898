"""The data of ``tc health``: ``health_report`` folds the journal's view of resilience
into the dict that ``--json`` prints and the text view renders (the degraded modes with
the tasks each holds or shifts, every circuit breaker, waiting tasks, failed attempts by
class and the newest errors, incidents and MTTR) with the exit code that goes with it.
Nothing here prints or reads the clock: the time comes in as ``now``.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean
from typing import Any

import msgspec

from trafficcontrol.cli.formats import countdown, stamp
from trafficcontrol.cli.views import breaker_text, next_probe_at, wait_dict, waiting_records
from trafficcontrol.domain.breakers import BreakerRecord, BreakerState, key_for
from trafficcontrol.domain.capacity.routing import shift_down
from trafficcontrol.domain.decide import SchedulerConfig, route_for
from trafficcontrol.domain.failures import FailureClass
from trafficcontrol.domain.interrupts import resumable
from trafficcontrol.domain.model import AttemptId, TaskState
from trafficcontrol.domain.records import TaskRecord
from trafficcontrol.domain.state import State

HEALTHY, DEGRADED, UNKNOWN = 0, 1, 2
"""Exit codes: nothing degraded; something degraded; no state to judge (or bad config)."""
RECENT = 10
"""Recent errors listed."""
HOUR_S = 3600.0
_BACKOFF = (FailureClass.TRANSIENT, FailureClass.INFRASTRUCTURE)


def health_report(
    state: State, now: float, config: SchedulerConfig, *, recent: int = RECENT
) -> dict[str, Any]:
    resilience = state.resilience
    policy = resilience.config.breaker
    breakers = sorted(resilience.breakers.values(), key=lambda r: r.key)
    held, shifted = routed_around(state, now, config)
    capacity_waits, backoffs = waiting(state, now)
    incidents = incidents_report(state, now)
    degraded: list[dict[str, Any]] = []
    for record in breakers:
        if record.state is not BreakerState.CLOSED:
            degraded.append(breaker_mode(record, held, shifted, breaker_text(record, policy, now)))
    broken = {r.key for r in breakers if r.state is not BreakerState.CLOSED}
    for incident in incidents["ongoing"]:
        if incident["key"] not in broken:
            degraded.append(
                {
                    "kind": "incident",
                    "key": incident["key"],
                    "tasks": [],
                    "text": f"{incident['key']} incident ongoing for"
                    f" {countdown(incident['age_s'])}: {incident['reason']}",
                }
            )
    if backoffs:
        degraded.append(
            {
                "kind": "transient_backoff",
                "key": None,
                "tasks": [w["task"] for w in backoffs],
                "text": f"{plural(len(backoffs), 'task')} in transient back-off",
            }
        )
    if capacity_waits:
        degraded.append(
            {
                "kind": "capacity_wait",
                "key": None,
                "tasks": [w["task"] for w in capacity_waits],
                "text": f"{plural(len(capacity_waits), 'task')} waiting for capacity",
            }
        )
    code = DEGRADED if degraded else HEALTHY
    return {
        "now": stamp(now),
        "status": "degraded" if degraded else "healthy",
        "exit_code": code,
        "degraded": degraded,
        "breakers": [breaker_dict(r, now, state) for r in breakers],
        "waiting": {"transient": backoffs, "capacity": capacity_waits},
        "errors": errors_report(state, now, recent),
        "incidents": incidents,
        "policy": {
            "retry": msgspec.to_builtins(resilience.config.retry),
            "breaker": msgspec.to_builtins(policy),
            "user_rules": [rule.name for rule in resilience.config.rules],
        },
    }


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def breaker_mode(
    record: BreakerRecord,
    held: dict[str, list[str]],
    shifted: dict[str, list[str]],
    text: str,
) -> dict[str, Any]:
    """What an unclosed breaker means now: work routed a tier down, or held."""
    key = record.key
    text = f"{key}: {text.removeprefix(key + ' ')}"
    if "/" not in key:  # a dependency of the orchestrator itself (the store …)
        return {"kind": "dependency", "key": key, "state": record.state, "tasks": [], "text": text}
    text = f"routing around {text}"
    if shifted.get(key):
        text += f"; {plural(len(shifted[key]), 'ready task')} moving a tier down"
    if held.get(key):
        text += f"; {plural(len(held[key]), 'ready task')} held until it closes"
    return {
        "kind": "breaker",
        "key": key,
        "state": record.state,
        "held": held.get(key, []),
        "shifted": shifted.get(key, []),
        "tasks": held.get(key, []),
        "text": text,
    }


def breaker_dict(record: BreakerRecord, now: float, state: State) -> dict[str, Any]:
    policy = state.resilience.config.breaker
    backend, _, family = record.key.partition("/")
    window = [failed for at, failed in record.recent if at >= now - policy.window_s]
    streak = 0
    for _at, failed in reversed(record.recent):
        if not failed:
            break
        streak += 1
    return {
        "key": record.key,
        "backend": backend if family else None,
        "family": family or None,
        "state": record.state,
        "since": stamp(record.changed_at or None),
        "for_s": now - record.changed_at if record.changed_at else None,
        "reason": record.reason,
        "probes": record.probes,
        "probe_attempt": record.probe,
        "next_probe_at": stamp(next_probe_at(record, policy)),
        "incident_since": stamp(record.opened_at),
        "failures_in_a_row": streak,
        "calls_in_window": len(window),
        "failures_in_window": sum(window),
    }


def routed_around(
    state: State, now: float, config: SchedulerConfig
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Ready tasks whose route meets a breaker that is not closed, by that breaker's key:
    (held: they may not move down, so they wait; shifted: they go a tier down)."""
    held: dict[str, list[str]] = defaultdict(list)
    shifted: dict[str, list[str]] = defaultdict(list)
    resilience = state.resilience
    if not resilience.degraded():
        return {}, {}
    for record in state.tasks.values():
        if record.state is not TaskState.READY:
            continue
        task_id = record.spec.id
        resumed = resumable(state, task_id)
        project = state.projects[record.spec.project]
        backend = resumed.backend if resumed else record.spec.agent or project.agent
        chosen = route_for(state, task_id, backend, resumed, now, config)
        first: str | None = None
        while True:
            key = key_for(backend, chosen.family.value)
            if resilience.blocked(key, set()) is None:
                if first is not None:
                    shifted[first].append(task_id)
                break
            first = first or key
            cheaper = shift_down(chosen, config.routing, "breaker")
            if cheaper is None:
                held[first].append(task_id)
                break
            chosen = cheaper
    return dict(held), dict(shifted)


def waiting(state: State, now: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Waiting tasks, soonest first: (waiting for capacity, backing off after transient
    failures). A task backing off after its own work failed is neither."""
    capacity: list[dict[str, Any]] = []
    backoff: list[dict[str, Any]] = []
    for record in waiting_records(state):
        item = {**wait_dict(record, now), "transient_failures": record.transient_failures}
        if (record.wait_reason or "").startswith("capacity"):
            capacity.append(item)
        elif last_class(state, record) in _BACKOFF:
            backoff.append(item)
    return capacity, backoff


def last_class(state: State, record: TaskRecord) -> FailureClass | None:
    if not record.attempts:
        return None
    return state.attempts[record.attempts[-1]].failure_class


def errors_report(state: State, now: float, recent: int) -> dict[str, Any]:
    resilience = state.resilience
    kept = list(resilience.errors)
    hour = [e for e in kept if e.at >= now - HOUR_S]
    full = resilience.errors.maxlen is not None and len(kept) == resilience.errors.maxlen
    newest = sorted(kept, key=lambda e: e.at, reverse=True)[:recent]
    return {
        "by_class": {
            c.value: {
                "total": resilience.errors_by_class.get(c.value, 0),
                "last_hour": sum(e.failure_class is c for e in hour),
            }
            for c in FailureClass
        },
        "last_hour_complete": not (full and kept and kept[0].at >= now - HOUR_S),
        "kept": len(kept),
        "recent": [
            {
                "at": stamp(e.at),
                "attempt": e.attempt_id,
                "task": task_of(state, e.attempt_id),
                "key": e.key,
                "class": e.failure_class,
                "rule": e.rule,
                "message": e.message,
            }
            for e in newest
        ],
    }


def task_of(state: State, attempt_id: str) -> str | None:
    attempt = state.attempts.get(AttemptId(attempt_id))
    return None if attempt is None else attempt.task_id


def incidents_report(state: State, now: float) -> dict[str, Any]:
    """Closed incidents with their durations, ongoing ones with their age, MTTR per key
    (mean open -> closed over the incidents kept, the newest 100)."""
    resilience = state.resilience
    closed = [i for i in resilience.incidents if i.closed_at is not None]
    ongoing: dict[str, dict[str, Any]] = {}
    for record in resilience.breakers.values():
        if record.opened_at is not None:
            ongoing[record.key] = {
                "key": record.key,
                "opened_at": stamp(record.opened_at),
                "age_s": now - record.opened_at,
                "state": record.state,
                "reason": record.reason,
            }
    for incident in resilience.incidents:
        if incident.closed_at is None and incident.key not in ongoing:
            ongoing[incident.key] = {
                "key": incident.key,
                "opened_at": stamp(incident.opened_at),
                "age_s": now - incident.opened_at,
                "state": None,
                "reason": incident.reason,
            }
    durations: dict[str, list[float]] = defaultdict(list)
    for incident in closed:
        durations[incident.key].append((incident.closed_at or now) - incident.opened_at)
    keys = sorted(set(durations) | set(ongoing))
    every = [d for ds in durations.values() for d in ds]
    return {
        "closed": [
            {
                "key": i.key,
                "opened_at": stamp(i.opened_at),
                "closed_at": stamp(i.closed_at),
                "duration_s": (i.closed_at or i.opened_at) - i.opened_at,
                "reason": i.reason,
            }
            for i in closed
        ],
        "ongoing": [ongoing[k] for k in sorted(ongoing)],
        "mttr": [
            {
                "key": k,
                "incidents": len(durations.get(k, [])),
                "mttr_s": fmean(durations[k]) if durations.get(k) else None,
                "ongoing": k in ongoing,
            }
            for k in keys
        ],
        "mttr_s": fmean(every) if every else None,
    }
