"""Enforcement: reservations never overshoot a window; learned limits converge."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trafficcontrol.domain.capacity.enforce import CapacityBook, Refusal, RefusalReason, Reservation
from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.ledger import UsageLedger
from trafficcontrol.domain.capacity.limits import CorrectionReason, LearnedLimits, LearningPolicy
from trafficcontrol.domain.capacity.plans import (
    FamilyPlan,
    SharedLimits,
    SubscriptionPlan,
    UnitWeights,
)
from trafficcontrol.domain.capacity.signals import RateLimitSignal
from trafficcontrol.domain.capacity.windows import (
    ALL_WINDOWS,
    HOUR_S,
    SESSION_S,
    WeeklyReset,
    Window,
    WindowKind,
    weekly_window_bounds,
)
from trafficcontrol.domain.model import Usage

OPUS, SONNET, HAIKU = ModelFamily.OPUS, ModelFamily.SONNET, ModelFamily.HAIKU
SESSION_ALL = Window(kind=WindowKind.SESSION)
WEEKLY_ALL = Window(kind=WindowKind.WEEKLY)
SESSION_OPUS = Window(kind=WindowKind.SESSION, family=OPUS)
FLAT = UnitWeights(output=1.0, cache_read=1.0, cache_creation=1.0)
T0 = 1_750_000_000.0


def make_plan(**shared: float) -> SubscriptionPlan:
    return SubscriptionPlan(
        families={
            OPUS: FamilyPlan(
                session_units=5000, weekly_units=20_000, max_concurrent=2, weights=FLAT
            ),
            SONNET: FamilyPlan(session_units=8000, weights=FLAT),
            HAIKU: FamilyPlan(weights=FLAT),
        },
        all_models=SharedLimits(**shared),
        weekly_reset=WeeklyReset(weekday=0, hour=9, timezone="Europe/Berlin"),
        safety_margin=0.1,
    )


def use(ledger: UsageLedger, book: CapacityBook, attempt: str, units: int, at: float) -> None:
    reservation = book.reservation(attempt)
    assert reservation is not None
    ledger.record(
        at, reservation.family, Usage(input_tokens=units), reported=True, attempt_id=attempt
    )


def test_reserve_refuses_what_would_overshoot_and_says_when() -> None:
    plan = make_plan(session_units=1000)
    ledger = UsageLedger(plan)
    book = CapacityBook(plan, ledger)
    first = book.reserve("a1", SONNET, 500, T0)
    assert isinstance(first, Reservation)
    assert set(first.windows) == {SESSION_ALL, Window(kind=WindowKind.SESSION, family=SONNET)}
    second = book.reserve("a2", SONNET, 500, T0)  # 500 + 500 > 900 (10% margin)
    assert isinstance(second, Refusal)
    assert (second.reason, second.window, second.on_release) == (
        RefusalReason.RESERVED,
        SESSION_ALL,
        True,
    )
    assert second.available == 400
    # a1 runs and uses 450 of its 500, then ends.
    use(ledger, book, "a1", 450, T0 + 60)
    assert book.reconcile("a1", 450) == -50
    assert book.reserved(SESSION_ALL) == 50
    book.release("a1")
    assert book.reserved(SESSION_ALL) == 0
    full = book.reserve("a2", SONNET, 500, T0 + 120)
    assert isinstance(full, Refusal)
    assert (full.reason, full.possible_at, full.on_release) == (
        RefusalReason.WINDOW_FULL,
        T0 + 60 + SESSION_S,
        False,
    )
    too_large = book.reserve("a3", SONNET, 901, T0 + 120)
    assert isinstance(too_large, Refusal) and too_large.reason is RefusalReason.TOO_LARGE
    assert too_large.possible_at is None
    # After the session window resets the attempt fits.
    assert isinstance(book.reserve("a2", SONNET, 500, T0 + 60 + SESSION_S), Reservation)


def test_weekly_refusal_waits_for_the_weekly_reset() -> None:
    plan = make_plan()
    ledger = UsageLedger(plan)
    book = CapacityBook(plan, ledger)
    weekly_opus = Window(kind=WindowKind.WEEKLY, family=OPUS)
    now = weekly_window_bounds(T0, plan.weekly_reset)[1] + HOUR_S  # Monday 10:00 Berlin
    for i in range(4):  # 4 x 4000 opus units over four sessions: 16000 of the 18000 budget
        assert isinstance(book.reserve(f"w{i}", OPUS, 4000, now), Reservation)
        use(ledger, book, f"w{i}", 4000, now)
        book.release(f"w{i}")
        now += SESSION_S
    refusal = book.reserve("big", OPUS, 4000, now)
    assert isinstance(refusal, Refusal)
    assert refusal.window == weekly_opus and refusal.reason is RefusalReason.WINDOW_FULL
    assert refusal.possible_at == weekly_window_bounds(now, plan.weekly_reset)[1]


def test_concurrency_cap_per_family_and_idempotent_reserve() -> None:
    plan = make_plan()
    book = CapacityBook(plan, UsageLedger(plan))
    r1 = book.reserve("o1", OPUS, 10, T0)
    assert book.reserve("o1", OPUS, 10, T0) is r1  # same id: same reservation, counted once
    assert isinstance(book.reserve("o2", OPUS, 10, T0), Reservation)
    refusal = book.reserve("o3", OPUS, 10, T0)
    assert isinstance(refusal, Refusal)
    assert (refusal.reason, refusal.on_release, refusal.possible_at) == (
        RefusalReason.CONCURRENCY,
        True,
        None,
    )
    assert isinstance(book.reserve("s1", SONNET, 10, T0), Reservation)  # other families unaffected
    book.release("o1")
    assert isinstance(book.reserve("o3", OPUS, 10, T0), Reservation)
    assert book.active(OPUS) == 2
    assert book.release("nope") is None and book.reconcile("nope", 1) is None


def test_limit_hit_lowers_the_limit_with_evidence_and_probes_back_slowly() -> None:
    plan = make_plan(session_units=10_000)
    book = CapacityBook(plan, UsageLedger(plan))
    hit = book.observe_limit_hit(SESSION_ALL, used_at_hit=6000, now=T0)
    assert hit is not None
    assert (hit.reason, hit.previous, hit.effective, hit.configured, hit.used_at_hit) == (
        CorrectionReason.LIMIT_HIT,
        10_000,
        6000,
        10_000,
        6000,
    )
    assert book.budget(SESSION_ALL) == pytest.approx(5400)
    assert book.probe_up(SESSION_ALL, T0 + SESSION_S - 1) is None  # not a full window yet
    probe = book.probe_up(SESSION_ALL, T0 + SESSION_S)
    assert probe is not None and probe.effective == pytest.approx(6120)
    assert book.probe_up(SESSION_ALL, T0 + SESSION_S + 1) is None  # one step per window
    # While the hit is remembered probing stops 3% above it ...
    now = T0 + SESSION_S
    for _ in range(4):
        now += SESSION_S
        book.probe_up(SESSION_ALL, now)
    assert book.limits.effective(SESSION_ALL) == pytest.approx(6180)
    # ... then resumes, never above the configured limit.
    for _ in range(100):
        now += SESSION_S
        book.probe_up(SESSION_ALL, now)
    assert book.limits.effective(SESSION_ALL) == 10_000
    assert (
        book.observe_limit_hit(WEEKLY_ALL, 5, T0) is None
    )  # no configured limit: nothing to learn


def test_corrections_replay_to_the_same_state() -> None:
    plan = make_plan(session_units=10_000)
    live = LearnedLimits(
        {w: plan.limit(w) for w in ALL_WINDOWS}, {k: plan.window_length(k) for k in WindowKind}
    )
    replayed = LearnedLimits(
        {w: plan.limit(w) for w in ALL_WINDOWS}, {k: plan.window_length(k) for k in WindowKind}
    )
    journal = []
    now = T0
    for used in (7000, 6900, 7100):
        journal.append(live.observe_limit_hit(SESSION_ALL, used, now))
        for _ in range(10):
            now += SESSION_S
            journal.append(live.probe_up(SESSION_ALL, now))
    for correction in journal:
        if correction is not None:
            replayed.apply(correction)
    assert replayed.effective(SESSION_ALL) == live.effective(SESSION_ALL)
    assert replayed.correction_for_probe(SESSION_ALL, now + SESSION_S) == live.correction_for_probe(
        SESSION_ALL, now + SESSION_S
    )


def test_learned_limit_converges_to_a_hidden_limit_within_5_percent() -> None:
    hidden, configured, chunk = 10_000.0, 20_000.0, 20
    plan = SubscriptionPlan(
        families={SONNET: FamilyPlan(weights=FLAT)},
        all_models=SharedLimits(session_units=configured),
        safety_margin=0.05,
    )
    ledger = UsageLedger(plan)
    book = CapacityBook(plan, ledger, LearningPolicy())
    hits: list[int] = []
    effective: list[float] = []
    for window_no in range(80):
        now = T0 + window_no * 6 * HOUR_S  # one busy 5-hour window, then an idle hour
        used = 0.0
        while True:
            book.probe_up(SESSION_ALL, now)
            attempt = f"{window_no}-{now}"
            if not isinstance(book.reserve(attempt, SONNET, chunk, now), Reservation):
                break  # our own budget is full: wait for the reset
            if used + chunk > hidden:  # the provider refuses: 429
                book.observe_limit_hit(SESSION_ALL, ledger.figure(SESSION_ALL, now).used_units, now)
                book.release(attempt)
                hits.append(window_no)
                break
            ledger.record(now, SONNET, Usage(input_tokens=chunk), reported=True)
            book.reconcile(attempt, chunk)
            book.release(attempt)
            used += chunk
            now += 30.0
        limit = book.limits.effective(SESSION_ALL)
        assert limit is not None
        effective.append(limit)
    assert hits[0] == 0  # the configured guess was too high: found in the first window
    after = effective[hits[0] :]
    # Within 5% of the hidden limit after the first window, except the rare probe windows ...
    outside = [e for e in after if abs(e - hidden) > 0.05 * hidden]
    assert len(outside) <= 0.05 * len(after)
    assert all(abs(e - hidden) <= 0.08 * hidden for e in after)
    # ... and the probes that cost a hit get rarer as the limit is confirmed again and again.
    gaps = [b - a for a, b in itertools.pairwise(hits)]
    assert len(gaps) >= 2
    assert gaps == sorted(gaps) and gaps[0] >= 5
    assert abs(effective[-1] - hidden) <= 0.05 * hidden


@dataclass
class Model:
    """What the property test knows: the active reservations and what each has used."""

    ledger: UsageLedger
    book: CapacityBook
    now: float = T0
    active: list[str] = field(default_factory=list)
    used: dict[str, int] = field(default_factory=dict)
    allowance: dict[Window, float] = field(default_factory=dict)
    counter: int = 0


FAMILIES = [OPUS, SONNET, HAIKU]
LIMITED = [w for w in ALL_WINDOWS if make_plan(session_units=10_000, weekly_units=40_000).limit(w)]
SIGNAL_TYPES = ["five_hour", "seven_day", "seven_day_opus"]

operations = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, 2), st.integers(0, 4000)),
    st.tuples(st.just("use"), st.integers(0, 50), st.floats(0, 1)),
    st.tuples(st.just("release"), st.integers(0, 50), st.just(0)),
    st.tuples(
        st.just("advance"),
        st.sampled_from([1.0, 600.0, 3 * HOUR_S, SESSION_S, 3 * 24 * HOUR_S]),
        st.just(0),
    ),
    st.tuples(st.just("hit"), st.integers(0, len(LIMITED) - 1), st.floats(0, 1.5)),
    st.tuples(st.just("probe"), st.integers(0, len(LIMITED) - 1), st.just(0)),
    st.tuples(st.just("signal"), st.integers(0, len(SIGNAL_TYPES) - 1), st.floats(0, 1)),
)


def excess(m: Model, window: Window) -> float:
    budget = m.book.budget(window)
    assert budget is not None
    return m.book.used(window, m.now) + m.book.reserved(window) - budget


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(operations, max_size=60))
def test_enforcement_never_lets_used_plus_reserved_exceed_the_budget(
    ops: list[tuple[str, float, float]],
) -> None:
    """Whatever the order of reserve / use / release / time / limit hits / provider signals:
    only a limit hit or a provider signal (outside our control) can push a window over its
    budget, and while a window is over nothing more is admitted to it."""
    plan = make_plan(session_units=10_000, weekly_units=40_000)
    ledger = UsageLedger(plan)
    m = Model(ledger, CapacityBook(plan, ledger))
    m.allowance = {w: 0.0 for w in LIMITED}
    for op, a, b in ops:
        outside = False
        if op == "reserve":
            m.counter += 1
            attempt = f"a{m.counter}"
            result = m.book.reserve(attempt, FAMILIES[int(a)], b, m.now)
            if isinstance(result, Reservation):
                m.active.append(attempt)
                m.used[attempt] = 0
                for window in result.windows:  # a grant leaves room in every window it touches
                    assert excess(m, window) <= 1e-6
        elif op == "use" and m.active:
            attempt = m.active[int(a) % len(m.active)]
            reservation = m.book.reservation(attempt)
            assert reservation is not None
            units = int((reservation.expected_units - m.used[attempt]) * b)  # within its estimate
            if units > 0:
                use(m.ledger, m.book, attempt, units, m.now)
                m.used[attempt] += units
                m.book.reconcile(attempt, m.used[attempt])
        elif op == "release" and m.active:
            m.book.release(m.active.pop(int(a) % len(m.active)))
        elif op == "advance":
            m.now += a
        elif op == "hit":
            window = LIMITED[int(a)]
            m.book.observe_limit_hit(window, m.book.used(window, m.now) * b, m.now)
            outside = True
        elif op == "probe":
            m.book.probe_up(LIMITED[int(a)], m.now)
            outside = True  # a raised limit scales a reported utilization into more units
        elif op == "signal":
            window_type = SIGNAL_TYPES[int(a)]
            fig = m.ledger.figure(ALL_WINDOWS[0], m.now)  # any: only for a plausible reset time
            resets = fig.end if window_type == "five_hour" else None
            m.ledger.observe_signal(
                RateLimitSignal(window_type=window_type, utilization=b, resets_at=resets, at=m.now)
            )
            outside = True
        for window in LIMITED:
            over = excess(m, window)
            if outside:
                m.allowance[window] = max(m.allowance[window], over, 0.0)
            else:
                assert over <= m.allowance[window] + 1e-6, (op, window.label)
                m.allowance[window] = max(over, 0.0)
