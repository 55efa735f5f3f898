"""Turning state into tables, JSON and the live view. Reads only; never mutates."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from trafficcontrol.cli.formats import ago, countdown, duration, stamp, until, when
from trafficcontrol.cli.formats import local_time as local_time
from trafficcontrol.domain.breakers import BreakerPolicy, BreakerRecord, BreakerState
from trafficcontrol.domain.failures import FailureClass
from trafficcontrol.domain.model import SIMULATED_LABEL, LimitHit, TaskState, Usage
from trafficcontrol.domain.records import AttemptRecord, TaskRecord
from trafficcontrol.domain.resilience import SLOW_KEY
from trafficcontrol.domain.state import State

STATE_STYLE = {
    TaskState.PENDING: "dim",
    TaskState.READY: "cyan",
    TaskState.RUNNING: "bold blue",
    TaskState.WAITING: "yellow",
    TaskState.BLOCKED: "magenta",
    TaskState.DONE: "green",
    TaskState.FAILED: "bold red",
    TaskState.CANCELLED: "red",
}


def wait_text(record: TaskRecord, now: float) -> str:
    """Why a waiting task waits and until when: ``capacity: …, until Mon 09:00 (in 2h13m)``."""
    reason = record.wait_reason or "waiting"
    if record.retry_at is None:
        return reason
    return f"{reason}, until {until(record.retry_at, now)}"


def usage_dict(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_creation_tokens": usage.cache_creation_tokens,
        "cost_usd": usage.cost_usd,
    }


def attempt_dict(attempt: AttemptRecord) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "no": attempt.no,
        "backend": attempt.backend,
        "model": attempt.model,
        "started_at": when(attempt.started_at),
        "ended_at": when(attempt.ended_at),
        "seconds": None if attempt.ended_at is None else attempt.ended_at - attempt.started_at,
        "outcome": attempt.outcome,
        "exit_code": attempt.exit_code,
        "error": attempt.error,
        "session_id": attempt.session_id,
        "usage": usage_dict(attempt.usage),
        "turns": attempt.turns,
        "turn_usage": usage_dict(attempt.turn_usage),
        "adoptions": attempt.adoptions,
        "context_tokens": attempt.context_tokens,
        "context_peak": attempt.context_peak,
        "handoff": attempt.handoff,
        "workdir": attempt.workdir,
        "branch": attempt.branch,
        "log_path": attempt.log_path,
        "simulated": attempt.simulated,
        "route": attempt.route,
        "expected_units": attempt.expected_units,
        "limit_hit": limit_hit_dict(attempt.limit_hit),
        "failure_class": attempt.failure_class,
        "failure_rule": attempt.failure_rule,
    }


def failure_text(attempt: AttemptRecord) -> str | None:
    """``transient (overloaded)``: the class the failure table gave a failed attempt."""
    if attempt.failure_class is None:
        return None
    return f"{attempt.failure_class.value} ({attempt.failure_rule or 'no rule'})"


def limit_hit_dict(hit: LimitHit | None) -> dict[str, Any] | None:
    if hit is None:
        return None
    return {
        "window": hit.window,
        "resets_at": stamp(hit.resets_at),
        "retry_after_s": hit.retry_after_s,
        "status": hit.status,
        "message": hit.message,
    }


def limit_hit_text(hit: LimitHit, now: float) -> str:
    """``seven_day_opus, resets Mon 09:00 (in 2h13m): usage limit reached``."""
    text = hit.window or "window not said"
    if hit.resets_at is not None:
        text += f", resets {until(hit.resets_at, now)}"
    elif hit.retry_after_s is not None:
        text += f", retry after {countdown(hit.retry_after_s)}"
    if hit.status is not None:
        text += f" (HTTP {hit.status})"
    return f"{text}: {hit.message}" if hit.message else text


def task_dict(state: State, record: TaskRecord, *, attempts: bool = False) -> dict[str, Any]:
    spec = record.spec
    out: dict[str, Any] = {
        "id": spec.id,
        "project": spec.project,
        "title": spec.title,
        "state": record.state,
        "priority": spec.priority,
        "depends_on": list(spec.depends_on),
        "resources": list(spec.resources),
        "attempts": len(record.attempts),
        "last_error": record.last_error,
        "transient_failures": record.transient_failures,
    }
    if spec.model is not None:
        out["model"] = spec.model
    if spec.difficulty is not None:
        out["difficulty"] = spec.difficulty
    if record.state is TaskState.PENDING:
        out["waiting_on"] = [
            d for d in spec.depends_on if state.tasks[d].state is not TaskState.DONE
        ]
    if record.retry_at is not None:
        out["retry_at"] = when(record.retry_at)
        out["retry_at_epoch"] = record.retry_at
    if record.state is TaskState.WAITING:
        out["wait_reason"] = record.wait_reason
    if attempts:
        out["prompt"] = spec.prompt
        out["attempt_list"] = [attempt_dict(state.attempts[a]) for a in record.attempts]
    return out


def counts(state: State) -> dict[str, int]:
    return {s.value: state.counts.get(s, 0) for s in TaskState}


def usage_by_model(state: State) -> dict[str, dict[str, Any]]:
    totals: dict[str, Usage] = defaultdict(Usage)
    simulated: dict[str, bool] = {}
    for attempt in state.attempts.values():
        # An attempt that ended without a final report still used what its turns reported.
        usage = attempt.usage if attempt.usage is not None else attempt.turn_usage
        if usage is not None:
            key = attempt.model or attempt.backend
            totals[key] = totals[key] + usage
            simulated[key] = simulated.get(key, True) and attempt.simulated
    return {
        model: {**(usage_dict(u) or {}), "simulated": simulated[model]}
        for model, u in sorted(totals.items())
    }


def waiting_records(state: State) -> list[TaskRecord]:
    """Waiting tasks, soonest first (those with no time last)."""
    records = [r for r in state.tasks.values() if r.state is TaskState.WAITING]
    records.sort(key=lambda r: (r.retry_at is None, r.retry_at or 0.0))
    return records


def wait_dict(record: TaskRecord, now: float) -> dict[str, Any]:
    """Why a waiting task waits and until when, for JSON."""
    return {
        "task": record.spec.id,
        "reason": record.wait_reason,
        "until": stamp(record.retry_at),
        "in_s": None if record.retry_at is None else max(record.retry_at - now, 0.0),
    }


def waiting_list(state: State, now: float) -> list[dict[str, Any]]:
    """Waiting tasks, soonest first: why and until when."""
    return [{**wait_dict(r, now), "text": wait_text(r, now)} for r in waiting_records(state)]


def next_probe_at(record: BreakerRecord, policy: BreakerPolicy) -> float | None:
    """When an open breaker lets its one probe through (None: it is not open)."""
    if record.state is not BreakerState.OPEN:
        return None
    return record.changed_at + policy.probe_interval_s


def breaker_text(record: BreakerRecord, policy: BreakerPolicy, now: float) -> str:
    """``claude/opus open since Mon 09:00 (3m ago): 6 failures in a row; next probe …``."""
    text = f"{record.key} {record.state.value}"
    if record.changed_at:
        text += f" since {ago(record.changed_at, now)}"
    if record.reason:
        text += f": {record.reason}"
    probe_at = next_probe_at(record, policy)
    if probe_at is not None:
        text += f"; next probe {until(probe_at, now)}"
    elif record.state is BreakerState.HALF_OPEN:
        text += f"; probe {record.probe} running" if record.probe else "; waiting for a probe"
    return text


def broken_breakers(state: State) -> list[BreakerRecord]:
    """Breakers that are not closed, by key."""
    breakers = state.resilience.breakers.values()
    return sorted((r for r in breakers if r.state is not BreakerState.CLOSED), key=lambda r: r.key)


def errors_by_class(state: State) -> dict[str, int]:
    """Failed attempts per failure class (all history; classes never seen are left out)."""
    counted = state.resilience.errors_by_class
    return {c.value: counted[c.value] for c in FailureClass if counted.get(c.value)}


def status_dict(
    state: State, *, orchestrator_running: bool, now: float | None = None
) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {
        "orchestrator_running": orchestrator_running,
        "events": state.seq,
        "tasks": len(state.tasks),
        "by_state": counts(state),
        "running": [
            {
                "attempt": a.id,
                "task": a.task_id,
                "backend": a.backend,
                "model": a.model,
                "elapsed_s": round(now - a.started_at, 1),
            }
            for a in state.running.values()
        ],
        "waiting": waiting_list(state, now),
        "usage_by_model": usage_by_model(state),
        "rate_limits": [
            {
                "window": e.window,
                "status": e.status,
                "utilization": e.utilization,
                "resets_at": when(e.resets_at),
                "observed_at": when(e.at),
                "reported": True,
            }
            for e in state.rate_limits.values()
        ],
        "breakers": [
            {
                "key": r.key,
                "state": r.state,
                "since": when(r.changed_at),
                "reason": r.reason,
                "next_probe_at": when(next_probe_at(r, state.resilience.config.breaker)),
            }
            for r in broken_breakers(state)
        ],
        "errors_by_class": errors_by_class(state),
    }


def counts_text(state: State) -> Text:
    text = Text()
    for task_state in TaskState:
        n = state.counts.get(task_state, 0)
        if n:
            text.append(f"{task_state.value} {n}  ", style=STATE_STYLE[task_state])
    return text


def running_table(state: State, now: float, *, limit: int = 20) -> Table:
    table = Table(title="Running agents", expand=False, title_justify="left")
    for column in ("attempt", "project", "backend", "model", "elapsed"):
        table.add_column(column)
    running = sorted(state.running.values(), key=lambda a: a.started_at)
    for attempt in running[:limit]:
        project = state.tasks[attempt.task_id].spec.project
        backend = attempt.backend + (
            f" {escape(SIMULATED_LABEL)}" if attempt.backend == "sim" else ""
        )
        table.add_row(
            attempt.id, project, backend, attempt.model or "-", duration(now - attempt.started_at)
        )
    if len(running) > limit:
        table.add_row(f"… {len(running) - limit} more", "", "", "", "")
    return table


class LiveView:
    """What ``tc run`` shows while it works: progress, counts and running agents."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]backlog"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("finished"),
            TimeElapsedColumn(),
        )
        self._bar = self.progress.add_task("backlog", total=0)

    def render(self, state: State, now: float) -> RenderableType:
        finished = sum(state.counts.get(s, 0) for s in TaskState if s.terminal)
        self.progress.update(self._bar, total=len(state.tasks), completed=finished)
        parts: list[RenderableType] = [self.progress, counts_text(state)]
        warnings = list(state.capacity.warnings)[-3:]
        for warning in warnings:
            parts.append(Text(f"warning: {warning.text}", style="yellow"))
        parts.append(running_table(state, now))
        return Group(*parts)


def new_slow_incidents(state: State, seen: set[tuple[str, float]]) -> list[str]:
    """Slow-operation incidents opened since the last call (``seen`` is updated)."""
    out = []
    for incident in state.resilience.incidents:
        key = (incident.key, incident.opened_at)
        if incident.key.startswith(SLOW_KEY) and key not in seen:
            seen.add(key)
            out.append(incident.reason)
    return out


def new_warnings(state: State, seen: int) -> tuple[list[str], int]:
    """Capacity warnings journaled since ``seen`` were counted (for line-by-line output)."""
    journaled = list(state.capacity.warnings)
    total = state.capacity.warnings_total
    fresh = journaled[max(len(journaled) - (total - seen), 0) :] if total > seen else []
    return [w.text for w in fresh], total


def tasks_table(state: State, records: list[TaskRecord], now: float | None = None) -> Table:
    now = time.time() if now is None else now
    table = Table()
    for column in ("task", "project", "state", "prio", "attempts", "detail"):
        table.add_column(column)
    for record in records:
        detail = record.last_error or ""
        if record.state is TaskState.PENDING:
            blockers = [
                d for d in record.spec.depends_on if state.tasks[d].state is not TaskState.DONE
            ]
            detail = "after " + ", ".join(blockers)
        elif record.state is TaskState.WAITING:
            detail = wait_text(record, now)
        table.add_row(
            record.spec.id,
            record.spec.project,
            Text(record.state.value, style=STATE_STYLE[record.state]),
            record.spec.priority.value,
            str(len(record.attempts)),
            escape(detail),
        )
    return table


def summary_table(state: State) -> Table:
    """Per task: outcome, time, tokens and model of its last attempt."""
    table = Table(title="Summary")
    for column in ("task", "state", "attempts", "time", "tokens", "model"):
        table.add_column(column)
    for record in state.tasks.values():
        spent = 0.0
        tokens = 0
        model = "-"
        for attempt_id in record.attempts:
            attempt = state.attempts[attempt_id]
            if attempt.ended_at is not None:
                spent += attempt.ended_at - attempt.started_at
            if attempt.usage is not None:
                tokens += attempt.usage.total_tokens
            model = attempt.model or attempt.backend
        table.add_row(
            record.spec.id,
            Text(record.state.value, style=STATE_STYLE[record.state]),
            str(len(record.attempts)),
            duration(spent),
            f"{tokens:,}",
            model,
        )
    return table


def usage_table(state: State) -> Table:
    table = Table(title="Tokens by model")
    for column in ("model", "input", "output", "cache read", "cache write", "cost (USD)"):
        table.add_column(column, justify="right")
    for model, u in usage_by_model(state).items():
        label = model + (f" {escape(SIMULATED_LABEL)}" if u["simulated"] else "")
        cost = "unknown" if u["cost_usd"] is None else f"{u['cost_usd']:.4f}"
        table.add_row(
            label,
            f"{u['input_tokens']:,}",
            f"{u['output_tokens']:,}",
            f"{u['cache_read_tokens']:,}",
            f"{u['cache_creation_tokens']:,}",
            cost,
        )
    return table
