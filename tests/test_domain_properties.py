"""Properties of the pure core over random DAG backlogs driven in virtual time.

Each example builds a random backlog (dependencies only on earlier tasks, so it is a
DAG), random limits and resources, and runs it with ``tests.domain_driver.drive``
from a seed hypothesis draws (shown on failure). Invariants are computed from the
running attempts and the task records independently of the state's own indices.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.domain_driver import Run, canonical, drive, replay, roundtrip
from trafficcontrol.domain.decide import SchedulerConfig, task_resources
from trafficcontrol.domain.events import AnyEvent, AttemptDispatched, AttemptFinished
from trafficcontrol.domain.model import (
    Priority,
    ProjectId,
    ProjectSpec,
    TaskId,
    TaskSpec,
    TaskState,
    lock_name,
)
from trafficcontrol.domain.state import State, model_key

MODELS = (None, "opus", "sonnet")
RESOURCE_POOL = ("db", "cache", "net")


class Backlog:
    def __init__(
        self, projects: list[ProjectSpec], tasks: list[TaskSpec], config: SchedulerConfig
    ) -> None:
        self.projects, self.tasks, self.config = projects, tasks, config

    def __repr__(self) -> str:  # readable falsifying examples
        return f"Backlog(projects={self.projects!r}, tasks={self.tasks!r}, config={self.config!r})"


@st.composite
def backlogs(draw: st.DrawFn, max_tasks: int = 10) -> Backlog:
    n_projects = draw(st.integers(1, 3))
    projects = [
        ProjectSpec(
            id=ProjectId(f"p{i}"),
            path=f"/virtual/p{i}",
            is_git=draw(st.sampled_from([True, True, False])),
            lock_in_place=draw(st.booleans()),
            model=draw(st.sampled_from(MODELS)),
            max_concurrent=draw(st.none() | st.integers(1, 3)),
            max_attempts=draw(st.integers(1, 3)),
            timeout_s=draw(st.sampled_from([None, None, 30.0])),
        )
        for i in range(n_projects)
    ]
    n_tasks = draw(st.integers(1, max_tasks))
    tasks: list[TaskSpec] = []
    for i in range(n_tasks):
        earlier = [t.id for t in tasks]
        deps: list[TaskId] = []
        if earlier and draw(st.integers(0, 2)) == 0:
            deps = draw(st.lists(st.sampled_from(earlier), unique=True, min_size=1, max_size=2))
        names = draw(st.lists(st.sampled_from(RESOURCE_POOL), unique=True, max_size=2))
        resources = tuple(n + (":shared" if draw(st.booleans()) else "") for n in names)
        tasks.append(
            TaskSpec(
                id=TaskId(f"t{i}"),
                project=draw(st.sampled_from(projects)).id,
                title=f"task {i}",
                prompt="do it",
                priority=draw(st.sampled_from(list(Priority))),
                score=draw(st.sampled_from([0.0, 1.0, 2.5])),
                depends_on=tuple(deps),
                resources=resources,
                model=draw(st.sampled_from(MODELS)),
                max_attempts=draw(st.none() | st.integers(1, 3)),
                timeout_s=draw(st.sampled_from([None, None, None, 5.0, 30.0])),
                retry_backoff_s=draw(st.sampled_from([1.0, 5.0])),
            )
        )
    per_model_keys = draw(st.lists(st.sampled_from(["default", "opus", "sonnet"]), unique=True))
    config = SchedulerConfig(
        max_agents=draw(st.integers(1, 5)),
        per_model={k: draw(st.integers(1, 2)) for k in per_model_keys},
        per_project=draw(st.none() | st.integers(1, 2)),
        starvation_after_s=draw(st.sampled_from([5.0, 30.0, 3600.0])),
    )
    return Backlog(projects, tasks, config)


seeds = st.integers(0, 2**32 - 1)


def run_backlog(backlog: Backlog, seed: int, **kwargs: Any) -> Run:
    return drive(backlog.projects, backlog.tasks, backlog.config, random.Random(seed), **kwargs)


# -- invariants computed independently of the state's indices ---------------------------
def check_dispatch_order(state: State, event: AnyEvent) -> None:
    """(c) Called before an event is applied: a dispatched task has every dependency done."""
    if isinstance(event, AttemptDispatched):
        record = state.tasks[event.task_id]
        assert record.state is TaskState.READY, (event.task_id, record.state)
        for dep in record.spec.depends_on:
            assert state.tasks[dep].state is TaskState.DONE, (event.task_id, dep)
        assert event.resources == task_resources(state, event.task_id)


def check_locks(state: State) -> None:
    """(d) Each exclusive name has one holder and no shared holder; the table agrees."""
    exclusive: dict[str, list[str]] = {}
    shared: dict[str, list[str]] = {}
    for attempt in state.running.values():
        for resource in set(attempt.resources):
            name, is_shared = lock_name(resource)
            (shared if is_shared else exclusive).setdefault(name, []).append(attempt.id)
    for name, holders in exclusive.items():
        assert len(holders) == 1, (name, holders)
        assert not shared.get(name), (name, holders, shared.get(name))
    expected = {n: sorted(h) for n, h in exclusive.items()}
    for name, holders in shared.items():
        expected.setdefault(name, []).extend(sorted(holders))
    assert state.locks.holders() == expected


def check_limits(state: State, config: SchedulerConfig) -> None:
    """(e) Global, per-project and per-model limits hold, counted from the attempts."""
    assert len(state.running) <= config.max_agents
    by_project = Counter(state.tasks[a.task_id].spec.project for a in state.running.values())
    by_model = Counter(model_key(a.model) for a in state.running.values())
    for project_id, n in by_project.items():
        limit = state.projects[project_id].max_concurrent or config.per_project
        if limit is not None:
            assert n <= limit, (project_id, n, limit)
    for model, n in by_model.items():
        limit = config.per_model.get(model)
        if limit is not None:
            assert n <= limit, (model, n, limit)
    assert +state.running_by_project == by_project
    assert +state.running_by_model == by_model


def check_task_states(state: State) -> None:
    """(f) One state per task, counts agree, running iff one live attempt, never done+running."""
    counts = Counter(r.state for r in state.tasks.values())
    assert +state.counts == counts
    assert sum(state.counts.values()) == len(state.tasks)
    live = Counter(a.task_id for a in state.running.values())
    for task_id, record in state.tasks.items():
        assert live[task_id] == (1 if record.state is TaskState.RUNNING else 0), (
            task_id,
            record.state,
            live[task_id],
        )
        not_done = [d for d in record.spec.depends_on if state.tasks[d].state is not TaskState.DONE]
        assert record.unfinished_deps == len(not_done), task_id
        if record.state in (TaskState.READY, TaskState.RUNNING, TaskState.WAITING):
            assert not not_done, (task_id, record.state, not_done)
    for attempt in state.running.values():
        assert attempt.outcome is None
        assert state.tasks[attempt.task_id].state is TaskState.RUNNING


def check_all(config: SchedulerConfig) -> Any:
    def after(state: State, _event: AnyEvent) -> None:
        check_locks(state)
        check_limits(state, config)
        check_task_states(state)

    return after


# -- properties ------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(backlogs(), seeds)
def test_folding_the_same_events_twice_gives_the_same_state(backlog: Backlog, seed: int) -> None:
    """(a) Replay is deterministic, also after a round trip through the journal encoding."""
    run = run_backlog(backlog, seed)
    first = canonical(replay(run.events))
    second = canonical(replay(run.events))
    assert first == second
    assert canonical(replay(roundtrip(run.events))) == first
    assert canonical(run.state) == first


@settings(max_examples=150, deadline=None)
@given(backlogs(max_tasks=6), seeds)
def test_replay_of_every_prefix_equals_the_live_state(backlog: Backlog, seed: int) -> None:
    """(b) Recovery after any event gives exactly the state the live run had then."""
    run = run_backlog(backlog, seed, snapshots=True)
    journal = roundtrip(run.events)
    assert len(run.snapshots) == len(journal)
    for k in range(1, len(journal) + 1):
        assert canonical(replay(journal[:k])) == run.snapshots[k - 1], f"prefix {k}"


@settings(max_examples=600, deadline=None)
@given(backlogs(), seeds)
def test_invariants_hold_after_every_event(backlog: Backlog, seed: int) -> None:
    """(c) DAG order, (d) locks, (e) limits, (f) task states — checked at every event."""
    run = run_backlog(backlog, seed, before=check_dispatch_order, after=check_all(backlog.config))
    assert run.completed


@settings(max_examples=300, deadline=None)
@given(backlogs(), seeds)
def test_every_attempt_ends_once_and_the_backlog_quiesces(backlog: Backlog, seed: int) -> None:
    """(g) One AttemptFinished per dispatched attempt; (h) liveness at the end."""
    run = run_backlog(backlog, seed)
    assert run.completed
    dispatched = [e.attempt_id for e in run.events if isinstance(e, AttemptDispatched)]
    finished = Counter(e.attempt_id for e in run.events if isinstance(e, AttemptFinished))
    assert len(set(dispatched)) == len(dispatched)
    assert finished == Counter(dispatched)
    assert dispatched, "the first task has no dependencies, so something ran"

    state = run.state
    assert not state.running
    assert not state.stops_wanted
    stuck = {TaskState.READY, TaskState.WAITING, TaskState.RUNNING, TaskState.BLOCKED}
    assert not [t for t, r in state.tasks.items() if r.state in stuck]
    # A pending task waits on a failed/cancelled task, or on a pending one; the graph is
    # acyclic, so every such chain ends at a failed or cancelled task.
    blocking = {TaskState.FAILED, TaskState.CANCELLED, TaskState.PENDING}
    for task_id, record in state.tasks.items():
        if record.state is TaskState.PENDING:
            assert any(state.tasks[d].state in blocking for d in record.spec.depends_on), task_id
    # A task is DONE only after an attempt succeeded.
    for task_id, record in state.tasks.items():
        if record.state is TaskState.DONE:
            assert state.attempts[record.attempts[-1]].outcome == "succeeded", task_id
