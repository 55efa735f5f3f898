"""What the loop reports on itself: fixed-bucket histograms and counters, cheap to keep.

Design note. The loop records a few durations (journal commits, dispatch latency) and
when it last turned; readers (``/metrics``, ``/healthz``, the profiler) look at these
plain numbers whenever they like, on the loop's thread, without the loop ever waiting
for them (trio's ``statistics()`` habit). A histogram is a bucket search and two
additions per observation: no allocation, no lock, no dependency on a metrics library
below the entry points. Committed events are handed to ``committed`` listeners (the
dashboard's live push) right after the append returns: they must not block.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from trafficcontrol.domain.events import AnyEvent

DURATION_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds (seconds) shared by the loop's histograms; +Inf is implied."""


@dataclass(slots=True)
class Histogram:
    """Counts per upper bound (the last count is +Inf), their sum and number."""

    bounds: Sequence[float] = DURATION_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) for every bound and +Inf, as Prometheus has them."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (None: nothing observed)."""
        if not self.count:
            return None
        rank = q * self.count
        for bound, seen in self.cumulative():
            if seen >= rank:
                return bound
        return float("inf")


@dataclass(frozen=True, slots=True)
class SlowSpan:
    name: str
    seconds: float
    at: float
    """Monotonic time it ended."""


SLOW_AFTER_S: dict[str, float] = {
    "commit": 0.25,
    "decide": 0.1,
    "fold": 0.1,
    "requests": 0.5,
    "snapshot": 2.0,
    "workspace": 5.0,
    "http": 0.5,
}
"""Default thresholds of a slow span, per operation (``[profile] slow_after_s``): well
above what ``./scripts/bench`` measures for each on a 2-core machine."""


@dataclass(slots=True)
class Spans:
    """Time per named operation, always on: a clock read at each end and a histogram
    update (``./scripts/bench scheduling --spans-off`` measures what that costs), plus a
    bounded ring of the recent slow ones."""

    enabled: bool = True
    slow_after_s: dict[str, float] = field(default_factory=lambda: dict(SLOW_AFTER_S))
    histograms: dict[str, Histogram] = field(default_factory=dict)
    slow: deque[SlowSpan] = field(default_factory=lambda: deque(maxlen=200))
    slow_listeners: list[Callable[[SlowSpan], None]] = field(default_factory=list)

    def observe(self, name: str, started: float, ended: float) -> None:
        """One ``name`` operation from ``started`` to ``ended`` (monotonic seconds)."""
        if not self.enabled:
            return
        seconds = ended - started
        histogram = self.histograms.get(name)
        if histogram is None:
            histogram = self.histograms[name] = Histogram()
        histogram.observe(seconds)
        threshold = self.slow_after_s.get(name)
        if threshold is not None and seconds >= threshold:
            span = SlowSpan(name, seconds, ended)
            self.slow.append(span)
            for listener in self.slow_listeners:
                listener(span)

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        """Per operation: count, total, p50, p99 (bucket bounds) and the slow threshold."""
        return {
            name: {
                "count": h.count,
                "total_s": h.total,
                "p50_s": h.quantile(0.5),
                "p99_s": h.quantile(0.99),
                "slow_after_s": self.slow_after_s.get(name),
            }
            for name, h in sorted(self.histograms.items())
        }


CommitListener = Callable[[int, list[AnyEvent]], None]
"""Told (first sequence number, events) after every append that returned."""


@dataclass(slots=True)
class LoopStats:
    """The loop's own figures (module notes)."""

    turns: int = 0
    last_turn: float | None = None
    """Monotonic time the loop last began a turn (None: it has not run yet)."""
    recovered: bool = False
    """The state is recovered and the orchestrator has started."""
    commit_seconds: Histogram = field(default_factory=Histogram)
    dispatch_latency_seconds: Histogram = field(default_factory=Histogram)
    """From a task becoming ready to its agent being started."""
    listeners: list[CommitListener] = field(default_factory=list)
    spans: Spans = field(default_factory=Spans)
    """Time per orchestrator operation (decide, fold, commit, snapshot, workspace, …)."""

    def turned(self, monotonic: float) -> None:
        self.turns += 1
        self.last_turn = monotonic

    def committed(self, first_seq: int, events: list[AnyEvent]) -> None:
        for listener in self.listeners:
            listener(first_seq, events)
