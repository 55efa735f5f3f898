"""``tc health``: is anything degraded now, since when, and what has been failing.

One report (``health_report``) is built from the folded state, the App's clock and the
scheduler settings; the JSON is that report, the text view renders it. It reads only
what the journal says: circuit breakers (``BreakerChanged``), the failure class of every
failed attempt, tasks waiting and why, and incidents (a breaker's open -> closed; a
dependency such as the store journals its outages the same way, under its own key).

Degraded modes: a breaker that is not closed (its work is routed a tier down, or held
when it may not move), an incident still open, ready tasks held by a breaker, tasks
waiting for capacity, tasks backing off after transient failures. The exit code is 0
when none is active, 1 when any is (for scripts and monitoring), 2 when there is no
state to judge.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import fmean
from typing import Annotated, Any

import msgspec
import typer
from rich import box
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from trafficcontrol.bootstrap import App
from trafficcontrol.cli.app import (
    HomeOption,
    JsonOption,
    emit_json,
    existing_state,
    make_app,
    out,
)
from trafficcontrol.cli.views import (
    ago,
    breaker_text,
    countdown,
    duration,
    local_time,
    next_probe_at,
    stamp,
    until,
)
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


def register(app: typer.Typer) -> None:
    """Add ``health`` to ``app`` (once, however often it is called)."""
    if "health" not in {command.name for command in app.registered_commands}:
        app.command("health")(health_command)


def health_command(
    home: HomeOption = None,
    as_json: JsonOption = False,
    errors: Annotated[int, typer.Option(help="Recent errors to list.", min=0)] = RECENT,
) -> None:
    """Breakers, degraded modes, errors by class, incidents and MTTR. Exit 1 when degraded."""
    app_, state = open_home(home)
    data = health_report(state, app_.clock.now(), app_.settings.scheduler(), recent=errors)
    if as_json:
        emit_json(data)
    else:
        for part in render(data):
            out.print(part)
    raise typer.Exit(data["exit_code"])


def open_home(home: Path | None) -> tuple[App, State]:
    """The App of an existing state home. When there is none (or the config is bad) the
    error is printed as every command prints it, but the exit code is 2: 1 means
    degraded."""
    try:
        app_ = make_app(home)
        return app_, existing_state(app_)
    except typer.Exit as exc:
        raise typer.Exit(UNKNOWN) from exc


# -- the report ------------------------------------------------------------------------
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
    records = [r for r in state.tasks.values() if r.state is TaskState.WAITING]
    records.sort(key=lambda r: (r.retry_at is None, r.retry_at or 0.0))
    for record in records:
        item = {
            "task": record.spec.id,
            "reason": record.wait_reason,
            "until": stamp(record.retry_at),
            "in_s": None if record.retry_at is None else max(record.retry_at - now, 0.0),
            "transient_failures": record.transient_failures,
        }
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


# -- the text view ---------------------------------------------------------------------
def render(data: dict[str, Any]) -> list[RenderableType]:
    now = data["now"]["epoch"]
    parts: list[RenderableType] = [headline(data)]
    for mode in data["degraded"]:
        parts.append(Text(f"  {mode['text']}", style="yellow"))
        if mode["kind"] == "breaker":
            if mode["shifted"]:
                parts.append(Text(f"    a tier down: {listed(mode['shifted'])}"))
            if mode["held"]:
                parts.append(
                    Text(
                        "    held (hard, pinned, escalated, resumed or nothing cheaper):"
                        f" {listed(mode['held'])}"
                    )
                )
        waits = data["waiting"].get(
            {"transient_backoff": "transient", "capacity_wait": "capacity"}.get(mode["kind"], "")
        )
        for item in (waits or [])[:RECENT]:
            parts.append(Text(f"    {item['task']}: {wait_line(item, now)}"))
        if waits and len(waits) > RECENT:
            parts.append(Text(f"    … {len(waits) - RECENT} more (tc tasks --state waiting)"))
    if data["breakers"]:
        parts.append(breakers_table(data["breakers"], now))
    parts.extend(error_parts(data["errors"], now))
    parts.extend(incident_parts(data["incidents"], now))
    return parts


def listed(tasks: list[str], limit: int = RECENT) -> str:
    more = f" … {len(tasks) - limit} more" if len(tasks) > limit else ""
    return ", ".join(tasks[:limit]) + more


def headline(data: dict[str, Any]) -> Text:
    if data["status"] == "healthy":
        return Text(
            f"health: healthy — no breaker open, nothing degraded (exit {data['exit_code']})",
            style="green",
        )
    return Text(
        f"health: degraded — {plural(len(data['degraded']), 'degraded mode')}"
        f" (exit {data['exit_code']})",
        style="bold yellow",
    )


def wait_line(item: dict[str, Any], now: float) -> str:
    reason = item["reason"] or "waiting"
    if item["until"] is None:
        return reason
    return f"{reason}, until {until(item['until']['epoch'], now)}"


def breakers_table(breakers: list[dict[str, Any]], now: float) -> Table:
    table = _table(
        "Circuit breakers",
        ["key", "state", "since", "reason", "probes", "next probe", "failures in a row"],
    )
    for b in breakers:
        since = "-" if b["since"] is None else ago(b["since"]["epoch"], now)
        probe = "-"
        if b["next_probe_at"] is not None:
            probe = until(b["next_probe_at"]["epoch"], now)
        elif b["probe_attempt"] is not None:
            probe = f"{b['probe_attempt']} running"
        style = "green" if b["state"] == BreakerState.CLOSED else "bold red"
        table.add_row(
            b["key"],
            Text(b["state"], style=style),
            since,
            escape(b["reason"] or "-"),
            str(b["probes"]),
            probe,
            str(b["failures_in_a_row"]),
        )
    return table


def error_parts(errors: dict[str, Any], now: float) -> list[RenderableType]:
    by_class = errors["by_class"]
    if not any(c["total"] for c in by_class.values()):
        return [Text("No failed attempts.")]
    hour = "last hour" if errors["last_hour_complete"] else "last hour (at least)"
    table = _table("Failed attempts by class", ["class", "total", hour])
    for name, counts in by_class.items():
        if counts["total"]:
            table.add_row(name, str(counts["total"]), str(counts["last_hour"]))
    parts: list[RenderableType] = [table]
    if errors["recent"]:
        recent = _table(
            "Recent errors (newest first)", ["time", "attempt", "class", "rule", "message"]
        )
        for e in errors["recent"]:
            recent.add_row(
                ago(e["at"]["epoch"], now),
                e["attempt"],
                e["class"],
                escape(e["rule"] or "-"),
                escape(e["message"].splitlines()[0][:120] if e["message"] else "-"),
            )
        parts.append(recent)
    return parts


def incident_parts(incidents: dict[str, Any], now: float) -> list[RenderableType]:
    if not incidents["closed"] and not incidents["ongoing"]:
        return [Text("No incidents.")]
    table = _table("Incidents", ["key", "opened", "closed", "duration", "reason"])
    for i in incidents["closed"][-RECENT:]:
        table.add_row(
            i["key"],
            local_time(i["opened_at"]["epoch"]),
            local_time(i["closed_at"]["epoch"]),
            duration(i["duration_s"]),
            escape(i["reason"]),
        )
    for i in incidents["ongoing"]:
        table.add_row(
            i["key"],
            local_time(i["opened_at"]["epoch"]),
            Text("ongoing", style="bold red"),
            f"{duration(i['age_s'])} so far",
            escape(i["reason"]),
        )
    parts: list[RenderableType] = [table]
    mttr = [
        f"{m['key']} {duration(m['mttr_s'])} over {plural(m['incidents'], 'incident')}"
        for m in incidents["mttr"]
        if m["mttr_s"] is not None
    ]
    if mttr:
        parts.append(Text("MTTR (open -> closed): " + ", ".join(mttr)))
    return parts


def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(column, no_wrap=column in ("key", "state", "since", "time"))
    return table
