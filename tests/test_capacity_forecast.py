"""Forecasts on synthetic series with known answers; warnings; learned task costs."""

from __future__ import annotations

import random

import pytest

from trafficcontrol.domain.capacity.costs import (
    CostKey,
    CostModel,
    CostPrior,
    SizeBucket,
    size_bucket,
)
from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.forecast import BurnRate, Forecaster, project
from trafficcontrol.domain.capacity.ledger import Source, WindowFigure
from trafficcontrol.domain.capacity.plans import SubscriptionPlan
from trafficcontrol.domain.capacity.warnings import WarningKind, WarningTracker
from trafficcontrol.domain.capacity.windows import HOUR_S, Window, WindowKind

SESSION = Window(kind=WindowKind.SESSION)
T0 = 1_750_000_020.0 - 1_750_000_020.0 % 60  # aligned to the 60 s buckets
HALF_LIFE = 1800.0


def feed(rate: BurnRate, start: float, minutes: int, units_per_minute: float) -> float:
    """One usage event per minute; returns the time after the last bucket."""
    for i in range(minutes):
        rate.observe(start + 60 * i, units_per_minute)
    return start + 60 * minutes


def test_constant_rate_reads_exactly_with_exact_time_to_limit() -> None:
    rate = BurnRate(half_life_s=HALF_LIFE)
    now = feed(rate, T0, 120, 100.0)  # 6000 units an hour
    estimate = rate.estimate(now)
    assert estimate.per_hour == pytest.approx(6000.0, rel=1e-12)
    assert estimate.noise_per_hour == pytest.approx(0.0, abs=1e-6)
    assert estimate.samples == 120
    p = project(
        SESSION, used=12_000, limit=30_000, resets_at=now + 4 * HOUR_S, rate=estimate, now=now
    )
    assert p.limit_at == pytest.approx(now + 3 * HOUR_S)
    assert p.limit_at_earliest == pytest.approx(now + 3 * HOUR_S)
    assert p.limit_at_latest == pytest.approx(now + 3 * HOUR_S)
    assert p.at_reset == pytest.approx(12_000 + 4 * 6000)
    assert p.crosses_before_reset


def test_step_change_moves_half_way_per_half_life() -> None:
    rate = BurnRate(half_life_s=HALF_LIFE)
    now = feed(rate, T0, 300, 100.0)  # 6000/h for 10 half-lives
    now = feed(rate, now, 30, 200.0)  # 12000/h for exactly one half-life
    assert rate.estimate(now).per_hour == pytest.approx(9000.0, rel=1e-9)
    now = feed(rate, now, 30, 200.0)
    assert rate.estimate(now).per_hour == pytest.approx(10_500.0, rel=1e-9)


def test_open_bucket_is_not_counted_until_it_closes() -> None:
    rate = BurnRate(half_life_s=HALF_LIFE)
    rate.observe(T0, 100.0)
    assert rate.estimate(T0 + 59).samples == 0
    assert rate.estimate(T0 + 60).per_hour == pytest.approx(6000.0)


def test_idle_pool_cools_down_and_never_projects_a_limit() -> None:
    rate = BurnRate(half_life_s=HALF_LIFE)
    now = feed(rate, T0, 60, 100.0)
    assert rate.estimate(now + HALF_LIFE).per_hour == pytest.approx(3000.0, rel=1e-9)
    idle = rate.estimate(now + 7 * 24 * HOUR_S)
    assert idle.per_hour == 0.0
    p = project(SESSION, used=10, limit=100, resets_at=None, rate=idle, now=now)
    assert (p.limit_at, p.limit_at_latest, p.crosses_before_reset) == (None, None, False)
    rate.observe(now + 7 * 24 * HOUR_S, 100.0)  # picks up again after a long gap
    assert rate.estimate(now + 7 * 24 * HOUR_S + 60).per_hour == pytest.approx(
        6000.0 * (1 - 2 ** (-60 / HALF_LIFE))
    )


def test_noisy_series_interval_contains_the_truth() -> None:
    true_per_hour = 6000.0
    limit, used = 50_000.0, 20_000.0
    true_limit_in = (limit - used) / true_per_hour * HOUR_S
    covered_rate = covered_time = 0
    seeds = range(40)
    for seed in seeds:
        rng = random.Random(seed)
        rate = BurnRate(half_life_s=HALF_LIFE)
        for i in range(600):
            rate.observe(T0 + 60 * i, max(rng.gauss(100.0, 40.0), 0.0))
        now = T0 + 600 * 60
        estimate = rate.estimate(now)
        band = 1.96 * estimate.error_per_hour
        covered_rate += abs(estimate.per_hour - true_per_hour) <= band
        p = project(SESSION, used=used, limit=limit, resets_at=None, rate=estimate, now=now)
        assert p.limit_at_earliest is not None and p.limit_at_latest is not None
        covered_time += p.limit_at_earliest <= now + true_limit_in <= p.limit_at_latest
    assert covered_rate >= 0.85 * len(seeds)
    assert covered_time >= 0.9 * len(seeds)


def test_forecaster_keeps_one_rate_per_pool() -> None:
    forecaster = Forecaster(half_life_s=HALF_LIFE)
    for i in range(10):
        forecaster.observe(T0 + 60 * i, ModelFamily.OPUS, 10.0)
        forecaster.observe(T0 + 60 * i, ModelFamily.SONNET, None)  # unknown: no rate
    now = T0 + 600
    opus = Window(kind=WindowKind.WEEKLY, family=ModelFamily.OPUS)
    sonnet = Window(kind=WindowKind.SESSION, family=ModelFamily.SONNET)
    assert forecaster.rate(opus, now).per_hour == pytest.approx(600.0)
    assert forecaster.rate(SESSION, now).per_hour == pytest.approx(600.0)
    assert forecaster.rate(sonnet, now).samples == 0
    p = forecaster.project(opus, used=0, limit=600, resets_at=now + 2 * HOUR_S, now=now)
    assert p.limit_at == pytest.approx(now + HOUR_S)


def figure(used: float, start: float = T0, limit: float = 1000.0) -> WindowFigure:
    return WindowFigure(
        window=SESSION,
        start=start,
        end=start + 5 * HOUR_S,
        used_units=used,
        limit=limit,
        utilization=used / limit,
        source=Source.ESTIMATED,
        reported_at=None,
        units_since_report=0.0,
        estimated_units=0.0,
        unknown_entries=0,
        entries=1,
        cost_usd=None,
        cost_unknown_entries=0,
    )


def test_threshold_warnings_fire_once_per_window_instance() -> None:
    tracker = WarningTracker()
    assert tracker.check(figure(400), None, T0) == []
    [w] = tracker.check(figure(550), None, T0 + 1)
    assert (w.kind, w.threshold, w.used, w.limit, w.source) == (
        WarningKind.THRESHOLD,
        0.5,
        550,
        1000,
        Source.ESTIMATED,
    )
    assert "50%" in w.text
    assert tracker.check(figure(600), None, T0 + 2) == []
    [w] = tracker.check(figure(900), None, T0 + 3)  # jumped past 70% and 85%: highest only
    assert w.threshold == 0.85
    assert tracker.check(figure(800), None, T0 + 4) == []
    [w] = tracker.check(figure(960), None, T0 + 5)
    assert w.threshold == 0.95
    # A new window instance re-arms everything.
    [w] = tracker.check(figure(710, start=T0 + 5 * HOUR_S), None, T0 + 5 * HOUR_S)
    assert w.threshold == 0.7


def test_projected_overrun_warns_once_with_the_projection() -> None:
    tracker = WarningTracker()
    rate = BurnRate(half_life_s=HALF_LIFE)
    now = feed(rate, T0, 60, 10.0)  # 600 units an hour
    f = figure(100)
    p = project(SESSION, 100, 1000, f.end, rate.estimate(now), now)
    assert p.crosses_before_reset  # 900 left at 600/h: 1.5 h < time to reset
    warnings = tracker.check(f, p, now)
    assert [w.kind for w in warnings] == [WarningKind.PROJECTED_OVERRUN]
    assert warnings[0].limit_at == pytest.approx(now + 1.5 * HOUR_S)
    assert tracker.check(f, p, now + 1) == []


def test_expected_cost_starts_from_the_prior_and_learns() -> None:
    plan = SubscriptionPlan()
    prior = CostPrior()
    model = CostModel(plan, prior)
    key = CostKey(step="implement", family=ModelFamily.SONNET, size=SizeBucket.M)
    first = model.expected(key)
    assert (first.mean_units, first.samples, first.basis) == (200_000.0, 0, "prior")
    assert first.high_units > first.mean_units
    opus = model.expected(CostKey(step="implement", family=ModelFamily.OPUS, size=SizeBucket.M))
    assert opus.mean_units == pytest.approx(5 * 200_000.0)
    for _ in range(48):
        model.observe(key, 100_000.0)
    learned = model.expected(key)
    assert learned.basis == "learned" and learned.samples == 48
    assert learned.mean_units == pytest.approx(100_000.0, rel=0.01)
    assert learned.high_units == pytest.approx(learned.mean_units, rel=0.2)
    # A step with no history of its own borrows from its siblings (same family and size).
    verify = model.expected(CostKey(step="verify", family=ModelFamily.SONNET, size=SizeBucket.M))
    assert verify.basis == "siblings"
    assert verify.mean_units == pytest.approx((2 * 200_000 + 48 * 100_000) / 50)


def test_size_buckets() -> None:
    assert [size_bucket(n) for n in (0, 1999, 2000, 8000, 31_999, 10**6)] == [
        SizeBucket.S,
        SizeBucket.S,
        SizeBucket.M,
        SizeBucket.L,
        SizeBucket.L,
        SizeBucket.XL,
    ]
