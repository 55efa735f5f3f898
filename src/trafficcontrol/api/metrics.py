"""``/metrics``: the folded state and the loop's own figures in Prometheus' text format.

Design note. Nothing is counted on the hot path for Prometheus: a custom collector
reads the state and ``LoopStats`` when scraped (on the loop, between two turns), so the
numbers agree with ``tc status --json`` for the same state by construction, and a
restart cannot lose a counter — the ``_total`` figures are folds of the journal
(attempts ended, usage reported), not process-local tallies. Names follow Prometheus'
conventions: the ``tc_`` prefix, base units (seconds, ratios), ``_total`` counters.
``tc_event_loop_lag_seconds`` comes from ``LoopLag``, a task that asks the loop to
wake it every ``interval_s`` and records how late it woke.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from trafficcontrol.api.source import Source
from trafficcontrol.cli.capacity_report import window_dict
from trafficcontrol.domain.breakers import BreakerState
from trafficcontrol.domain.capacity.families import model_family
from trafficcontrol.domain.capacity.windows import ALL_WINDOWS
from trafficcontrol.domain.model import TaskState
from trafficcontrol.domain.rotation import RotationConfig
from trafficcontrol.runtime.stats import Histogram

ATTEMPT_BUCKETS_S = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
    7200.0,
)
"""Agents run for seconds to hours."""
BREAKER_VALUES = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}
TOKEN_KINDS = ("input", "output", "cache_creation", "cache_read")


class LoopLag:
    """How late the loop runs a timer: a stalled loop shows here first."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.last_s = 0.0
        self.max_s = 0.0

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.interval_s)  # the measurement itself
            lag = max(0.0, time.monotonic() - started - self.interval_s)
            self.last_s = lag
            self.max_s = max(self.max_s, lag)


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets = [(_bound(b), float(n)) for b, n in histogram.cumulative()]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=histogram.total)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class StateCollector(Collector):
    """The metrics of one source (module notes)."""

    def __init__(
        self, source: Source, lag: LoopLag | None = None, rotation: RotationConfig | None = None
    ) -> None:
        self._source = source
        self._lag = lag
        self._rotation = rotation or RotationConfig()

    def describe(self) -> list[Metric]:
        return []  # collected fresh each scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        state, stats = self._source.state, self._source.stats
        now = time.time()
        tasks = GaugeMetricFamily("tc_tasks", "Tasks by state.", labels=["state"])
        counts = state.counts
        for task_state in TaskState:
            tasks.add_metric([task_state.value], float(counts[task_state]))
        yield tasks

        ended: Counter[tuple[str, str, str]] = Counter()
        durations = Histogram(bounds=ATTEMPT_BUCKETS_S)
        units: Counter[tuple[str, str]] = Counter()
        plan = state.capacity.config.plan
        for attempt in state.attempts.values():
            usage = attempt.usage if attempt.usage is not None else attempt.turn_usage
            if usage is not None:
                family = model_family(attempt.model)
                weights = plan.weights(family)
                for kind in TOKEN_KINDS:
                    tokens = getattr(usage, f"{kind}_tokens")
                    units[(family.value, kind)] += (
                        weights.family_factor * getattr(weights, kind) * tokens
                    )
            if attempt.outcome is None or attempt.ended_at is None:
                continue
            ended[(attempt.backend, attempt.model or "", attempt.outcome.value)] += 1
            durations.observe(max(0.0, attempt.ended_at - attempt.started_at))
        attempts = CounterMetricFamily(
            "tc_attempts", "Attempts ended, by outcome.", labels=["backend", "model", "outcome"]
        )
        for labels, n in sorted(ended.items()):
            attempts.add_metric(list(labels), float(n))
        yield attempts
        yield _histogram(
            "tc_attempt_duration_seconds", "From dispatch to the agent's end.", durations
        )
        usage_family = CounterMetricFamily(
            "tc_usage_units",
            "Usage units the agents' reported tokens weigh, by model family and token kind.",
            labels=["family", "kind"],
        )
        for (family_label, kind), value in sorted(units.items()):
            usage_family.add_metric([family_label, kind], value)
        yield usage_family

        yield _histogram(
            "tc_dispatch_latency_seconds",
            "From a task becoming ready to its agent being started (this process).",
            stats.dispatch_latency_seconds,
        )
        yield _histogram(
            "tc_journal_commit_seconds",
            "One group commit to the journal (this process).",
            stats.commit_seconds,
        )

        remaining = GaugeMetricFamily(
            "tc_capacity_remaining_ratio",
            "The share of each capacity window's limit still free.",
            labels=["window"],
        )
        for window in ALL_WINDOWS:
            figures = window_dict(state.capacity, window, now)
            if figures is None:
                continue
            utilization = figures["utilization"]
            if utilization is not None:
                remaining.add_metric([figures["window"]], max(0.0, 1.0 - float(utilization)))
        yield remaining

        breakers = GaugeMetricFamily(
            "tc_breaker_state",
            "Circuit breakers: 0 closed, 1 half-open, 2 open.",
            labels=["backend", "family"],
        )
        for record in state.resilience.breakers.values():
            backend, _, breaker_family = record.key.partition("/")
            breakers.add_metric([backend, breaker_family], BREAKER_VALUES[record.state])
        yield breakers

        context = GaugeMetricFamily(
            "tc_context_utilisation_ratio",
            "Running sessions' context, as a share of their window.",
            labels=["session"],
        )
        for attempt in state.running.values():
            if attempt.context_tokens is not None:
                window_tokens = self._rotation.window_for(attempt.model)
                context.add_metric([attempt.id], attempt.context_tokens / window_tokens)
        yield context

        lag = GaugeMetricFamily(
            "tc_event_loop_lag_seconds", "How late the event loop last ran a timer."
        )
        lag.add_metric([], self._lag.last_s if self._lag is not None else 0.0)
        yield lag
        info: Any = GaugeMetricFamily(
            "tc_journal_events", "Events in the journal (its last sequence number)."
        )
        info.add_metric([], float(state.seq))
        yield info
