"""Capacity in the scheduler: reservations per pass, deferral until a reset, routing with
its reasons, limit hits turned into journaled corrections, warnings once, snapshots."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.domain_driver import VIRTUAL_PROJECT as PROJECT
from tests.domain_driver import canonical, decide_and_apply, replay
from tests.domain_driver import virtual_task as task
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.plans import (
    ApiKeyLimits,
    ApiKeyPlan,
    FamilyPlan,
    SharedLimits,
    SubscriptionPlan,
)
from trafficcontrol.domain.capacity.tracker import CapacityConfig
from trafficcontrol.domain.capacity.windows import SESSION_S, Window, WindowKind, windows_for
from trafficcontrol.domain.decide import (
    CorrectLimit,
    DeferTask,
    Dispatch,
    SchedulerConfig,
    Warn,
    decide,
)
from trafficcontrol.domain.events import (
    AnyEvent,
    AttemptFinished,
    BacklogSubmitted,
    CapacityConfigured,
    RateLimitObserved,
    TurnUsageReported,
)
from trafficcontrol.domain.model import (
    AttemptId,
    Difficulty,
    LimitHit,
    Outcome,
    TaskId,
    TaskSpec,
    TaskState,
    Usage,
)
from trafficcontrol.domain.state import State, apply

SESSION_ALL = Window(kind=WindowKind.SESSION)
CONFIG = SchedulerConfig(max_agents=10)
T0 = 1_000_000.0


def plan_state(
    plan: SubscriptionPlan, *tasks: TaskSpec, journal: list[AnyEvent] | None = None
) -> State:
    events: list[AnyEvent] = [
        CapacityConfigured(at=T0, config=CapacityConfig(plan=plan)),
        BacklogSubmitted(at=T0, source="test", projects=[PROJECT], tasks=list(tasks)),
    ]
    state = State()
    for event in events:
        apply(state, event)
    if journal is not None:
        journal.extend(events)
    return state


def run_pass(state: State, now: float, journal: list[AnyEvent] | None = None) -> list[Any]:
    return decide_and_apply(state, now, CONFIG, journal)


def sonnet_units(state: State) -> float:
    """What one sonnet attempt of a small task is expected to cost (the reservation)."""
    return state.capacity.expected(ModelFamily.SONNET, _size(state)).high_units


def _size(state: State) -> Any:
    from trafficcontrol.domain.state import task_size

    return task_size(next(iter(state.tasks.values())).spec)


def finish(
    state: State, attempt_id: str, at: float, usage: Usage | None, **kw: Any
) -> AttemptFinished:
    event = AttemptFinished(
        at=at,
        attempt_id=AttemptId(attempt_id),
        outcome=kw.pop("outcome", Outcome.SUCCEEDED),
        usage=usage,
        **kw,
    )
    apply(state, event)
    return event


def test_one_pass_reserves_jointly_and_never_overshoots_the_budget() -> None:
    probe = plan_state(SubscriptionPlan())
    expected = probe.capacity.expected(
        ModelFamily.SONNET, _size(plan_state(SubscriptionPlan(), task("x")))
    ).high_units
    # Room for exactly three reservations under the budget (limit * 0.95).
    limit = expected * 3.5 / 0.95
    state = plan_state(
        SubscriptionPlan(all_models=SharedLimits(session_units=limit)),
        *[task(f"t{i}") for i in range(6)],
    )
    commands = run_pass(state, T0)
    dispatched = [c for c in commands if isinstance(c, Dispatch)]
    assert [c.task_id for c in dispatched] == ["t0", "t1", "t2"]
    assert all(c.expected_units == expected for c in dispatched)
    book = state.capacity.book
    assert book.reserved(SESSION_ALL) == 3 * expected
    assert book.reserved(SESSION_ALL) <= book.budget(SESSION_ALL)  # type: ignore[operator]
    # The refused three stay ready: the room frees when a holder ends, not at a reset.
    assert [state.tasks[TaskId(f"t{i}")].state for i in range(3, 6)] == [TaskState.READY] * 3
    assert not [c for c in commands if isinstance(c, DeferTask)]


def test_a_full_window_defers_work_until_its_reset_and_work_resumes_then() -> None:
    limit = 100_000.0
    state = plan_state(
        SubscriptionPlan(all_models=SharedLimits(session_units=limit)), task("a"), task("b")
    )
    # Usage reported by another attempt fills the session window (opened at T0).
    run_pass(state, T0)
    first = next(iter(state.running))
    apply(
        state,
        TurnUsageReported(
            at=T0, attempt_id=first, model="sonnet", usage=Usage(input_tokens=99_000)
        ),
    )
    commands = run_pass(state, T0 + 1)
    deferred = [c for c in commands if isinstance(c, DeferTask)]
    assert [c.task_id for c in deferred] == ["b"]
    assert deferred[0].until == T0 + SESSION_S
    record = state.tasks[TaskId("b")]
    assert record.state is TaskState.WAITING and record.retry_at == T0 + SESSION_S
    assert record.wait_reason is not None and record.wait_reason.startswith("capacity: ")
    assert "session/all window full" in record.wait_reason
    assert record.failures == 0
    finish(state, first, T0 + 2, None)
    # Nothing before the reset; at the reset the task wakes and runs without a human.
    assert decide(state, T0 + SESSION_S - 1, CONFIG).next_wakeup == T0 + SESSION_S
    run_pass(state, T0 + SESSION_S)
    commands = run_pass(state, T0 + SESSION_S)
    assert state.tasks[TaskId("b")].state is TaskState.RUNNING


def test_routing_follows_hints_size_and_escalates_after_a_failure() -> None:
    state = plan_state(
        SubscriptionPlan(),
        task("triv", difficulty=Difficulty.TRIVIAL),
        task("hard", difficulty=Difficulty.HARD),
        task("plain"),
        task("big", prompt="x" * 40_000),
        task("pinned", model="claude-opus-4-1"),
    )
    run_pass(state, T0)
    routes = {a.task_id: (a.model, a.route) for a in state.attempts.values()}
    assert routes[TaskId("triv")] == ("haiku", "hint trivial")
    assert routes[TaskId("hard")] == ("opus", "hint hard")
    assert routes[TaskId("plain")] == ("sonnet", "default (size s)")
    assert routes[TaskId("big")] == ("opus", "size xl")
    assert routes[TaskId("pinned")] == ("claude-opus-4-1", "pinned by task")
    finish(state, "triv#1", T0 + 1, Usage(input_tokens=10), outcome=Outcome.FAILED)
    run_pass(state, T0 + 100)
    run_pass(state, T0 + 100)
    second = state.attempts[AttemptId("triv#2")]
    assert second.model == "sonnet"
    assert second.route == "hint trivial; escalated to sonnet after 1 failed attempt(s)"


def test_opus_at_its_concurrency_cap_shifts_size_routed_work_down_but_hard_work_waits() -> None:
    plan = SubscriptionPlan(families={ModelFamily.OPUS: FamilyPlan(max_concurrent=1)})
    state = plan_state(
        plan,
        task("big1", prompt="x" * 40_000),
        task("big2", prompt="y" * 40_000),
        task("hard", difficulty=Difficulty.HARD),
    )
    run_pass(state, T0)
    models = {a.task_id: a.model for a in state.attempts.values()}
    assert models == {"big1": "opus", "big2": "sonnet"}
    assert state.attempts[AttemptId("big2#1")].route == (
        "size xl; opus at its concurrency cap -> sonnet"
    )
    assert state.tasks[TaskId("hard")].state is TaskState.READY  # waits for opus


def test_scarce_opus_shifts_size_routed_work_to_sonnet() -> None:
    plan = SubscriptionPlan(families={ModelFamily.OPUS: FamilyPlan(session_units=50_000_000)})
    state = plan_state(
        plan, task("seed", difficulty=Difficulty.HARD), task("big", prompt="x" * 40_000)
    )
    run_pass(state, T0)  # both: opus ("hint hard", "size xl"), nothing used yet
    assert {a.model for a in state.attempts.values()} == {"opus"}
    # 60% of opus's window used in its first 10% of time: it burns too fast.
    apply(
        state,
        TurnUsageReported(
            at=T0 + 1,
            attempt_id=AttemptId("seed#1"),
            model="opus",
            usage=Usage(input_tokens=6_000_000),
        ),
    )
    finish(state, "big#1", T0 + 2, None, outcome=Outcome.INTERRUPTED, error="test")
    run_pass(state, T0 + 0.1 * SESSION_S)
    again = state.attempts[AttemptId("big#2")]
    assert again.model == "sonnet"
    assert again.route.endswith("opus scarce for the time left in its window -> sonnet")


def test_a_limit_hit_waits_for_the_reset_and_journals_a_correction_with_evidence() -> None:
    journal: list[AnyEvent] = []
    limit = 1_000_000.0
    state = plan_state(
        SubscriptionPlan(all_models=SharedLimits(session_units=limit)), task("a"), journal=journal
    )
    run_pass(state, T0, journal)
    usage = TurnUsageReported(
        at=T0 + 5, attempt_id=AttemptId("a#1"), model="sonnet", usage=Usage(input_tokens=600_000)
    )
    apply(state, usage)
    journal.append(usage)
    hit = LimitHit(
        window="five_hour", resets_at=T0 + 3600, status=429, message="usage limit reached"
    )
    journal.append(
        finish(state, "a#1", T0 + 6, None, outcome=Outcome.FAILED, error="429", limit_hit=hit)
    )
    record = state.tasks[TaskId("a")]
    assert record.state is TaskState.WAITING and record.retry_at == T0 + 3600
    assert record.failures == 0
    assert record.wait_reason == "capacity: provider limit reached (five_hour)"
    commands = run_pass(state, T0 + 7, journal)
    corrections = [c.correction for c in commands if isinstance(c, CorrectLimit)]
    assert len(corrections) == 1
    correction = corrections[0]
    assert correction.window == SESSION_ALL and correction.used_at_hit == 600_000
    assert correction.previous == limit and correction.effective == 600_000
    assert state.capacity.book.limits.effective(SESSION_ALL) == 600_000
    assert not [c for c in run_pass(state, T0 + 8, journal) if isinstance(c, CorrectLimit)]
    # Replay from the journal arrives at the same capacity state.
    assert canonical(replay(journal)) == canonical(state)


def test_threshold_warnings_fire_once_per_window() -> None:
    state = plan_state(
        SubscriptionPlan(all_models=SharedLimits(session_units=1_000_000)), task("a")
    )
    run_pass(state, T0)
    apply(
        state,
        TurnUsageReported(
            at=T0, attempt_id=AttemptId("a#1"), model="sonnet", usage=Usage(input_tokens=720_000)
        ),
    )
    warnings = [c.warning for c in run_pass(state, T0 + 1) if isinstance(c, Warn)]
    thresholds = [w.threshold for w in warnings if w.window == SESSION_ALL and w.threshold]
    assert thresholds == [0.7]
    assert "session/all at 72% (estimated): crossed 70%" in warnings[0].text
    assert not [c for c in run_pass(state, T0 + 2) if isinstance(c, Warn) and c.warning.threshold]


def test_reported_figures_override_estimates() -> None:
    state = plan_state(
        SubscriptionPlan(all_models=SharedLimits(session_units=1_000_000)), task("a")
    )
    run_pass(state, T0)
    apply(
        state,
        TurnUsageReported(
            at=T0, attempt_id=AttemptId("a#1"), model="sonnet", usage=Usage(input_tokens=100_000)
        ),
    )
    apply(
        state,
        RateLimitObserved(
            at=T0 + 10,
            attempt_id=AttemptId("a#1"),
            window="five_hour",
            status="allowed",
            utilization=0.4,
            resets_at=T0 + SESSION_S,
        ),
    )
    figure = state.capacity.figure(SESSION_ALL, T0 + 20)
    assert figure.used_units == 400_000 and figure.source.value == "reported"


def test_unknown_usage_is_recorded_as_unknown_never_zero() -> None:
    state = plan_state(
        SubscriptionPlan(all_models=SharedLimits(session_units=1_000_000)), task("a")
    )
    run_pass(state, T0)
    state.attempts[AttemptId("a#1")].session_id = "s-1"
    finish(state, "a#1", T0 + 5, None)
    figure = state.capacity.figure(SESSION_ALL, T0 + 6)
    assert figure.unknown_entries == 1 and figure.used_units == 0


def test_the_result_adds_only_what_the_streamed_turns_did_not_report() -> None:
    state = plan_state(
        SubscriptionPlan(all_models=SharedLimits(session_units=10_000_000)), task("a")
    )
    run_pass(state, T0)
    turn = Usage(input_tokens=1000, output_tokens=10, cache_read_tokens=500)
    apply(
        state, TurnUsageReported(at=T0 + 1, attempt_id=AttemptId("a#1"), model="sonnet", usage=turn)
    )
    final = Usage(input_tokens=1000, output_tokens=300, cache_read_tokens=500)
    finish(state, "a#1", T0 + 2, final)
    plan = state.capacity.config.plan
    assert state.capacity.figure(SESSION_ALL, T0 + 3).used_units == plan.units(
        ModelFamily.SONNET, final
    )


def test_snapshot_carries_the_capacity_state() -> None:
    journal: list[AnyEvent] = []
    state = plan_state(
        SubscriptionPlan(all_models=SharedLimits(session_units=1_000_000)),
        task("a"),
        task("b"),
        journal=journal,
    )
    run_pass(state, T0, journal)
    apply(
        state,
        TurnUsageReported(
            at=T0, attempt_id=AttemptId("a#1"), model="sonnet", usage=Usage(input_tokens=720_000)
        ),
    )
    run_pass(state, T0 + 1, journal)
    restored = snapshot.restore(snapshot.decode(snapshot.encode(state)))
    assert canonical(restored) == canonical(state)
    assert decide(restored, T0 + 2, CONFIG) == decide(state, T0 + 2, CONFIG)


operations = st.lists(
    st.tuples(
        st.sampled_from(["pass", "finish", "signal", "turn"]),
        st.integers(min_value=0, max_value=9),
        st.floats(min_value=0.0, max_value=1.0),
        st.integers(min_value=1, max_value=600),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_dispatch_never_lets_projected_usage_pass_a_limit(
    ops: list[tuple[str, int, float, int]],
) -> None:
    """Whatever the order of dispatches, usage, provider reports and ends: as long as
    attempts use no more than they reserved, used + reserved stays within every budget."""
    plan = SubscriptionPlan(
        all_models=SharedLimits(session_units=3_000_000, weekly_units=8_000_000),
        families={ModelFamily.OPUS: FamilyPlan(weekly_units=2_000_000, max_concurrent=2)},
    )
    tasks = [
        task(f"t{i}", difficulty=[None, Difficulty.HARD, Difficulty.TRIVIAL][i % 3])
        for i in range(12)
    ]
    state = plan_state(plan, *tasks)
    now = T0
    for kind, index, fraction, step in ops:
        now += step * 10
        running = sorted(state.running)
        if kind == "pass":
            run_pass(state, now)
        elif kind in ("finish", "turn") and running:
            attempt = state.attempts[running[index % len(running)]]
            held = state.capacity.book.reservation(attempt.id)
            used = state.capacity.running_units(attempt.id) or 0.0
            room = max((held.expected_units if held else 0.0) - used, 0.0)
            family = held.family if held else ModelFamily.SONNET
            weight = plan.weights(family).family_factor
            usage = Usage(input_tokens=int(room * fraction / weight))
            if kind == "turn":
                apply(
                    state,
                    TurnUsageReported(
                        at=now, attempt_id=attempt.id, model=attempt.model, usage=usage
                    ),
                )
            else:
                finish(state, attempt.id, now, (attempt.turn_usage or Usage()) + usage)
        elif kind == "signal":
            apply(
                state,
                RateLimitObserved(
                    at=now,
                    attempt_id=AttemptId("x"),
                    window="seven_day",
                    status="allowed",
                    utilization=fraction * 0.5,
                    resets_at=None,
                ),
            )
        book = state.capacity.book
        for family in ModelFamily:
            for window in windows_for(family):
                budget = book.budget(window)
                if budget is None:
                    continue
                used = book.used(window, now)
                if used <= budget:  # a provider report may say more is used than we metered
                    assert used + book.reserved(window) <= budget + 1e-6, (window.label, used)
    assert msgspec.to_builtins(state.capacity.snapshot())  # encodes


def test_an_api_key_per_minute_limit_defers_new_work_until_the_minute_rolls_on() -> None:
    limits = ApiKeyLimits(requests_per_minute=4, output_tokens_per_minute=10_000)
    config = CapacityConfig(api_key=ApiKeyPlan(families={ModelFamily.OPUS: limits}))
    state = State()
    apply(state, CapacityConfigured(at=T0, config=config))
    hard = [task(f"h{i}", difficulty=Difficulty.HARD) for i in range(2)]
    apply(state, BacklogSubmitted(at=T0, source="test", projects=[PROJECT], tasks=hard))
    assert state.capacity.limited
    run_pass(state, T0)
    assert sorted(state.running) == ["h0#1", "h1#1"]  # the minute is empty: both start
    for n in range(4):  # four opus requests in the minute (95% of 4 = 3.8 allowed)
        apply(
            state,
            TurnUsageReported(
                at=T0 + 10 + n,
                attempt_id=AttemptId("h0#1"),
                model="opus",
                usage=Usage(input_tokens=100, output_tokens=10),
            ),
        )
    finish(state, "h1#1", T0 + 20, Usage(input_tokens=1), outcome=Outcome.INTERRUPTED)
    commands = run_pass(state, T0 + 21)
    deferred = [c for c in commands if isinstance(c, DeferTask)]
    assert [(c.task_id, c.until) for c in deferred] == [("h1", T0 + 10 + 60)]
    assert deferred[0].reason == "capacity: opus at its per-minute API limit"
    # At T0 + 70 the minute still holds 4 requests (T0 + 11 .. T0 + 20): it waits on.
    run_pass(state, T0 + 70)
    again = [c for c in run_pass(state, T0 + 70) if isinstance(c, DeferTask)]
    assert [(c.task_id, c.until) for c in again] == [("h1", T0 + 11 + 60)]
    # Once the minute is clear, the task wakes and runs.
    run_pass(state, T0 + 81)
    run_pass(state, T0 + 81)
    assert state.tasks[TaskId("h1")].state is TaskState.RUNNING
