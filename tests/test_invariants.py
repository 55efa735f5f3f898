"""Each invariant of ``domain.invariants`` catches a hand-built journal that breaks it,
and sound journals (hand-built, and random runs of the domain driver) pass."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings

from tests.domain_driver import drive
from tests.test_domain_properties import Backlog, backlogs, seeds
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.decide import Decision, SchedulerConfig, decide
from trafficcontrol.domain.events import (
    AnyEvent,
    AttemptDispatched,
    AttemptFinished,
    AttemptStopRequested,
    BacklogSubmitted,
    OrchestratorStarted,
    OrchestratorStopped,
    RolledBack,
    TaskWoken,
)
from trafficcontrol.domain.invariants import InvariantChecker, check_no_deadlock, verify_journal
from trafficcontrol.domain.model import (
    AttemptId,
    Outcome,
    ProjectId,
    ProjectSpec,
    StopReason,
    TaskId,
    TaskSpec,
)
from trafficcontrol.domain.state import State, fold

CONFIG = SchedulerConfig(max_agents=4)


def project(pid: str = "p", **kw: Any) -> ProjectSpec:
    return ProjectSpec(id=ProjectId(pid), path=f"/virtual/{pid}", is_git=True, **kw)


def task(tid: str, *deps: str, pid: str = "p", **kw: Any) -> TaskSpec:
    return TaskSpec(
        id=TaskId(tid),
        project=ProjectId(pid),
        title=tid,
        prompt="do it",
        depends_on=tuple(TaskId(d) for d in deps),
        **kw,
    )


def submitted(*tasks: TaskSpec, projects: list[ProjectSpec] | None = None) -> BacklogSubmitted:
    return BacklogSubmitted(
        at=0.0, source="test", projects=projects or [project()], tasks=list(tasks)
    )


def dispatch(
    attempt: str, at: float = 1.0, *, resources: tuple[str, ...] = (), **kw: Any
) -> AttemptDispatched:
    task_id, _, no = attempt.partition("#")
    return AttemptDispatched(
        at=at,
        attempt_id=AttemptId(attempt),
        task_id=TaskId(task_id),
        attempt_no=int(no),
        backend="sim",
        model=kw.pop("model", None),
        resources=resources,
        deadline=None,
        log_path=f"/virtual/logs/{attempt}.log",
        **kw,
    )


def finish(attempt: str, outcome: Outcome = Outcome.SUCCEEDED, at: float = 2.0) -> AttemptFinished:
    return AttemptFinished(at=at, attempt_id=AttemptId(attempt), outcome=outcome)


def started(at: float = 0.0) -> OrchestratorStarted:
    return OrchestratorStarted(at=at, instance="test", pid=1, previous_clean=True)


def stopped(at: float = 9.0) -> OrchestratorStopped:
    return OrchestratorStopped(at=at, instance="test")


def only(violations: list[str], *needles: str) -> None:
    """Exactly one violation, naming every needle."""
    assert len(violations) == 1, violations
    for needle in needles:
        assert needle in violations[0], (needle, violations)


# -- sound journals pass ------------------------------------------------------------------
def test_a_clean_run_passes() -> None:
    events: list[AnyEvent] = [
        submitted(
            task("a"),
            task("b", "a", resources=("db",)),
            task("c", resources=("db",)),
            projects=[project(max_attempts=5)],
        ),
        started(),
        dispatch("a#1", resources=()),
        dispatch("c#1", resources=("db",)),
        finish("a#1", Outcome.FAILED),
        finish("c#1"),
        TaskWoken(at=7.0, task_id=TaskId("a")),
        dispatch("a#2", 7.0),
        AttemptStopRequested(at=7.5, attempt_id=AttemptId("a#2"), reason=StopReason.TIMEOUT),
        finish("a#2", Outcome.TIMED_OUT, 8.0),
        TaskWoken(at=18.0, task_id=TaskId("a")),
        dispatch("a#3", 18.0),
        finish("a#3", Outcome.INTERRUPTED, 19.0),
        started(19.5),
        dispatch("a#4", 20.0),
        finish("a#4", at=21.0),
        dispatch("b#1", 21.0, resources=("db",)),
        finish("b#1", at=22.0),
        stopped(23.0),
    ]
    assert verify_journal(events, CONFIG, settled=True) == []


def test_a_run_ending_behind_a_failed_dependency_is_settled() -> None:
    events: list[AnyEvent] = [
        submitted(task("a"), task("b", "a"), task("c", "b")),
        dispatch("a#1"),
        finish("a#1", Outcome.FAILED),
    ]
    assert verify_journal(events, CONFIG, settled=True) == []


@settings(max_examples=150, deadline=None)
@given(backlogs(), seeds)
def test_random_driver_runs_pass(backlog: Backlog, seed: int) -> None:
    run = drive(backlog.projects, backlog.tasks, backlog.config, random.Random(seed))
    assert verify_journal(run.events, backlog.config, settled=run.completed) == []


# -- no task lost -------------------------------------------------------------------------
def test_a_task_left_ready_at_the_end_is_lost() -> None:
    violations = verify_journal([submitted(task("a"), task("b"))], CONFIG, settled=True)
    assert len(violations) == 2
    assert "task a is lost: the run ended with it ready" in violations[0]


def test_a_task_missing_from_the_state_is_lost() -> None:
    checker = InvariantChecker(CONFIG)
    state = State()
    checker.observe(submitted(task("a"), task("b")), state)
    del state.tasks[TaskId("b")]  # what a buggy fold would do
    checker.observe(TaskWoken(at=1.0, task_id=TaskId("a")), state)
    assert any("tasks lost from the state: b" in v for v in checker.violations)


def test_a_running_task_without_an_open_attempt_is_caught() -> None:
    checker = InvariantChecker(CONFIG)
    state = State()
    checker.observe(submitted(task("a")), state)
    checker.observe(dispatch("a#1"), state)
    state.running.clear()  # the fold forgot the attempt
    checker.on_event(TaskWoken(at=1.0, task_id=TaskId("a")))
    checker.on_state(state)
    assert any("running attempts differ" in v for v in checker.violations)


# -- none done twice ------------------------------------------------------------------------
def test_a_second_success_is_caught() -> None:
    violations = verify_journal(
        [submitted(task("a")), dispatch("a#1"), finish("a#1"), dispatch("a#2"), finish("a#2")],
        CONFIG,
    )
    assert "at seq 4: task a was dispatched again (a#2) after attempt a#1 succeeded" in violations
    assert "at seq 5: task a was done twice: by a#1 and by a#2" in violations


def test_a_task_running_twice_is_caught() -> None:
    violations = verify_journal([submitted(task("a")), dispatch("a#1"), dispatch("a#2")], CONFIG)
    assert any("task a runs twice: a#1 and a#2" in v for v in violations)


# -- dependencies -----------------------------------------------------------------------
def test_a_dispatch_before_a_dependency_is_done_is_caught() -> None:
    violations = verify_journal([submitted(task("a"), task("b", "a")), dispatch("b#1")], CONFIG)
    assert (
        "at seq 2: task b was dispatched (b#1) before its dependency a was done" in (violations[0])
    )


# -- locks ----------------------------------------------------------------------------------
def test_an_exclusive_lock_held_twice_is_caught() -> None:
    violations = verify_journal(
        [
            submitted(task("a", resources=("db",)), task("b", resources=("db",))),
            dispatch("a#1", resources=("db",)),
            dispatch("b#1", resources=("db",)),
        ],
        CONFIG,
    )
    only(violations, "at seq 3", "lock 'db' is double-held: b#1", "a#1 holds it exclusively")


def test_shared_and_exclusive_holders_together_are_caught() -> None:
    violations = verify_journal(
        [
            submitted(task("a", resources=("db:shared",)), task("b", resources=("db",))),
            dispatch("a#1", resources=("db:shared",)),
            dispatch("b#1", resources=("db",)),
        ],
        CONFIG,
    )
    only(violations, "b#1 took it exclusively while a#1 share it")


def test_shared_holders_and_released_locks_are_fine() -> None:
    events: list[AnyEvent] = [
        submitted(*(task(t, resources=("db:shared",)) for t in "ab"), task("c", resources=("db",))),
        dispatch("a#1", resources=("db:shared",)),
        dispatch("b#1", resources=("db:shared",)),
        finish("a#1"),
        finish("b#1"),
        dispatch("c#1", resources=("db",)),
        finish("c#1"),
    ]
    assert verify_journal(events, CONFIG, settled=True) == []


def test_an_attempt_without_its_tasks_resources_is_caught() -> None:
    violations = verify_journal([submitted(task("a", resources=("db",))), dispatch("a#1")], CONFIG)
    only(violations, "attempt a#1 runs without its resources ['db']")


# -- limits -----------------------------------------------------------------------------------
def test_the_global_limit_is_enforced() -> None:
    events = [submitted(task("a"), task("b")), dispatch("a#1"), dispatch("b#1")]
    only(verify_journal(events, SchedulerConfig(max_agents=1)), "b#1 exceeds the global limit of 1")


def test_the_project_limit_is_enforced() -> None:
    events = [
        submitted(task("a"), task("b"), projects=[project(max_concurrent=1)]),
        dispatch("a#1"),
        dispatch("b#1"),
    ]
    only(verify_journal(events, CONFIG), "b#1 exceeds project p's limit of 1")
    default_limit = SchedulerConfig(max_agents=4, per_project=1)
    events[0] = submitted(task("a"), task("b"))
    only(verify_journal(events, default_limit), "project p's limit of 1")


def test_the_model_limit_is_enforced() -> None:
    events = [
        submitted(task("a", model="opus"), task("b", model="opus")),
        dispatch("a#1", model="opus"),
        dispatch("b#1", model="opus"),
    ]
    config = SchedulerConfig(max_agents=4, per_model={"opus": 1})
    only(verify_journal(events, config), "b#1 exceeds model opus's limit of 1")


# -- one outcome per attempt ---------------------------------------------------------------
def test_a_second_outcome_is_caught() -> None:
    events = [submitted(task("a")), dispatch("a#1"), finish("a#1", Outcome.FAILED), finish("a#1")]
    only(verify_journal(events, CONFIG), "at seq 4", "attempt a#1 has a second outcome")


def test_an_outcome_for_an_unknown_attempt_stops_the_check() -> None:
    violations = verify_journal([submitted(task("a")), finish("a#7")], CONFIG)
    assert violations == [
        "at seq 2: an outcome (succeeded) was journaled for unknown attempt a#7",
        "at seq 2: stopped checking here",
    ]


def test_attempts_left_open_are_caught() -> None:
    events: list[AnyEvent] = [submitted(task("a")), dispatch("a#1"), started(1.5)]
    only(verify_journal(events, CONFIG), "an orchestrator started with attempts", "a#1")
    events[-1] = stopped(1.5)
    only(verify_journal(events, CONFIG), "the orchestrator stopped with attempts", "a#1")
    # Mid-run (not settled) an open attempt is normal; at the end of a settled run not.
    assert verify_journal(events[:2], CONFIG) == []
    assert any(
        "the run ended with attempts" in v for v in verify_journal(events[:2], CONFIG, settled=True)
    )


def test_a_resume_must_continue_an_interrupted_attempt_of_the_task() -> None:
    base: list[AnyEvent] = [submitted(task("a"), task("b")), dispatch("a#1")]
    good = [*base, finish("a#1", Outcome.INTERRUPTED), dispatch("a#2", resume_of=AttemptId("a#1"))]
    assert verify_journal(good, CONFIG) == []
    bad = [*base, finish("a#1", Outcome.FAILED), dispatch("b#1", resume_of=AttemptId("a#1"))]
    only(verify_journal(bad, CONFIG), "b#1 resumes a#1, which is not an interrupted attempt")


def test_a_rollback_resets_the_shadow_and_must_not_drop_open_attempts() -> None:
    first = submitted(task("a"), task("b"))
    state = fold([first])
    data = snapshot.capture(state)
    events: list[AnyEvent] = [
        first,
        dispatch("a#1"),
        finish("a#1"),
        RolledBack(at=3.0, version=1, snapshot=data),
        dispatch("a#2", 4.0),  # a is ready again after the rollback: not done twice
        finish("a#2", at=5.0),
    ]
    assert verify_journal(events, CONFIG) == []
    dropping = [first, dispatch("a#1"), RolledBack(at=3.0, version=1, snapshot=data)]
    only(verify_journal(dropping, CONFIG), "the rollback dropped attempt a#1 without an outcome")


# -- no deadlock ---------------------------------------------------------------------------------
def test_no_deadlock_flags_a_decision_that_dispatches_nothing_runnable() -> None:
    state = fold([submitted(task("a", resources=("db",)), task("b", resources=("db",)))])
    empty = Decision(commands=[], next_wakeup=None)
    only(check_no_deadlock(state, empty, CONFIG), "task a is ready, its locks are free")
    assert check_no_deadlock(state, decide(state, 0.0, CONFIG), CONFIG) == []


def test_no_deadlock_accepts_tasks_blocked_by_locks_limits_or_a_full_pool() -> None:
    empty = Decision(commands=[], next_wakeup=None)
    locked = fold(
        [
            submitted(task("a", resources=("db",)), task("b", resources=("db:shared",))),
            dispatch("a#1", resources=("db",)),
        ]
    )
    assert check_no_deadlock(locked, empty, CONFIG) == []
    assert check_no_deadlock(locked, empty, SchedulerConfig(max_agents=1)) == []
    limited = fold(
        [
            submitted(task("a"), task("b"), projects=[project(max_concurrent=1)]),
            dispatch("a#1"),
        ]
    )
    assert check_no_deadlock(limited, empty, CONFIG) == []
    by_model = fold(
        [submitted(task("a", model="opus"), task("b", model="opus")), dispatch("a#1", model="opus")]
    )
    assert check_no_deadlock(by_model, empty, SchedulerConfig(per_model={"opus": 1})) == []
    assert check_no_deadlock(by_model, empty, CONFIG)  # without the limit, b could run
