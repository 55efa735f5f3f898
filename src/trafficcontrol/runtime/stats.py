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

    def turned(self, monotonic: float) -> None:
        self.turns += 1
        self.last_turn = monotonic

    def committed(self, first_seq: int, events: list[AnyEvent]) -> None:
        for listener in self.listeners:
            listener(first_seq, events)
