"""Example-based tests of ``decide``: order, locks, limits, retries, timeouts, cancels."""

from __future__ import annotations

from typing import Any

import pytest

from tests.domain_driver import apply_decision
from trafficcontrol.domain.capacity.routing import RoutingPolicy
from trafficcontrol.domain.decide import (
    Decision,
    Dispatch,
    SchedulerConfig,
    StopAttempt,
    WakeTask,
    decide,
)
from trafficcontrol.domain.events import (
    AttemptFinished,
    AttemptStopRequested,
    BacklogSubmitted,
    TaskCancelRequested,
    TaskRetryRequested,
)
from trafficcontrol.domain.model import (
    AttemptId,
    Outcome,
    Priority,
    ProjectId,
    ProjectSpec,
    StopReason,
    TaskId,
    TaskSpec,
    TaskState,
)
from trafficcontrol.domain.state import State, apply

GIT = ProjectSpec(id=ProjectId("api"), path="/virtual/api", is_git=True, max_attempts=3)


def task(task_id: str, **fields: Any) -> TaskSpec:
    fields.setdefault("project", GIT.id)
    return TaskSpec(id=TaskId(task_id), title=task_id, prompt="do it", **fields)


def submitted(
    *tasks: TaskSpec, projects: tuple[ProjectSpec, ...] = (GIT,), at: float = 0.0
) -> State:
    state = State()
    apply(state, BacklogSubmitted(at=at, source="test", projects=list(projects), tasks=list(tasks)))
    return state


def submit(state: State, *tasks: TaskSpec, at: float) -> None:
    apply(state, BacklogSubmitted(at=at, source="test", projects=[], tasks=list(tasks)))


def dispatches(decision: Decision) -> list[Dispatch]:
    return [c for c in decision.commands if isinstance(c, Dispatch)]


def dispatched(decision: Decision) -> list[str]:
    return [c.task_id for c in dispatches(decision)]


def run_pass(state: State, now: float, config: SchedulerConfig) -> Decision:
    """One loop turn: decide, then journal and apply every command."""
    decision = decide(state, now, config)
    apply_decision(state, decision, now)
    return decision


def finish(state: State, attempt_id: str, outcome: Outcome, at: float) -> None:
    apply(state, AttemptFinished(at=at, attempt_id=AttemptId(attempt_id), outcome=outcome))


ONE = SchedulerConfig(max_agents=1)


# -- order -------------------------------------------------------------------------------
def test_priority_p0_goes_before_p3() -> None:
    state = submitted(task("low", priority=Priority.P3), task("urgent", priority=Priority.P0))
    assert dispatched(decide(state, 1.0, ONE)) == ["urgent"]
    config = SchedulerConfig(max_agents=4)
    assert dispatched(decide(state, 1.0, config)) == ["urgent", "low"]


def test_higher_score_goes_first_within_a_priority() -> None:
    state = submitted(
        task("p1-low", priority=Priority.P1, score=1.0),
        task("p2-high", priority=Priority.P2, score=9.0),
        task("p1-high", priority=Priority.P1, score=5.0),
    )
    config = SchedulerConfig(max_agents=3)
    assert dispatched(decide(state, 1.0, config)) == ["p1-high", "p1-low", "p2-high"]


def test_equal_tasks_go_in_the_order_they_became_ready() -> None:
    state = submitted(task("b"), task("a"), task("c"))
    submit(state, task("d"), at=5.0)
    assert dispatched(decide(state, 6.0, SchedulerConfig(max_agents=4))) == ["b", "a", "c", "d"]


def test_a_task_ready_too_long_goes_before_a_fresh_p0() -> None:
    config = SchedulerConfig(max_agents=1, starvation_after_s=100.0)
    state = submitted(task("old", priority=Priority.P3), at=0.0)
    submit(state, task("hot", priority=Priority.P0), at=40.0)
    before = decide(state, 50.0, config)
    assert dispatched(before) == ["hot"]
    assert before.next_wakeup == 100.0  # when "old" is promoted
    after = decide(state, 100.0, config)
    assert dispatched(after) == ["old"]
    assert after.next_wakeup is None


def test_promotion_time_is_reported_even_when_the_pool_is_full() -> None:
    config = SchedulerConfig(max_agents=1, starvation_after_s=100.0)
    state = submitted(task("running"), task("queued", priority=Priority.P3), at=10.0)
    run_pass(state, 10.0, config)
    decision = decide(state, 20.0, config)
    assert decision.commands == []
    assert decision.next_wakeup == 110.0


# -- locks -------------------------------------------------------------------------------
def test_shared_holders_coexist_and_an_exclusive_one_waits() -> None:
    state = submitted(
        task("reader1", resources=("db:shared",)),
        task("reader2", resources=("db:shared",)),
        task("writer", resources=("db",)),
    )
    config = SchedulerConfig(max_agents=5)
    assert dispatched(run_pass(state, 1.0, config)) == ["reader1", "reader2"]
    assert sorted(state.locks.shared["db"]) == ["reader1#1", "reader2#1"]
    finish(state, "reader1#1", Outcome.SUCCEEDED, 2.0)
    assert dispatched(decide(state, 2.0, config)) == []  # reader2 still holds it shared
    finish(state, "reader2#1", Outcome.SUCCEEDED, 3.0)
    assert dispatched(run_pass(state, 3.0, config)) == ["writer"]
    assert state.locks.exclusive == {"db": "writer#1"}


def test_an_exclusive_holder_keeps_shared_ones_out() -> None:
    state = submitted(task("writer", resources=("db",)), task("reader", resources=("db:shared",)))
    config = SchedulerConfig(max_agents=5)
    assert dispatched(run_pass(state, 1.0, config)) == ["writer"]
    assert dispatched(decide(state, 2.0, config)) == []
    finish(state, "writer#1", Outcome.FAILED, 3.0)  # locks go whatever the outcome
    assert dispatched(decide(state, 3.0, config)) == ["reader"]


def test_locks_are_all_or_nothing() -> None:
    state = submitted(
        task("holds-b", resources=("b",)),
        task("needs-a-and-b", resources=("a", "b")),
        task("needs-a", resources=("a",), priority=Priority.P3),
    )
    config = SchedulerConfig(max_agents=5)
    assert dispatched(run_pass(state, 1.0, config)) == ["holds-b", "needs-a"]
    assert state.locks.exclusive == {"b": "holds-b#1", "a": "needs-a#1"}
    assert state.tasks[TaskId("needs-a-and-b")].state is TaskState.READY


def test_a_task_needing_a_and_b_takes_neither_while_b_is_held() -> None:
    state = submitted(task("holds-b", resources=("b",)))
    config = SchedulerConfig(max_agents=5)
    run_pass(state, 1.0, config)
    submit(state, task("needs-a-and-b", resources=("a", "b")), at=2.0)
    assert dispatched(run_pass(state, 2.0, config)) == []
    assert "a" not in state.locks.exclusive
    submit(state, task("needs-a", resources=("a",)), at=3.0)
    assert dispatched(run_pass(state, 3.0, config)) == ["needs-a"]


def test_a_non_git_project_runs_its_tasks_one_at_a_time_and_a_git_one_does_not() -> None:
    plain = ProjectSpec(id=ProjectId("plain"), path="/virtual/plain", is_git=False)
    unlocked = ProjectSpec(
        id=ProjectId("free"), path="/virtual/free", is_git=False, lock_in_place=False
    )
    state = submitted(
        task("p1", project=plain.id),
        task("p2", project=plain.id),
        task("g1"),
        task("g2"),
        task("f1", project=unlocked.id),
        task("f2", project=unlocked.id),
        projects=(plain, GIT, unlocked),
    )
    decision = run_pass(state, 1.0, SchedulerConfig(max_agents=10))
    assert sorted(dispatched(decision)) == ["f1", "f2", "g1", "g2", "p1"]
    resources = {str(c.task_id): c.resources for c in dispatches(decision)}
    assert resources["p1"] == ("project:plain",)
    assert resources["g1"] == () and resources["f1"] == ()
    finish(state, "p1#1", Outcome.SUCCEEDED, 2.0)
    assert dispatched(decide(state, 2.0, SchedulerConfig(max_agents=10))) == ["p2"]


# -- limits ------------------------------------------------------------------------------
def test_project_limit_and_default_per_project_limit() -> None:
    capped = ProjectSpec(id=ProjectId("capped"), path="/virtual/c", is_git=True, max_concurrent=1)
    state = submitted(
        *(task(f"c{i}", project=capped.id) for i in range(3)),
        *(task(f"g{i}") for i in range(3)),
        projects=(capped, GIT),
    )
    decision = run_pass(state, 1.0, SchedulerConfig(max_agents=10, per_project=2))
    assert dispatched(decision) == ["c0", "g0", "g1"]
    assert dispatched(decide(state, 2.0, SchedulerConfig(max_agents=10, per_project=2))) == []
    # The project's own limit wins over the default.
    assert dispatched(decide(state, 2.0, SchedulerConfig(max_agents=10, per_project=5))) == ["g2"]


def test_per_model_limits_count_unset_models_as_default() -> None:
    """With routing off, an unpinned task runs on the backend's default model."""
    state = submitted(
        task("o1", model="opus"),
        task("o2", model="opus"),
        task("d1"),
        task("d2"),
        task("s1", model="sonnet"),
    )
    config = SchedulerConfig(
        max_agents=10,
        per_model={"opus": 1, "default": 1},
        routing=RoutingPolicy(enabled=False),
    )
    decision = run_pass(state, 1.0, config)
    assert dispatched(decision) == ["o1", "d1", "s1"]
    assert [c.model for c in dispatches(decision)] == [
        "opus",
        None,
        "sonnet",
    ]
    finish(state, "o1#1", Outcome.SUCCEEDED, 2.0)
    assert dispatched(decide(state, 2.0, config)) == ["o2"]


def test_project_model_is_the_default_for_its_tasks() -> None:
    opus_project = ProjectSpec(id=ProjectId("o"), path="/virtual/o", is_git=True, model="opus")
    state = submitted(
        task("a", project=opus_project.id),
        task("b", project=opus_project.id),
        task("c", project=opus_project.id, model="haiku"),
        projects=(opus_project,),
    )
    decision = decide(state, 1.0, SchedulerConfig(max_agents=10, per_model={"opus": 1}))
    assert [(c.task_id, c.model) for c in dispatches(decision)] == [
        ("a", "opus"),
        ("c", "haiku"),
    ]


def test_max_agents_caps_the_pool_and_a_full_pool_gets_nothing() -> None:
    state = submitted(*(task(f"t{i}") for i in range(5)))
    config = SchedulerConfig(max_agents=3)
    assert dispatched(run_pass(state, 1.0, config)) == ["t0", "t1", "t2"]
    assert len(state.running) == 3
    full = decide(state, 2.0, config)
    assert full.commands == []
    finish(state, "t1#1", Outcome.SUCCEEDED, 3.0)
    assert dispatched(decide(state, 3.0, config)) == ["t3"]


# -- retries -----------------------------------------------------------------------------
def test_failed_attempts_back_off_exponentially_then_fail_for_good() -> None:
    state = submitted(task("flaky", retry_backoff_s=5.0, max_attempts=3))
    record = state.tasks[TaskId("flaky")]
    assert [c.attempt_no for c in dispatches(run_pass(state, 0.0, ONE))] == [1]

    finish(state, "flaky#1", Outcome.FAILED, 10.0)
    assert (record.state, record.failures, record.retry_at) == (TaskState.WAITING, 1, 15.0)
    early = decide(state, 12.0, ONE)
    assert early.commands == [] and early.next_wakeup == 15.0
    assert run_pass(state, 15.0, ONE).commands == [WakeTask(TaskId("flaky"))]
    assert record.state is TaskState.READY
    assert [c.attempt_no for c in dispatches(run_pass(state, 15.0, ONE))] == [2]

    finish(state, "flaky#2", Outcome.FAILED, 20.0)
    assert (record.state, record.retry_at) == (TaskState.WAITING, 30.0)  # 20 + 5 * 2**1
    assert decide(state, 29.9, ONE).next_wakeup == 30.0
    run_pass(state, 30.0, ONE)
    run_pass(state, 30.0, ONE)
    finish(state, "flaky#3", Outcome.FAILED, 31.0)
    assert (record.state, record.failures) == (TaskState.FAILED, 3)
    assert decide(state, 1000.0, ONE).commands == []


def test_project_max_attempts_applies_when_the_task_sets_none() -> None:
    once = ProjectSpec(id=ProjectId("once"), path="/virtual/once", is_git=True)
    state = submitted(task("t", project=once.id), projects=(once,))
    run_pass(state, 0.0, ONE)
    finish(state, "t#1", Outcome.FAILED, 1.0)
    assert state.tasks[TaskId("t")].state is TaskState.FAILED


def test_an_interrupted_attempt_requeues_without_counting_a_failure() -> None:
    state = submitted(task("t", max_attempts=1))
    record = state.tasks[TaskId("t")]
    run_pass(state, 0.0, ONE)
    finish(state, "t#1", Outcome.INTERRUPTED, 1.0)
    assert (record.state, record.failures) == (TaskState.READY, 0)
    assert not state.running and not state.locks.holders()
    decision = run_pass(state, 1.0, ONE)
    assert [(c.attempt_id, c.attempt_no) for c in dispatches(decision)] == [("t#2", 2)]
    finish(state, "t#2", Outcome.FAILED, 2.0)  # the one allowed failure
    assert record.state is TaskState.FAILED


def test_retrying_a_failed_task_runs_it_again_and_then_its_dependents() -> None:
    state = submitted(task("base", max_attempts=1), task("child", depends_on=(TaskId("base"),)))
    run_pass(state, 0.0, ONE)
    finish(state, "base#1", Outcome.FAILED, 1.0)
    assert state.tasks[TaskId("base")].state is TaskState.FAILED
    assert state.tasks[TaskId("child")].state is TaskState.PENDING
    assert decide(state, 2.0, ONE).commands == []

    apply(state, TaskRetryRequested(at=3.0, task_id=TaskId("base")))
    assert state.tasks[TaskId("base")].failures == 0
    assert [c.attempt_id for c in dispatches(run_pass(state, 3.0, ONE))] == ["base#2"]
    finish(state, "base#2", Outcome.SUCCEEDED, 4.0)
    assert dispatched(run_pass(state, 4.0, ONE)) == ["child"]


# -- timeouts and cancels ------------------------------------------------------------------
def test_a_timeout_is_asked_for_once() -> None:
    state = submitted(task("slow", timeout_s=30.0, max_attempts=1))
    (command,) = run_pass(state, 0.0, ONE).commands
    assert isinstance(command, Dispatch) and command.deadline == 30.0
    early = decide(state, 29.0, ONE)
    assert early.commands == [] and early.next_wakeup == 30.0
    stop = StopAttempt(AttemptId("slow#1"), StopReason.TIMEOUT)
    assert run_pass(state, 30.0, ONE).commands == [stop]
    assert state.attempts[AttemptId("slow#1")].stop_reason is StopReason.TIMEOUT
    later = decide(state, 31.0, ONE)
    assert later.commands == [] and later.next_wakeup is None
    finish(state, "slow#1", Outcome.TIMED_OUT, 32.0)
    assert state.tasks[TaskId("slow")].state is TaskState.FAILED


def test_the_project_timeout_applies_when_the_task_sets_none() -> None:
    timed = ProjectSpec(id=ProjectId("t"), path="/virtual/t", is_git=True, timeout_s=60.0)
    state = submitted(task("a", project=timed.id), projects=(timed,))
    (command,) = decide(state, 5.0, ONE).commands
    assert isinstance(command, Dispatch) and command.deadline == 65.0


def test_cancelling_a_running_task_stops_it_and_it_ends_cancelled() -> None:
    state = submitted(task("t", resources=("db",)), task("next", resources=("db",)))
    config = SchedulerConfig(max_agents=2)
    run_pass(state, 0.0, config)
    apply(state, TaskCancelRequested(at=1.0, task_id=TaskId("t")))
    assert state.tasks[TaskId("t")].state is TaskState.RUNNING
    stop = StopAttempt(AttemptId("t#1"), StopReason.CANCELLED)
    assert decide(state, 1.0, config).commands == [stop]
    assert decide(state, 1.5, config).commands == [stop]  # until the stop is journaled
    apply(state, AttemptStopRequested(at=2.0, attempt_id=AttemptId("t#1"), reason=stop.reason))
    assert decide(state, 2.0, config).commands == []
    finish(state, "t#1", Outcome.FAILED, 3.0)  # however the agent ends, the task is cancelled
    record = state.tasks[TaskId("t")]
    assert (record.state, record.failures, record.last_error) == (
        TaskState.CANCELLED,
        0,
        "cancelled by user",
    )
    assert dispatched(decide(state, 3.0, config)) == ["next"]


def test_cancelling_a_ready_or_waiting_task_ends_it_at_once() -> None:
    state = submitted(task("ready"), task("waits", retry_backoff_s=10.0))
    config = SchedulerConfig(max_agents=1)
    apply(state, TaskCancelRequested(at=1.0, task_id=TaskId("ready")))
    assert state.tasks[TaskId("ready")].state is TaskState.CANCELLED
    assert dispatched(run_pass(state, 1.0, config)) == ["waits"]
    finish(state, "waits#1", Outcome.FAILED, 2.0)
    apply(state, TaskCancelRequested(at=3.0, task_id=TaskId("waits")))
    assert state.tasks[TaskId("waits")].state is TaskState.CANCELLED
    decision = decide(state, 100.0, config)
    assert decision.commands == [] and decision.next_wakeup is None


# -- cost ----------------------------------------------------------------------------------
def count_ready_reads(state: State, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = state.is_ready_entry

    def counting(order: int, task_id: TaskId) -> bool:
        calls[0] += 1
        return original(order, task_id)

    monkeypatch.setattr(state, "is_ready_entry", counting)
    return calls


@pytest.mark.parametrize("queued", [10, 2000])
def test_decide_reads_only_the_ready_entries_it_can_use(
    queued: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SchedulerConfig(max_agents=4)
    state = submitted(*(task(f"t{i:05}", score=float(i % 7)) for i in range(queued)))
    run_pass(state, 0.0, config)
    finish(state, "t00006#1", Outcome.SUCCEEDED, 1.0)
    run_pass(state, 1.0, config)
    assert len(state.running) == 4

    reads = count_ready_reads(state, monkeypatch)
    assert decide(state, 2.0, config).commands == []
    assert reads[0] == 0  # a full pool reads nothing

    for attempt_id in sorted(state.running)[:3]:
        finish(state, attempt_id, Outcome.SUCCEEDED, 3.0)
    reads[0] = 0
    assert len(dispatched(decide(state, 3.0, config))) == 3
    assert reads[0] == 3


def test_one_stop_per_attempt_when_cancelled_past_its_deadline() -> None:
    state = submitted(task("t", timeout_s=10.0))
    run_pass(state, 0.0, ONE)
    apply(state, TaskCancelRequested(at=20.0, task_id=TaskId("t")))
    stops = [c for c in decide(state, 20.0, ONE).commands if isinstance(c, StopAttempt)]
    assert [s.attempt_id for s in stops] == ["t#1"]
