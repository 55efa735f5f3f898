"""Window math: weekly windows across DST changes and timezones, session windows, plans."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trafficcontrol.domain.capacity.families import ModelFamily, model_family
from trafficcontrol.domain.capacity.plans import (
    FamilyPlan,
    SharedLimits,
    SubscriptionPlan,
    UnitWeights,
)
from trafficcontrol.domain.capacity.windows import (
    HOUR_S,
    SESSION_S,
    WEEK_S,
    SessionWindow,
    WeeklyReset,
    Window,
    WindowKind,
    current_session_window,
    used_in_window,
    weekly_window_bounds,
    windows_for,
)
from trafficcontrol.domain.model import Usage


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


BERLIN_MONDAY_9 = WeeklyReset(weekday=0, hour=9, timezone="Europe/Berlin")
NEW_YORK_MONDAY_9 = WeeklyReset(weekday=0, hour=9, timezone="America/New_York")


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("claude-opus-4-1", ModelFamily.OPUS),
        ("claude-3-opus-20240229", ModelFamily.OPUS),
        ("Opus", ModelFamily.OPUS),
        ("claude-sonnet-4-5", ModelFamily.SONNET),
        ("claude-haiku-4-5-20251001", ModelFamily.HAIKU),
        ("gpt-something", ModelFamily.SONNET),
        ("", ModelFamily.SONNET),
        (None, ModelFamily.SONNET),
    ],
)
def test_model_family_from_name(model: str | None, family: ModelFamily) -> None:
    assert model_family(model) is family


@pytest.mark.parametrize(
    ("reset", "now", "start", "end", "hours"),
    [
        # Europe/Berlin spring forward, Sunday 2025-03-30: the week is 167 h.
        (BERLIN_MONDAY_9, utc(2025, 3, 27, 12), utc(2025, 3, 24, 8), utc(2025, 3, 31, 7), 167),
        # ... and the weeks around it are 168 h, still 09:00 local.
        (BERLIN_MONDAY_9, utc(2025, 3, 31, 7), utc(2025, 3, 31, 7), utc(2025, 4, 7, 7), 168),
        (BERLIN_MONDAY_9, utc(2025, 3, 24, 7, 59), utc(2025, 3, 17, 8), utc(2025, 3, 24, 8), 168),
        # Europe/Berlin fall back, Sunday 2025-10-26: the week is 169 h.
        (BERLIN_MONDAY_9, utc(2025, 10, 26, 1), utc(2025, 10, 20, 7), utc(2025, 10, 27, 8), 169),
        # America/New_York spring forward, Sunday 2025-03-09: 167 h.
        (NEW_YORK_MONDAY_9, utc(2025, 3, 9, 12), utc(2025, 3, 3, 14), utc(2025, 3, 10, 13), 167),
        # America/New_York fall back, Sunday 2025-11-02: 169 h.
        (NEW_YORK_MONDAY_9, utc(2025, 11, 2, 5), utc(2025, 10, 27, 13), utc(2025, 11, 3, 14), 169),
        (NEW_YORK_MONDAY_9, utc(2025, 11, 3, 14), utc(2025, 11, 3, 14), utc(2025, 11, 10, 14), 168),
    ],
)
def test_weekly_bounds_follow_local_time_across_dst(
    reset: WeeklyReset, now: float, start: float, end: float, hours: int
) -> None:
    assert weekly_window_bounds(now, reset) == (start, end)
    assert end - start == hours * HOUR_S
    zone = ZoneInfo(reset.timezone)
    for instant in (start, end):
        local = datetime.fromtimestamp(instant, zone)
        assert (local.weekday(), local.hour, local.minute) == (0, 9, 0)


def test_reset_in_the_spring_forward_gap_lands_an_hour_later_in_wall_time() -> None:
    # 02:30 on Sunday 2025-03-09 does not exist in New York: it resolves to 03:30 EDT.
    reset = WeeklyReset(weekday=6, hour=2, minute=30, timezone="America/New_York")
    start, end = weekly_window_bounds(utc(2025, 3, 10), reset)
    assert start == utc(2025, 3, 9, 7, 30)
    assert end == utc(2025, 3, 16, 6, 30)
    assert weekly_window_bounds(start - 1, reset) == (utc(2025, 3, 2, 7, 30), start)


def test_ambiguous_reset_in_the_fall_back_hour_takes_the_first_occurrence() -> None:
    # 01:30 on Sunday 2025-11-02 happens twice in New York; the window uses the first (EDT).
    reset = WeeklyReset(weekday=6, hour=1, minute=30, timezone="America/New_York")
    start, end = weekly_window_bounds(utc(2025, 11, 2, 12), reset)
    assert start == utc(2025, 11, 2, 5, 30)
    assert end == utc(2025, 11, 9, 6, 30)
    assert end - start == 169 * HOUR_S


def test_utc_reset_is_a_plain_week() -> None:
    reset = WeeklyReset(weekday=3, hour=17)
    assert weekly_window_bounds(utc(2025, 1, 1), reset) == (
        utc(2024, 12, 26, 17),
        utc(2025, 1, 2, 17),
    )


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Sydney"]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    now=st.floats(min_value=utc(2000, 1, 1), max_value=utc(2040, 1, 1)),
    weekday=st.integers(0, 6),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    zone=st.sampled_from(ZONES),
)
def test_weekly_windows_contain_now_and_tile_time(
    now: float, weekday: int, hour: int, minute: int, zone: str
) -> None:
    reset = WeeklyReset(weekday=weekday, hour=hour, minute=minute, timezone=zone)
    start, end = weekly_window_bounds(now, reset)
    assert start <= now < end
    assert end - start in (WEEK_S - HOUR_S, WEEK_S, WEEK_S + HOUR_S)
    assert weekly_window_bounds(end, reset)[0] == end
    assert weekly_window_bounds(start - 0.001, reset)[1] == start


def test_weekly_reset_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown timezone"):
        WeeklyReset(timezone="Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="weekday"):
        WeeklyReset(weekday=7)
    with pytest.raises(msgspec.ValidationError, match="not a time"):
        msgspec.convert({"hour": 24}, WeeklyReset)


def test_session_window_opens_at_first_usage_and_closes_after_five_hours() -> None:
    window = SessionWindow()
    assert window.bounds(100.0) is None
    window = window.observe(1000.0)
    assert window.bounds(1000.0) == (1000.0, 1000.0 + SESSION_S)
    assert window.observe(1000.0 + SESSION_S - 1) is window  # inside: nothing moves
    assert window.bounds(1000.0 + SESSION_S) is None  # ended, none open until usage
    later = window.observe(1000.0 + SESSION_S)  # usage at the end opens the next one
    assert later.bounds(1000.0 + SESSION_S) == (1000.0 + SESSION_S, 1000.0 + 2 * SESSION_S)


def test_current_session_window_from_usage_times_in_any_order() -> None:
    times = [30_000.0, 0.0, 3600.0, 17_999.0, 18_000.0 + 1]
    # 0 opens [0, 18000); 18001 opens [18001, 36001); 30000 is inside it.
    assert current_session_window(times, now=20_000.0) == (18_001.0, 36_001.0)
    assert current_session_window(times, now=17_000.0) == (0.0, 18_000.0)
    assert current_session_window(times, now=18_000.5) is None
    assert current_session_window(times, now=40_000.0) is None
    assert current_session_window([], now=1.0) is None


class _E(msgspec.Struct, frozen=True):
    at: float
    units: float | None


def test_used_in_window_is_half_open_and_keeps_unknown_apart() -> None:
    entries = [_E(0.0, 5.0), _E(10.0, None), _E(10.0, 2.0), _E(20.0, 100.0)]
    use = used_in_window(entries, 0.0, 20.0)
    assert (use.units, use.unknown) == (7.0, 1)
    assert used_in_window(entries, 20.0, 21.0).units == 100.0


def test_usage_units_weigh_tokens_and_families() -> None:
    usage = Usage(
        input_tokens=1000, output_tokens=100, cache_read_tokens=10_000, cache_creation_tokens=200
    )
    plan = SubscriptionPlan()
    sonnet = 1000 + 100 * 5 + 10_000 * 0.1 + 200 * 1.25
    assert plan.units(ModelFamily.SONNET, usage) == pytest.approx(sonnet)
    assert plan.units(ModelFamily.OPUS, usage) == pytest.approx(5 * sonnet)
    custom = SubscriptionPlan(
        families={ModelFamily.OPUS: FamilyPlan(weights=UnitWeights(output=1.0))}
    )
    assert custom.units(ModelFamily.OPUS, usage) == pytest.approx(1000 + 100 + 1000 + 250)


def test_plan_limits_per_window_and_decoding() -> None:
    plan = msgspec.convert(
        {
            "families": {"opus": {"session_units": 100, "weekly_units": 1000, "max_concurrent": 2}},
            "all_models": {"session_units": 500},
            "weekly_reset": {"weekday": 0, "hour": 9, "timezone": "Europe/Berlin"},
            "safety_margin": 0.1,
        },
        SubscriptionPlan,
    )
    assert plan.limit(Window(kind=WindowKind.SESSION, family=ModelFamily.OPUS)) == 100
    assert plan.limit(Window(kind=WindowKind.WEEKLY, family=ModelFamily.OPUS)) == 1000
    assert plan.limit(Window(kind=WindowKind.SESSION)) == 500
    assert plan.limit(Window(kind=WindowKind.WEEKLY)) is None
    assert plan.limit(Window(kind=WindowKind.SESSION, family=ModelFamily.HAIKU)) is None
    assert plan.family(ModelFamily.OPUS).max_concurrent == 2
    assert len(set(windows_for(ModelFamily.OPUS))) == 4
    with pytest.raises(msgspec.ValidationError, match="safety_margin"):
        msgspec.convert({"safety_margin": 1.0}, SubscriptionPlan)
    with pytest.raises(msgspec.ValidationError, match="session_units"):
        msgspec.convert({"all_models": {"session_units": 0}}, SubscriptionPlan)
    assert SharedLimits().session_units is None
