"""A deterministic stand-in for the runtime, in virtual time, on the pure domain only.

``drive`` loops ``decide`` -> journal each command as its event -> ``apply``, and plays
the agents and the users: it finishes running attempts at random (succeeded, failed,
interrupted; timed out or cancelled once a stop was journaled), sometimes cancels or
retries a task, and advances ``now`` to the next finish or to ``next_wakeup``. Every
event it applies is recorded in order, so a test can replay the run.

Budgets bound interruptions, cancels and retries, so a run always quiesces: every
attempt is finite and a task makes progress on each of them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from trafficcontrol.domain.capacity.windows import ALL_WINDOWS
from trafficcontrol.domain.decide import (
    Command,
    Decision,
    SchedulerConfig,
    decide,
)
from trafficcontrol.domain.events import (
    AnyEvent,
    AttemptFinished,
    BacklogSubmitted,
    TaskCancelRequested,
    TaskRetryRequested,
)
from trafficcontrol.domain.model import (
    AttemptId,
    Outcome,
    ProjectId,
    ProjectSpec,
    StopReason,
    TaskId,
    TaskSpec,
    TaskState,
)
from trafficcontrol.domain.state import State, apply, fold
from trafficcontrol.runtime.pool import command_event

Hook = Callable[[State, AnyEvent], None]

_event_decoder = msgspec.json.Decoder(AnyEvent)


def event_for(command: Command, now: float) -> AnyEvent:
    """The event the shell journals before acting on ``command`` (the runtime's own)."""
    return command_event(command, now, "/virtual/logs")


def apply_decision(state: State, decision: Decision, now: float) -> list[AnyEvent]:
    """Journal-and-apply every command of ``decision``; the events, in order."""
    events = [event_for(command, now) for command in decision.commands]
    for event in events:
        apply(state, event)
    return events


VIRTUAL_PROJECT = ProjectSpec(id=ProjectId("p"), path="/virtual/p", is_git=True, max_attempts=3)
"""A git project that exists only in virtual time."""


def virtual_task(tid: str, **fields: Any) -> TaskSpec:
    """A task of ``VIRTUAL_PROJECT`` titled by its id (prompt "do it" unless given)."""
    fields.setdefault("prompt", "do it")
    return TaskSpec(id=TaskId(tid), project=VIRTUAL_PROJECT.id, title=tid, **fields)


def decide_and_apply(
    state: State, now: float, config: SchedulerConfig, journal: list[AnyEvent] | None = None
) -> list[Command]:
    """One scheduler pass: decide, journal-and-apply its commands (into ``journal`` too)."""
    decision = decide(state, now, config)
    events = apply_decision(state, decision, now)
    if journal is not None:
        journal.extend(events)
    return decision.commands


def roundtrip(events: Sequence[AnyEvent]) -> list[AnyEvent]:
    """The events as the journal gives them back (JSON encoded and decoded)."""
    return [_event_decoder.decode(msgspec.json.encode(e)) for e in events]


@dataclass
class Run:
    events: list[AnyEvent] = field(default_factory=list)
    state: State = field(default_factory=State)
    completed: bool = False
    """True when the run quiesced (nothing running, ready or waiting) within the bound."""
    steps: int = 0
    snapshots: list[Any] = field(default_factory=list)
    """``canonical(state)`` after each event, when asked for."""


@dataclass
class _Budget:
    interrupts: int = 4
    cancels: int = 2
    retries: int = 3


def drive(
    projects: Sequence[ProjectSpec],
    tasks: Sequence[TaskSpec],
    config: SchedulerConfig,
    rng: random.Random,
    *,
    max_steps: int = 1000,
    before: Hook | None = None,
    after: Hook | None = None,
    snapshots: bool = False,
) -> Run:
    """Run the backlog to quiescence in virtual time. ``before``/``after`` see every event."""
    run = Run()
    state = run.state
    now = 0.0
    budget = _Budget()

    def emit(event: AnyEvent) -> None:
        if before is not None:
            before(state, event)
        apply(state, event)
        run.events.append(event)
        if after is not None:
            after(state, event)
        if snapshots:
            run.snapshots.append(canonical(state))

    emit(BacklogSubmitted(at=now, source="driver", projects=list(projects), tasks=list(tasks)))
    while run.steps < max_steps:
        run.steps += 1
        decision = decide(state, now, config)
        if decision.commands:
            for command in decision.commands:
                emit(event_for(command, now))
            continue

        # The users, now and then.
        roll = rng.random()
        if roll < 0.04 and budget.cancels:
            open_tasks = sorted(t for t, r in state.tasks.items() if not r.state.terminal)
            if open_tasks:
                budget.cancels -= 1
                emit(TaskCancelRequested(at=now, task_id=rng.choice(open_tasks)))
                continue
        elif roll < 0.12 and budget.retries:
            ended = sorted(
                t
                for t, r in state.tasks.items()
                if r.state in (TaskState.FAILED, TaskState.CANCELLED)
            )
            if ended:
                budget.retries -= 1
                emit(TaskRetryRequested(at=now, task_id=rng.choice(ended)))
                continue

        # The agents: the next one to finish, unless a timer fires first.
        if state.running:
            finish_at = now + rng.choice((0.5, 1.0, 3.0, 7.0, 20.0))
            if decision.next_wakeup is not None and decision.next_wakeup < finish_at:
                now = max(now, decision.next_wakeup)
                continue
            now = finish_at
            emit(_finish(state, rng, now, budget))
            continue
        if decision.next_wakeup is not None and decision.next_wakeup > now:
            now = decision.next_wakeup
            continue
        run.completed = True
        break
    return run


def _finish(state: State, rng: random.Random, now: float, budget: _Budget) -> AttemptFinished:
    stopped = sorted(a for a, r in state.running.items() if r.stop_reason is not None)
    # A stopped agent usually ends soon; any running one may end first.
    prefer_stopped = bool(stopped) and rng.random() < 0.7
    attempt_id = stopped[0] if prefer_stopped else rng.choice(sorted(state.running))
    attempt = state.running[attempt_id]
    if attempt.stop_reason is StopReason.TIMEOUT:
        outcome = Outcome.TIMED_OUT
    elif attempt.stop_reason is not None:
        outcome = Outcome.CANCELLED
    else:
        roll = rng.random()
        if roll < 0.08 and budget.interrupts:
            budget.interrupts -= 1
            outcome = Outcome.INTERRUPTED
        elif roll < 0.3:
            outcome = Outcome.FAILED
        else:
            outcome = Outcome.SUCCEEDED
    return AttemptFinished(
        at=now,
        attempt_id=AttemptId(attempt_id),
        outcome=outcome,
        exit_code=0 if outcome is Outcome.SUCCEEDED else 1,
        error=None if outcome is Outcome.SUCCEEDED else f"{outcome} at {now}",
        simulated=True,
    )


def replay(events: Sequence[AnyEvent]) -> State:
    """Recovery: a fresh state folded from the journal."""
    return fold(list(events), State())


def canonical(state: State) -> dict[str, Any]:
    """A plain, comparable picture of everything ``state`` means (State has no __eq__)."""
    return {
        "seq": state.seq,
        "projects": {p: msgspec.to_builtins(s) for p, s in sorted(state.projects.items())},
        "tasks": {t: msgspec.to_builtins(r) for t, r in sorted(state.tasks.items())},
        "attempts": {a: msgspec.to_builtins(r) for a, r in sorted(state.attempts.items())},
        "dependents": {t: list(d) for t, d in sorted(state.dependents.items())},
        "counts": {str(s): n for s, n in sorted(state.counts.items()) if n},
        "ready": sorted(e for e in state.ready if state.is_ready_entry(e[2], e[3])),
        "aging": [e for e in state.aging if state.is_ready_entry(e[1], e[2])],
        "waiting": sorted(
            (at, t)
            for at, t in state.waiting
            if state.tasks[t].state is TaskState.WAITING and state.tasks[t].retry_at == at
        ),
        "deadlines": sorted((d, a) for d, a in state.deadlines if a in state.running),
        "locks": {n: sorted(h) for n, h in sorted(state.locks.holders().items())},
        "running": sorted(state.running),
        "running_by_project": {p: n for p, n in sorted(state.running_by_project.items()) if n},
        "running_by_model": {m: n for m, n in sorted(state.running_by_model.items()) if n},
        "stops_wanted": sorted(state.stops_wanted),
        "next_ready_order": state.next_ready_order,
        "instance": state.instance,
        "running_orchestrator": state.running_orchestrator,
        "capacity": msgspec.to_builtins(state.capacity.snapshot()),
        "reserved": {w.label: state.capacity.book.reserved(w) for w in ALL_WINDOWS},
    }
