"""The usage ledger: usage entries folded into per-window totals, provider signals first.

Design note. ``add`` costs O(1) amortised per entry (O(log n) when an entry arrives out
of time order): each entry updates the running totals of the four windows it counts
against (its family's session and weekly windows, and the shared ones). Entries are
kept in time order in a list with a moving head, so ``prune`` drops everything older
than the longest window in amortised O(1) and range queries bisect.

Invariants:

- **Unknown is never zero.** An entry whose usage the provider did not report (a
  sub-agent, a crashed stream) has ``usage=None``/``units=None``; figures count it in
  ``unknown_entries`` and never add it to ``used_units``. Same for unknown cost.
- **Official signals first.** A ``RateLimitSignal`` (Claude's rate-limit event:
  ``five_hour``, ``seven_day``, ``seven_day_opus``, ``seven_day_sonnet``) overrides the
  local estimate of its window while it is the newest signal and its window has not
  reset: the figure becomes ``utilization * limit`` plus the locally metered units of
  entries *after* the signal. Its ``resets_at`` also corrects the window's bounds; the
  window is then re-totalled from the entries. A signal older than the one held, or
  about a window that already ended, is ignored.
- **Every figure says where it comes from**: ``Source.REPORTED`` (the provider's
  figure, nothing since), ``REPORTED_PLUS_ESTIMATE`` (provider's figure plus local
  units since), ``ESTIMATED`` (local units only). Separately ``estimated_units`` says how
  much of the local sum came from entries whose token counts we estimated ourselves
  (``reported=False``) rather than read from the provider's usage report.

The ledger holds no limits: ``figure(window, now, limit)`` takes the effective limit
(configured or learned, see ``limits``) to turn a reported utilization into units.
Queries never mutate: a window that ended before ``now`` reads as empty.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from enum import StrEnum

import msgspec

from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.plans import SubscriptionPlan
from trafficcontrol.domain.capacity.signals import RateLimitSignal, signal_window
from trafficcontrol.domain.capacity.windows import (
    ALL_WINDOWS,
    LONGEST_WINDOW_S,
    WEEK_S,
    Window,
    WindowKind,
    weekly_window_bounds,
    windows_for,
)
from trafficcontrol.domain.model import Usage

BOUNDS_TOLERANCE_S = 60.0
"""A reported reset within this much of the local window end does not re-total the window."""


class Source(StrEnum):
    ESTIMATED = "estimated"
    """Summed locally from usage entries."""
    REPORTED = "reported"
    """The provider's own figure (a rate-limit signal), nothing added since."""
    REPORTED_PLUS_ESTIMATE = "reported+estimated"
    """The provider's figure plus locally metered usage after it."""


class TagKind(StrEnum):
    PROJECT = "project"
    AGENT = "agent"
    STEP = "step"


class UsageEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Usage of one model call (or one streamed turn) by one attempt."""

    at: float
    family: ModelFamily
    usage: Usage | None
    """Token counts and cost; None when the provider did not report them (unknown)."""
    units: float | None
    """Usage units (see ``plans``); None exactly when ``usage`` is None."""
    reported: bool
    """True: the token counts come from the provider's usage report; False: our estimate."""
    model: str | None = None
    project: str | None = None
    agent: str | None = None
    step: str | None = None
    """Workflow step (analyze, implement, verify …)."""
    attempt_id: str | None = None

    @property
    def known(self) -> bool:
        return self.usage is not None

    def tags(self) -> Iterator[tuple[TagKind, str]]:
        for kind, value in (
            (TagKind.PROJECT, self.project),
            (TagKind.AGENT, self.agent),
            (TagKind.STEP, self.step),
        ):
            if value is not None:
                yield kind, value


class WindowFigure(msgspec.Struct, frozen=True, kw_only=True):
    """How much of one window is used at one moment, and how that is known."""

    window: Window
    start: float | None
    """None: no session window is open (nothing used)."""
    end: float | None
    """When the window resets; None when no session window is open."""
    used_units: float
    limit: float | None
    utilization: float | None
    """used / limit, or the reported utilization; None without a limit or a signal."""
    source: Source
    reported_at: float | None
    """Time of the provider signal behind the figure, if any."""
    units_since_report: float
    estimated_units: float
    """Part of the local sum whose token counts were our estimates, not provider reports."""
    unknown_entries: int
    """Entries with unknown usage in the window: the truth is at least ``used_units``."""
    entries: int
    cost_usd: float | None
    """Known cost in the window; None when no entry reported a cost."""
    cost_unknown_entries: int

    @property
    def remaining(self) -> float | None:
        return None if self.limit is None else self.limit - self.used_units


class _Totals:
    __slots__ = (
        "by_tag",
        "cost",
        "cost_unknown",
        "end",
        "entries",
        "estimated_units",
        "reported_bounds",
        "signal",
        "since_signal",
        "start",
        "units",
        "unknown",
    )

    def __init__(self) -> None:
        self.start: float | None = None
        self.end: float | None = None
        self.reported_bounds = False
        self.reset(None, None)

    def reset(self, start: float | None, end: float | None) -> None:
        self.start, self.end = start, end
        self.units = 0.0
        self.estimated_units = 0.0
        self.unknown = 0
        self.entries = 0
        self.cost: float | None = None
        self.cost_unknown = 0
        self.by_tag: dict[tuple[TagKind, str], float] = {}
        self.signal: RateLimitSignal | None = None
        self.since_signal = 0.0

    def covers(self, at: float) -> bool:
        return self.start is not None and self.end is not None and self.start <= at < self.end

    def add(self, entry: UsageEntry, tags: tuple[tuple[TagKind, str], ...] = ()) -> None:
        self.entries += 1
        if entry.usage is None or entry.units is None:
            self.unknown += 1
            self.cost_unknown += 1
            return
        self.units += entry.units
        if not entry.reported:
            self.estimated_units += entry.units
        if entry.usage.cost_usd is None:
            self.cost_unknown += 1
        else:
            self.cost = (self.cost or 0.0) + entry.usage.cost_usd
        for tag in tags:
            self.by_tag[tag] = self.by_tag.get(tag, 0.0) + entry.units
        if self.signal is not None and entry.at > self.signal.at:
            self.since_signal += entry.units


def _at(entry: UsageEntry) -> float:
    return entry.at


def _counts(window: Window, family: ModelFamily) -> bool:
    return window.family is None or window.family is family


class UsageLedger:
    """Usage entries and the running totals of every window (see the module docstring)."""

    def __init__(self, plan: SubscriptionPlan) -> None:
        self.plan = plan
        self._entries: list[UsageEntry] = []
        self._head = 0
        self._totals: dict[Window, _Totals] = {w: _Totals() for w in ALL_WINDOWS}
        self.other_signals: dict[str, RateLimitSignal] = {}
        """Newest signal of each type that meters no window (e.g. ``overage``)."""

    def __len__(self) -> int:
        return len(self._entries) - self._head

    def record(
        self,
        at: float,
        family: ModelFamily,
        usage: Usage | None,
        *,
        reported: bool,
        model: str | None = None,
        project: str | None = None,
        agent: str | None = None,
        step: str | None = None,
        attempt_id: str | None = None,
    ) -> UsageEntry:
        """Meter ``usage`` (None: unknown) and return the entry (what a journal event holds)."""
        entry = UsageEntry(
            at=at,
            family=family,
            usage=usage,
            units=None if usage is None else self.plan.units(family, usage),
            reported=reported,
            model=model,
            project=project,
            agent=agent,
            step=step,
            attempt_id=attempt_id,
        )
        self.add(entry)
        return entry

    def add(self, entry: UsageEntry) -> None:
        """Fold one entry (also the replay path: the entry comes from the journal)."""
        if len(self) == 0 or entry.at >= self._entries[-1].at:
            self._entries.append(entry)
        else:
            bisect.insort_right(self._entries, entry, lo=self._head, key=_at)
        tags = tuple(entry.tags())
        for window in windows_for(entry.family):
            totals = self._totals[window]
            self._roll(window, totals, entry.at)
            if totals.covers(entry.at):
                totals.add(entry, tags)

    def observe_signal(self, signal: RateLimitSignal) -> Window | None:
        """Apply a provider signal; returns the window it now governs, None if ignored."""
        window = signal_window(signal.window_type)
        if window is None:
            held = self.other_signals.get(signal.window_type)
            if held is None or signal.at >= held.at:
                self.other_signals[signal.window_type] = signal
            return None
        totals = self._totals[window]
        if totals.signal is not None and signal.at < totals.signal.at:
            return None
        if signal.resets_at is not None:
            if signal.resets_at <= signal.at:
                return None
            if totals.start is not None and signal.resets_at <= totals.start:
                return None  # about a window we have already left
            end = signal.resets_at
            if totals.end is None or abs(totals.end - end) > BOUNDS_TOLERANCE_S:
                self._retotal(window, totals, end - self.plan.window_length(window.kind), end)
                totals.reported_bounds = True
        elif not totals.covers(signal.at):
            self._roll(window, totals, signal.at)
        totals.signal = signal
        totals.since_signal = sum(
            e.units
            for e in self._slice(signal.at, totals.end, after=True)
            if e.units is not None and _counts(window, e.family) and totals.covers(e.at)
        )
        return window

    def figure(self, window: Window, now: float, limit: float | None = None) -> WindowFigure:
        """The window's use at ``now``; ``limit`` (effective) turns utilization into units."""
        totals = self._totals[window]
        if totals.end is None or now >= totals.end:
            if window.kind is WindowKind.SESSION:
                return _empty(window, None, None, limit)
            start, end = self._next_weekly(totals, now)
            return _empty(window, start, end, limit)
        signal = totals.signal
        if signal is not None and signal.resets_at is not None and signal.resets_at <= now:
            signal = None
        used, utilization, source = totals.units, None, Source.ESTIMATED
        if limit is not None:
            utilization = used / limit
        if signal is not None:
            since = totals.since_signal
            source = Source.REPORTED if since == 0 else Source.REPORTED_PLUS_ESTIMATE
            utilization = signal.utilization
            if limit is not None:
                used = signal.utilization * limit + since
                utilization = used / limit
        return WindowFigure(
            window=window,
            start=totals.start,
            end=totals.end,
            used_units=used,
            limit=limit,
            utilization=utilization,
            source=source,
            reported_at=None if signal is None else signal.at,
            units_since_report=0.0 if signal is None else totals.since_signal,
            estimated_units=totals.estimated_units,
            unknown_entries=totals.unknown,
            entries=totals.entries,
            cost_usd=totals.cost,
            cost_unknown_entries=totals.cost_unknown,
        )

    def breakdown(self, window: Window, now: float, tag: TagKind) -> dict[str, float]:
        """Known units in the window at ``now`` per value of ``tag`` (project, agent, step)."""
        totals = self._totals[window]
        if not totals.covers(now):
            return {}
        return {value: units for (kind, value), units in totals.by_tag.items() if kind is tag}

    def entries_between(self, start: float, end: float) -> list[UsageEntry]:
        """Entries with ``start <= at < end``, in time order."""
        return self._slice(start, end, after=False)

    def prune(self, now: float) -> int:
        """Forget entries older than the longest window and every open window; returns how many."""
        cutoff = now - LONGEST_WINDOW_S
        for totals in self._totals.values():
            if totals.start is not None and totals.end is not None and totals.end > now:
                cutoff = min(cutoff, totals.start)
        head = bisect.bisect_left(self._entries, cutoff, lo=self._head, key=_at)
        dropped = head - self._head
        self._head = head
        if self._head > 1024 and self._head * 2 > len(self._entries):
            del self._entries[: self._head]
            self._head = 0
        return dropped

    def _slice(self, start: float, end: float | None, *, after: bool) -> list[UsageEntry]:
        find = bisect.bisect_right if after else bisect.bisect_left
        lo = find(self._entries, start, lo=self._head, key=_at)
        hi = (
            len(self._entries)
            if end is None
            else bisect.bisect_left(self._entries, end, lo=lo, key=_at)
        )
        return self._entries[lo:hi]

    def _roll(self, window: Window, totals: _Totals, at: float) -> None:
        """Open the window instance that ``at`` falls in, if the current one has ended."""
        if totals.end is not None and at < totals.end:
            return
        if window.kind is WindowKind.SESSION:
            totals.reset(at, at + self.plan.session_length_s)
            totals.reported_bounds = False
        else:
            totals.reset(*self._next_weekly(totals, at))

    def _next_weekly(self, totals: _Totals, at: float) -> tuple[float, float]:
        if totals.reported_bounds and totals.end is not None and at >= totals.end:
            start = totals.end + ((at - totals.end) // WEEK_S) * WEEK_S
            return start, start + WEEK_S  # the provider's schedule, extrapolated
        return weekly_window_bounds(at, self.plan.weekly_reset)

    def _retotal(self, window: Window, totals: _Totals, start: float, end: float) -> None:
        totals.reset(start, end)
        for entry in self._slice(start, end, after=False):
            if _counts(window, entry.family):
                totals.add(entry, tuple(entry.tags()))


def _empty(
    window: Window, start: float | None, end: float | None, limit: float | None
) -> WindowFigure:
    return WindowFigure(
        window=window,
        start=start,
        end=end,
        used_units=0.0,
        limit=limit,
        utilization=None if limit is None else 0.0,
        source=Source.ESTIMATED,
        reported_at=None,
        units_since_report=0.0,
        estimated_units=0.0,
        unknown_entries=0,
        entries=0,
        cost_usd=None,
        cost_unknown_entries=0,
    )
