"""Failure classification, retry schedules and circuit breakers in the fold and decide."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tests.domain_driver import VIRTUAL_PROJECT as PROJECT
from tests.domain_driver import canonical, decide_and_apply, replay
from tests.domain_driver import virtual_task as task
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.breakers import BreakerPolicy, BreakerState
from trafficcontrol.domain.decide import ChangeBreaker, SchedulerConfig, decide
from trafficcontrol.domain.events import (
    AnyEvent,
    AttemptFinished,
    BacklogSubmitted,
    BreakerChanged,
    TurnUsageReported,
)
from trafficcontrol.domain.failures import FailureClass, FailureRule, classify
from trafficcontrol.domain.model import (
    AttemptId,
    Difficulty,
    FailureEvidence,
    Outcome,
    TaskId,
    TaskSpec,
    TaskState,
    Usage,
)
from trafficcontrol.domain.retries import full_jitter_delay
from trafficcontrol.domain.state import State, apply
from trafficcontrol.runtime.pool import classified
from trafficcontrol.runtime.prompts import with_feedback

CONFIG = SchedulerConfig(max_agents=10)


@pytest.mark.parametrize(
    ("evidence", "expected", "rule"),
    [
        (FailureEvidence(http_status=429, retry_after_s=30), FailureClass.LIMIT, "provider limit"),
        (FailureEvidence(http_status=529), FailureClass.TRANSIENT, "overloaded"),
        (FailureEvidence(error_type="overloaded_error"), FailureClass.TRANSIENT, "overloaded"),
        (FailureEvidence(http_status=500), FailureClass.TRANSIENT, "server error"),
        (FailureEvidence(http_status=401), FailureClass.PERMANENT, "auth"),
        (FailureEvidence(http_status=400), FailureClass.PERMANENT, "invalid request"),
        (
            FailureEvidence(http_status=503, should_retry=False),
            FailureClass.PERMANENT,
            "provider says do not retry",
        ),
        (FailureEvidence(exception="APIConnectionError"), FailureClass.TRANSIENT, "network"),
        (FailureEvidence(exception="RemoteProtocolError"), FailureClass.TRANSIENT, "network"),
        (FailureEvidence(idle_s=600), FailureClass.TRANSIENT, "hung"),
        (
            FailureEvidence(exception="JSONDecodeError"),
            FailureClass.TRANSIENT,
            "malformed response",
        ),
        (FailureEvidence(exception="StoreError"), FailureClass.INFRASTRUCTURE, "store"),
        (FailureEvidence(exception="ConfigError"), FailureClass.PERMANENT, "bad config"),
        (FailureEvidence(exit_code=1), FailureClass.TASK, "agent reported failure"),
        (FailureEvidence(exit_code=-9), FailureClass.TRANSIENT, "agent killed by a signal"),
        (FailureEvidence(exception="WeirdNewError"), FailureClass.TRANSIENT, "unknown"),
        (None, FailureClass.TASK, "no evidence"),
    ],
)
def test_the_failure_table(
    evidence: FailureEvidence | None, expected: FailureClass, rule: str
) -> None:
    verdict = classify(evidence)
    assert (verdict.failure_class, verdict.rule) == (expected, rule)
    assert verdict.unknown is (rule == "unknown")


def test_user_rules_come_first_and_are_validated() -> None:
    rule = msgspec.convert(
        {"name": "flaky tests", "class": "transient", "pattern": "flaky|timed out"}, FailureRule
    )
    evidence = FailureEvidence(exit_code=1, message="tests timed out on CI")
    assert classify(evidence).failure_class is FailureClass.TASK
    assert classify(evidence, (rule,)).failure_class is FailureClass.TRANSIENT
    with pytest.raises(msgspec.ValidationError, match="bad pattern"):
        msgspec.convert({"name": "x", "class": "task", "pattern": "("}, FailureRule)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"name": "x", "class": "sometimes"}, FailureRule)


def test_full_jitter_stays_within_its_ceiling_and_honours_retry_after() -> None:
    delays = [full_jitter_delay(5.0, n, 600.0, f"t:{n}") for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        assert 0.0 <= delay <= min(600.0, 5.0 * 2 ** (n - 1))
    assert len(set(delays)) == len(delays)  # jittered, not in step
    assert full_jitter_delay(5.0, 1, 600.0, "t:1", retry_after_s=42.0) == 42.0
    assert full_jitter_delay(5.0, 1, 600.0, "t:1") == full_jitter_delay(5.0, 1, 600.0, "t:1")


def start(*tasks: TaskSpec) -> tuple[State, list[AnyEvent]]:
    state = State()
    journal: list[AnyEvent] = [
        BacklogSubmitted(at=0.0, source="test", projects=[PROJECT], tasks=list(tasks))
    ]
    apply(state, journal[0])
    return state, journal


def step(state: State, journal: list[AnyEvent], now: float) -> list[Any]:
    return decide_and_apply(state, now, CONFIG, journal)


def fail(
    state: State, journal: list[AnyEvent], attempt: str, at: float, evidence: FailureEvidence
) -> None:
    event = classified(
        AttemptFinished(
            at=at,
            attempt_id=AttemptId(attempt),
            outcome=Outcome.FAILED,
            failure=evidence,
            error=f"failed: {evidence.http_status or evidence.exception or evidence.exit_code}",
        )
    )
    apply(state, event)
    journal.append(event)


def test_transient_failures_back_off_with_jitter_and_survive_a_restart() -> None:
    state, journal = start(task("a"))
    step(state, journal, 0.0)
    fail(state, journal, "a#1", 10.0, FailureEvidence(http_status=529))
    record = state.tasks[TaskId("a")]
    assert record.state is TaskState.WAITING and record.failures == 0
    assert record.transient_failures == 1
    assert record.wait_reason == "transient (overloaded): retry 1/8"
    assert 10.0 <= record.retry_at <= 15.0  # type: ignore[operator]
    # A restart (replay, or a snapshot) keeps the schedule instead of retrying at once.
    assert replay(journal).tasks[TaskId("a")].retry_at == record.retry_at
    restored = snapshot.restore(snapshot.decode(snapshot.encode(state)))
    assert canonical(restored) == canonical(state)
    # retry-after is honoured.
    wake = record.retry_at
    assert wake is not None
    step(state, journal, wake)
    step(state, journal, wake)
    fail(state, journal, "a#2", 100.0, FailureEvidence(http_status=500, retry_after_s=120))
    assert record.retry_at == 220.0


def test_transient_retries_stop_at_the_attempt_budget() -> None:
    state, journal = start(task("a"))
    now = 0.0
    for n in range(1, 10):
        step(state, journal, now)
        step(state, journal, now)
        fail(state, journal, f"a#{n}", now + 1, FailureEvidence(exception="APIConnectionError"))
        record = state.tasks[TaskId("a")]
        if record.state is TaskState.FAILED:
            break
        now = record.retry_at  # type: ignore[assignment]
    assert n == 9 and record.state is TaskState.FAILED
    assert record.last_error is not None and record.last_error.startswith(
        "gave up after 9 transient failures (network)"
    )


def test_unknown_errors_get_a_small_budget_and_permanent_ones_none() -> None:
    state, journal = start(task("u"), task("p"))
    step(state, journal, 0.0)
    fail(state, journal, "p#1", 1.0, FailureEvidence(http_status=401))
    assert state.tasks[TaskId("p")].state is TaskState.FAILED
    assert state.tasks[TaskId("p")].last_error == "permanent (auth): failed: 401"
    now = 1.0
    for n in range(1, 6):
        fail(state, journal, f"u#{n}", now, FailureEvidence(exception="WeirdError"))
        if state.tasks[TaskId("u")].state is TaskState.FAILED:
            break
        now = state.tasks[TaskId("u")].retry_at  # type: ignore[assignment]
        step(state, journal, now)
        step(state, journal, now)
    assert n == 4  # 3 unknown failures are retried, the 4th fails the task


def test_a_task_failure_is_fed_back_into_the_next_prompt() -> None:
    state, journal = start(task("a", retry_backoff_s=1.0))
    step(state, journal, 0.0)
    fail(state, journal, "a#1", 1.0, FailureEvidence(exit_code=1, message="2 tests failed"))
    assert state.tasks[TaskId("a")].failures == 1
    step(state, journal, 2.0)
    step(state, journal, 2.0)
    prompt = with_feedback(state, TaskId("a"))
    assert prompt.startswith("do it\n\nA previous attempt at this task (attempt 1) failed")
    assert "failed: 1" in prompt


def breaker_events(journal: list[AnyEvent]) -> list[tuple[str, BreakerState]]:
    return [(e.key, e.state) for e in journal if isinstance(e, BreakerChanged)]


def opus_running(state: State) -> list[str]:
    return sorted(a.id for a in state.running.values() if a.model == "opus")


def test_an_open_breaker_shifts_work_down_and_admits_one_probe_per_interval() -> None:
    hard = [task(f"h{i}", difficulty=Difficulty.HARD, retry_backoff_s=1.0) for i in range(3)]
    big = [task(f"b{i}", prompt="x" * 40_000, retry_backoff_s=1.0) for i in range(2)]
    state, journal = start(*hard, *big)
    step(state, journal, 0.0)
    assert len(opus_running(state)) == 5
    policy = BreakerPolicy()
    # An outage: every opus call fails. Five failures, then all retry and fail again.
    for attempt_id in opus_running(state):
        fail(state, journal, attempt_id, 1.0, FailureEvidence(http_status=529))
    assert not step(state, journal, 1.0)  # 5 in a row: not yet
    step(state, journal, 10.0)
    step(state, journal, 10.0)
    assert len(opus_running(state)) == 5
    first, *rest = opus_running(state)
    fail(state, journal, first, 11.0, FailureEvidence(http_status=529))
    opened = step(state, journal, 11.0)
    assert [(c.key, c.state) for c in opened if isinstance(c, ChangeBreaker)] == [
        ("sim/opus", BreakerState.OPEN)
    ]
    assert state.resilience.breakers["sim/opus"].reason == "6 failures in a row"
    for attempt_id in rest:
        fail(state, journal, attempt_id, 12.0, FailureEvidence(http_status=529))
    # While open: size-routed work moves to sonnet, hard work waits; no opus call at all.
    step(state, journal, 20.0)
    step(state, journal, 20.0)
    assert opus_running(state) == []
    shifted = [a for a in state.running.values() if a.model == "sonnet"]
    assert sorted(a.task_id for a in shifted) == ["b0", "b1"]
    assert {a.route for a in shifted} == {
        "size xl; opus breaker open (6 failures in a row) -> sonnet"
    }
    hard_states = {state.tasks[TaskId(f"h{i}")].state for i in range(3)}
    assert hard_states == {TaskState.READY}
    assert decide(state, 20.0, CONFIG).next_wakeup == 11.0 + policy.probe_interval_s
    # The probe interval passes: half-open, and exactly one probe though 3 tasks wait.
    probe_at = 11.0 + policy.probe_interval_s
    step(state, journal, probe_at)
    step(state, journal, probe_at)
    assert breaker_events(journal)[-1] == ("sim/opus", BreakerState.HALF_OPEN)
    assert len(opus_running(state)) == 1
    step(state, journal, probe_at + 1)
    assert len(opus_running(state)) == 1  # still one: the probe has not answered yet
    # The provider answers the probe: closed, and opus work flows again.
    event = TurnUsageReported(
        at=probe_at + 2,
        attempt_id=AttemptId(opus_running(state)[0]),
        model="opus",
        usage=Usage(input_tokens=10),
    )
    apply(state, event)
    journal.append(event)
    step(state, journal, probe_at + 2)
    step(state, journal, probe_at + 2)
    assert breaker_events(journal)[-1] == ("sim/opus", BreakerState.CLOSED)
    assert len(opus_running(state)) == 3
    incident = state.resilience.incidents[-1]
    assert (incident.opened_at, incident.closed_at) == (11.0, probe_at + 2)
    assert canonical(replay(journal)) == canonical(state)


def test_a_failed_probe_reopens_the_breaker_for_another_interval() -> None:
    state, journal = start(*[task(f"h{i}", difficulty=Difficulty.HARD) for i in range(6)])
    step(state, journal, 0.0)
    for attempt_id in opus_running(state):
        fail(state, journal, attempt_id, 1.0, FailureEvidence(http_status=529))
    step(state, journal, 1.0)
    interval = BreakerPolicy().probe_interval_s
    step(state, journal, 1.0 + interval)
    step(state, journal, 1.0 + interval)
    (probe,) = opus_running(state)
    fail(state, journal, probe, 2.0 + interval, FailureEvidence(http_status=529))
    step(state, journal, 2.0 + interval)
    assert [s for _k, s in breaker_events(journal)] == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
    ]
    assert decide(state, 3.0 + interval, CONFIG).next_wakeup == 2.0 + 2 * interval
