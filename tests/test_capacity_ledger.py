"""The usage ledger: window totals, unknown usage, provider signals first, pruning."""

from __future__ import annotations

import pytest

from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.ledger import (
    Source,
    TagKind,
    UsageLedger,
)
from trafficcontrol.domain.capacity.plans import FamilyPlan, SubscriptionPlan, UnitWeights
from trafficcontrol.domain.capacity.signals import RateLimitSignal
from trafficcontrol.domain.capacity.windows import (
    HOUR_S,
    LONGEST_WINDOW_S,
    SESSION_S,
    WeeklyReset,
    Window,
    WindowKind,
    weekly_window_bounds,
)
from trafficcontrol.domain.model import Usage

OPUS, SONNET = ModelFamily.OPUS, ModelFamily.SONNET
SESSION_ALL = Window(kind=WindowKind.SESSION)
WEEKLY_ALL = Window(kind=WindowKind.WEEKLY)
SESSION_OPUS = Window(kind=WindowKind.SESSION, family=OPUS)
SESSION_SONNET = Window(kind=WindowKind.SESSION, family=SONNET)
WEEKLY_OPUS = Window(kind=WindowKind.WEEKLY, family=OPUS)
FLAT = UnitWeights(output=1.0, cache_read=1.0, cache_creation=1.0)
PLAN = SubscriptionPlan(
    families={f: FamilyPlan(weights=FLAT) for f in ModelFamily},
    weekly_reset=WeeklyReset(weekday=0, hour=9, timezone="Europe/Berlin"),
)
T0 = 1_750_000_000.0  # a Sunday afternoon, June 2025


def tokens(n: int, cost: float | None = None) -> Usage:
    return Usage(input_tokens=n, cost_usd=cost)


def test_usage_counts_against_its_family_and_the_shared_windows() -> None:
    ledger = UsageLedger(PLAN)
    ledger.record(T0, OPUS, tokens(100, 1.0), reported=True, project="p", step="implement")
    ledger.record(T0 + 60, SONNET, tokens(30, 0.5), reported=True, project="q", step="verify")
    now = T0 + 120
    assert ledger.figure(SESSION_OPUS, now).used_units == 100
    assert ledger.figure(SESSION_SONNET, now).used_units == 30
    everything = ledger.figure(SESSION_ALL, now)
    assert (everything.used_units, everything.entries, everything.cost_usd) == (130, 2, 1.5)
    assert everything.source is Source.ESTIMATED
    assert (everything.start, everything.end) == (T0, T0 + SESSION_S)
    weekly = ledger.figure(WEEKLY_ALL, now)
    assert (weekly.start, weekly.end) == weekly_window_bounds(now, PLAN.weekly_reset)
    assert weekly.used_units == 130
    assert ledger.breakdown(SESSION_ALL, now, TagKind.PROJECT) == {"p": 100, "q": 30}
    assert ledger.breakdown(SESSION_OPUS, now, TagKind.STEP) == {"implement": 100}


def test_unknown_usage_stays_unknown_never_zero() -> None:
    ledger = UsageLedger(PLAN)
    ledger.record(T0, SONNET, tokens(50, 0.2), reported=True)
    entry = ledger.record(T0 + 1, SONNET, None, reported=False, agent="sub-agent")
    ledger.record(T0 + 2, SONNET, tokens(10), reported=True)  # tokens known, cost not
    assert not entry.known and entry.units is None
    figure = ledger.figure(SESSION_SONNET, T0 + 3, limit=1000)
    assert figure.used_units == 60  # only what is known
    assert figure.unknown_entries == 1  # ... and it says the truth is more
    assert figure.cost_usd == pytest.approx(0.2)
    assert figure.cost_unknown_entries == 2
    only_unknown = UsageLedger(PLAN)
    only_unknown.record(T0, SONNET, None, reported=False)
    figure = only_unknown.figure(SESSION_SONNET, T0 + 1)
    assert (figure.unknown_entries, figure.cost_usd) == (1, None)


def test_estimated_token_counts_are_labelled() -> None:
    ledger = UsageLedger(PLAN)
    ledger.record(T0, SONNET, tokens(70), reported=True)
    ledger.record(T0, SONNET, tokens(30), reported=False)
    figure = ledger.figure(SESSION_ALL, T0 + 1)
    assert (figure.used_units, figure.estimated_units) == (100, 30)


def test_session_window_closes_and_the_next_usage_opens_a_new_one() -> None:
    ledger = UsageLedger(PLAN)
    ledger.record(T0, SONNET, tokens(100), reported=True)
    ledger.record(T0 + SESSION_S - 1, SONNET, tokens(5), reported=True)
    assert ledger.figure(SESSION_ALL, T0 + SESSION_S - 1).used_units == 105
    closed = ledger.figure(SESSION_ALL, T0 + SESSION_S)
    assert (closed.start, closed.end, closed.used_units) == (None, None, 0.0)
    ledger.record(T0 + SESSION_S + 7200, SONNET, tokens(1), reported=True)
    reopened = ledger.figure(SESSION_ALL, T0 + SESSION_S + 7201)
    assert (reopened.start, reopened.used_units) == (T0 + SESSION_S + 7200, 1)
    assert ledger.figure(WEEKLY_ALL, T0 + SESSION_S + 7201).used_units == 106


def test_reported_signal_overrides_the_estimate_and_is_labelled() -> None:
    ledger = UsageLedger(PLAN)
    ledger.record(T0, SONNET, tokens(1000), reported=True)
    resets = T0 + SESSION_S
    signal = RateLimitSignal(window_type="five_hour", utilization=0.5, resets_at=resets, at=T0 + 10)
    assert ledger.observe_signal(signal) == SESSION_ALL
    figure = ledger.figure(SESSION_ALL, T0 + 20, limit=10_000)
    assert (figure.used_units, figure.source, figure.reported_at) == (
        5000,
        Source.REPORTED,
        T0 + 10,
    )
    assert figure.utilization == 0.5
    ledger.record(T0 + 30, SONNET, tokens(100), reported=True)
    figure = ledger.figure(SESSION_ALL, T0 + 40, limit=10_000)
    assert figure.source is Source.REPORTED_PLUS_ESTIMATE
    assert (figure.used_units, figure.units_since_report) == (5100, 100)
    # An older signal does not override a newer one.
    stale = RateLimitSignal(window_type="five_hour", utilization=0.1, resets_at=resets, at=T0 + 5)
    assert ledger.observe_signal(stale) is None
    assert ledger.figure(SESSION_ALL, T0 + 40, limit=10_000).used_units == 5100
    # The estimate of a window the signal does not describe is untouched.
    assert ledger.figure(SESSION_SONNET, T0 + 40, limit=10_000).source is Source.ESTIMATED
    # Without a limit the reported utilization is still shown, the units stay local.
    bare = ledger.figure(SESSION_ALL, T0 + 40)
    assert (bare.used_units, bare.utilization, bare.source) == (
        1100,
        0.5,
        Source.REPORTED_PLUS_ESTIMATE,
    )


def test_signal_reset_time_corrects_the_window_bounds() -> None:
    ledger = UsageLedger(PLAN)
    ledger.record(T0, SONNET, tokens(10), reported=True)
    ledger.record(T0 + 3 * HOUR_S, SONNET, tokens(20), reported=True)
    # The provider's five-hour window started two hours later than our local guess.
    resets = T0 + 2 * HOUR_S + SESSION_S
    ledger.observe_signal(
        RateLimitSignal(
            window_type="five_hour", utilization=0.01, resets_at=resets, at=T0 + 4 * HOUR_S
        )
    )
    figure = ledger.figure(SESSION_ALL, T0 + 4 * HOUR_S, limit=1000)
    assert (figure.start, figure.end) == (T0 + 2 * HOUR_S, resets)
    assert figure.entries == 1  # re-totalled: only the usage at +3 h is in it
    assert figure.used_units == 10  # 1% of 1000, reported
    # After the reported reset the signal expires and the window is empty.
    assert ledger.figure(SESSION_ALL, resets, limit=1000).source is Source.ESTIMATED
    assert ledger.figure(SESSION_ALL, resets, limit=1000).used_units == 0


def test_late_signal_counts_only_usage_after_it_as_estimate() -> None:
    ledger = UsageLedger(PLAN)
    for i in range(5):
        ledger.record(T0 + 10 * i, SONNET, tokens(10), reported=True)
    ledger.observe_signal(
        RateLimitSignal(window_type="five_hour", utilization=0.2, resets_at=None, at=T0 + 25)
    )
    figure = ledger.figure(SESSION_ALL, T0 + 50, limit=100)
    assert figure.units_since_report == 20  # entries at +30 and +40
    assert figure.used_units == 40


def test_family_signals_and_unmetered_signal_types() -> None:
    ledger = UsageLedger(PLAN)
    ledger.record(T0, OPUS, tokens(10), reported=True)
    _, week_end = weekly_window_bounds(T0, PLAN.weekly_reset)
    opus = RateLimitSignal(
        window_type="seven_day_opus", utilization=0.9, resets_at=week_end, at=T0 + 1
    )
    assert ledger.observe_signal(opus) == WEEKLY_OPUS
    assert ledger.figure(WEEKLY_OPUS, T0 + 2, limit=100).used_units == 90
    assert ledger.figure(WEEKLY_ALL, T0 + 2, limit=100).source is Source.ESTIMATED
    overage = RateLimitSignal(window_type="overage", utilization=0.0, resets_at=None, at=T0)
    assert ledger.observe_signal(overage) is None
    assert ledger.other_signals["overage"] == overage
    unknown = RateLimitSignal(
        window_type="seven_day_future", utilization=0.3, resets_at=None, at=T0
    )
    assert ledger.observe_signal(unknown) is None
    expired = RateLimitSignal(window_type="five_hour", utilization=0.3, resets_at=T0, at=T0 + 1)
    assert ledger.observe_signal(expired) is None


def test_signal_for_a_week_on_another_schedule_extrapolates_that_schedule() -> None:
    ledger = UsageLedger(PLAN)
    ledger.record(T0, SONNET, tokens(10), reported=True)
    provider_end = T0 + 2 * 24 * HOUR_S + 1234  # not the configured Monday 09:00
    ledger.observe_signal(
        RateLimitSignal(window_type="seven_day", utilization=0.4, resets_at=provider_end, at=T0 + 1)
    )
    assert ledger.figure(WEEKLY_ALL, T0 + 2, limit=100).end == provider_end
    ledger.record(provider_end + 10, SONNET, tokens(3), reported=True)
    figure = ledger.figure(WEEKLY_ALL, provider_end + 20, limit=100)
    assert (figure.start, figure.end) == (provider_end, provider_end + 7 * 24 * HOUR_S)
    assert (figure.used_units, figure.source) == (3, Source.ESTIMATED)


def test_out_of_order_entries_and_pruning() -> None:
    ledger = UsageLedger(PLAN)
    ledger.record(T0 + 20, SONNET, tokens(1), reported=True)
    ledger.record(T0 + 10, SONNET, tokens(2), reported=True)
    ledger.record(T0 + 30, SONNET, tokens(3), reported=True)
    assert [e.at for e in ledger.entries_between(T0, T0 + 31)] == [T0 + 10, T0 + 20, T0 + 30]
    assert ledger.figure(SESSION_ALL, T0 + 40).used_units == 4  # +10 came before the window
    for i in range(2000):
        ledger.record(T0 + 100 + i, SONNET, tokens(1), reported=True)
    now = T0 + LONGEST_WINDOW_S + 3000
    ledger.record(now, SONNET, tokens(1), reported=True)
    dropped = ledger.prune(now)
    assert dropped == 2003  # all but the entry that opened the current windows
    assert len(ledger) == 1
    assert ledger.figure(SESSION_ALL, now).used_units == 1


def test_prune_keeps_entries_of_open_windows() -> None:
    ledger = UsageLedger(PLAN)
    ledger.record(T0, SONNET, tokens(1), reported=True)
    assert ledger.prune(T0 + 60) == 0
    assert len(ledger) == 1
