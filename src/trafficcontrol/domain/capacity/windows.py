"""Window math: rolling 5-hour session windows and weekly windows in local time.

Design note. Two kinds of window, as Claude subscriptions meter them:

- **Session** (5 hours): not aligned to the clock. It opens at the first usage when no
  window is open and lasts ``length_s``; usage after its end opens the next one. Between
  windows nothing is open and nothing is used. Folded incrementally by ``SessionWindow``.
- **Weekly**: resets at a configured weekday and wall-clock time in an IANA timezone.
  Bounds are computed from local *dates*, never by adding 7 * 86400 s, so a Monday 09:00
  Europe/Berlin reset stays 09:00 local on both sides of a DST change and the week that
  contains the change is 167 or 169 hours long. A reset time that does not exist on its
  day (spring-forward gap) resolves with the pre-transition offset (``fold=0``), i.e. one
  hour later in wall time; an ambiguous one (fall-back) takes its first occurrence.
  Windows tile time: the end of one week is exactly the start of the next.

A window is named by ``Window(kind, family)``; ``family=None`` is the pool shared by all
models (Claude's ``five_hour`` and ``seven_day`` windows), a family its own pool
(``seven_day_opus``). Usage of a family counts against its own windows and the shared ones.

Rejected: a fixed-length weekly window from an anchor instant (drifts an hour at every
DST change); a session window aligned to the hour (not what the provider reports; a
provider signal's ``resets_at`` corrects the bounds anyway, see ``ledger``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from datetime import time as wall_time
from enum import StrEnum
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from trafficcontrol.domain.capacity.families import ModelFamily

HOUR_S = 3600.0
SESSION_S = 5 * HOUR_S
WEEK_S = 7 * 24 * HOUR_S
LONGEST_WINDOW_S = WEEK_S + HOUR_S
"""The longest a window can be: a weekly window across a fall-back DST change."""


class WindowKind(StrEnum):
    SESSION = "session"
    """A rolling 5-hour window opened by the first usage."""
    WEEKLY = "weekly"
    """A week from one configured local reset time to the next."""


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """Names one metered window: its kind and the pool it meters."""

    kind: WindowKind
    family: ModelFamily | None = None
    """None: all models share this window; a family: only that family's usage counts."""

    @property
    def label(self) -> str:
        return f"{self.kind.value}/{self.family.value if self.family else 'all'}"


def windows_for(family: ModelFamily) -> tuple[Window, ...]:
    """Every window that usage of ``family`` counts against."""
    return (
        Window(kind=WindowKind.SESSION, family=family),
        Window(kind=WindowKind.WEEKLY, family=family),
        Window(kind=WindowKind.SESSION),
        Window(kind=WindowKind.WEEKLY),
    )


ALL_WINDOWS: tuple[Window, ...] = tuple(
    Window(kind=kind, family=family) for family in (None, *ModelFamily) for kind in WindowKind
)


class WeeklyReset(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """When weekly windows reset: a weekday and a wall-clock time in a timezone."""

    weekday: int = 0
    """0 = Monday … 6 = Sunday."""
    hour: int = 0
    """Local hour of the reset, 0–23."""
    minute: int = 0
    """Local minute of the reset, 0–59."""
    timezone: str = "UTC"
    """IANA timezone name, e.g. ``"Europe/Berlin"``; DST is followed."""

    def __post_init__(self) -> None:
        if not 0 <= self.weekday <= 6:
            raise ValueError(f"weekly reset weekday must be 0 (Monday) to 6, got {self.weekday}")
        if not 0 <= self.hour <= 23 or not 0 <= self.minute <= 59:
            raise ValueError(f"weekly reset time {self.hour}:{self.minute:02} is not a time")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {self.timezone!r}") from exc

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo caches instances by key


def weekly_window_bounds(now: float, reset: WeeklyReset) -> tuple[float, float]:
    """``(start, end)`` of the weekly window containing ``now``: ``start <= now < end``."""
    zone = reset.zone
    local = datetime.fromtimestamp(now, zone)
    day = local.date() - timedelta(days=(local.weekday() - reset.weekday) % 7)
    start = _reset_instant(day, reset, zone)
    if start > now:
        day -= timedelta(days=7)
        start = _reset_instant(day, reset, zone)
    return start, _reset_instant(day + timedelta(days=7), reset, zone)


def _reset_instant(day: date, reset: WeeklyReset, zone: ZoneInfo) -> float:
    return datetime.combine(day, wall_time(reset.hour, reset.minute), tzinfo=zone).timestamp()


class SessionWindow(msgspec.Struct, frozen=True, kw_only=True):
    """Fold of usage times into the current session window (``observe`` returns a new value)."""

    length_s: float = SESSION_S
    """How long a window stays open after the usage that opened it."""
    start: float | None = None
    """When the current (or last) window opened; None before any usage."""

    @property
    def end(self) -> float | None:
        return None if self.start is None else self.start + self.length_s

    def observe(self, at: float) -> SessionWindow:
        """Usage at ``at``: opens a window if none is open then, else changes nothing."""
        if self.start is None or at >= self.start + self.length_s:
            return msgspec.structs.replace(self, start=at)
        return self

    def bounds(self, now: float) -> tuple[float, float] | None:
        """``(start, end)`` of the window open at ``now``, or None when none is open."""
        if self.start is None or not self.start <= now < self.start + self.length_s:
            return None
        return self.start, self.start + self.length_s


def current_session_window(
    usage_times: Iterable[float], now: float, length_s: float = SESSION_S
) -> tuple[float, float] | None:
    """The session window open at ``now`` given every usage time so far (any order)."""
    window = SessionWindow(length_s=length_s)
    for at in sorted(t for t in usage_times if t <= now):
        window = window.observe(at)
    return window.bounds(now)


class Metered(Protocol):
    """Anything with a time and a number of usage units (None: unknown)."""

    @property
    def at(self) -> float: ...

    @property
    def units(self) -> float | None: ...


class WindowUse(msgspec.Struct, frozen=True):
    units: float
    """Sum of the known units in the window."""
    unknown: int
    """Entries in the window whose usage is unknown: the true sum is at least ``units``."""


def used_in_window(entries: Iterable[Metered], start: float, end: float) -> WindowUse:
    """Usage with ``start <= at < end``; unknown usage is counted apart, never as zero."""
    units = 0.0
    unknown = 0
    for entry in entries:
        if start <= entry.at < end:
            if entry.units is None:
                unknown += 1
            else:
                units += entry.units
    return WindowUse(units, unknown)
