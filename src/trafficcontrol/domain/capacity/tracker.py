"""The capacity part of the folded state: ledger, reservations, learned limits, forecasts.

Design note. ``Capacity`` ties the capacity modules to the journal. ``state.apply``
calls its fold methods for the events that carry capacity facts, all stamped with the
event's time, so replay rebuilds exactly the live object:

- usage: ``TurnUsageReported`` (per model turn, reported) and the part of an
  ``AttemptFinished``'s usage the turns did not already report (Claude Code's output
  tokens are final only in the result); an attempt that ran a session but whose usage
  nobody reported is an *unknown* entry, never zero;
- reservations: ``AttemptDispatched`` holds its ``expected_units``, each usage entry of
  the attempt reconciles the hold, ``AttemptFinished`` releases it and teaches the
  cost model what the attempt really used;
- provider signals: ``RateLimitObserved`` feeds the ledger (official figures first);
- limit hits: an ``AttemptFinished`` with ``limit_hit`` records the evidence (how much
  the window held when the provider refused) as a *pending hit*; ``decide`` turns it
  into a ``LimitCorrected`` event, whose fold moves the effective limit. Probes up are
  decided the same way. So every correction is a journal event with its evidence;
- warnings: ``decide`` asks ``warnings_due`` (pure), the shell journals
  ``CapacityWarned``, its fold remembers them so they fire once per window instance.

Queries (``admit``, ``expected``, ``scarce``, ``probes``, ``warnings_due``) never
mutate. ``snapshot`` / ``restore`` carry the config, the ledger's live entries, the
newest correction per window, pending hits and warnings; holds are rebuilt from the
running attempts' records (``resume_running``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import msgspec

from trafficcontrol.domain.capacity.costs import (
    CostEstimate,
    CostKey,
    CostModel,
    CostPrior,
    SizeBucket,
)
from trafficcontrol.domain.capacity.enforce import CapacityBook, Refusal, RefusalReason
from trafficcontrol.domain.capacity.families import ModelFamily, model_family
from trafficcontrol.domain.capacity.forecast import Forecaster, Projection
from trafficcontrol.domain.capacity.ledger import UsageEntry, UsageLedger, WindowFigure
from trafficcontrol.domain.capacity.limits import LearningPolicy, LimitCorrection
from trafficcontrol.domain.capacity.per_minute import MINUTE_S, minute_refusal, minute_use
from trafficcontrol.domain.capacity.plans import ApiKeyPlan, SubscriptionPlan
from trafficcontrol.domain.capacity.signals import RateLimitSignal, signal_window
from trafficcontrol.domain.capacity.warnings import THRESHOLDS, CapacityWarning, WarningTracker
from trafficcontrol.domain.capacity.windows import ALL_WINDOWS, Window, windows_for
from trafficcontrol.domain.model import LimitHit, Usage

DEFAULT_STEP = "task"
"""Workflow step of an attempt that runs no workflow."""
_PRUNE_EVERY_S = 86400.0
_KEEP_WARNINGS = 50


class CapacityConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What the fold needs to meter usage (journaled when it changes: replay uses it)."""

    plan: SubscriptionPlan = msgspec.field(default_factory=SubscriptionPlan)
    prior: CostPrior = msgspec.field(default_factory=CostPrior)
    learning: LearningPolicy = msgspec.field(default_factory=LearningPolicy)
    thresholds: tuple[float, ...] = THRESHOLDS
    api_key: ApiKeyPlan | None = None
    """Per-minute limits of an API key (requests, input and output tokens per family)."""


class PendingHit(msgspec.Struct, frozen=True, kw_only=True):
    """A provider refusal not yet turned into a ``LimitCorrected`` event."""

    window: Window
    used_at_hit: float
    at: float
    attempt_id: str
    resets_at: float | None = None


class CapacitySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    config: CapacityConfig
    entries: list[UsageEntry]
    corrections: list[LimitCorrection]
    pending_hits: list[PendingHit]
    warnings: list[CapacityWarning]
    signals: list[RateLimitSignal]
    limit_hits: int = 0
    costs: list[tuple[CostKey, int, float, float]] = msgspec.field(default_factory=list)
    burn_rates: list[tuple[float | None, float, float, float, float, int]] = msgspec.field(
        default_factory=list
    )
    pruned_day: int | None = None


class _Run:
    __slots__ = ("family", "size", "step", "units", "unknown")

    def __init__(self, family: ModelFamily, size: SizeBucket, step: str) -> None:
        self.family = family
        self.size = size
        self.step = step
        self.units = 0.0
        self.unknown = False


def remainder(final: Usage, streamed: Usage | None) -> Usage | None:
    """What ``final`` holds beyond the turns already streamed (None: nothing more)."""
    if streamed is None:
        return final
    extra = Usage(
        input_tokens=max(final.input_tokens - streamed.input_tokens, 0),
        output_tokens=max(final.output_tokens - streamed.output_tokens, 0),
        cache_read_tokens=max(final.cache_read_tokens - streamed.cache_read_tokens, 0),
        cache_creation_tokens=max(final.cache_creation_tokens - streamed.cache_creation_tokens, 0),
        cost_usd=None
        if final.cost_usd is None
        else max(final.cost_usd - (streamed.cost_usd or 0.0), 0.0),
    )
    return extra if extra.total_tokens or extra.cost_usd else None


class Capacity:
    """See the module docstring."""

    def __init__(self, config: CapacityConfig | None = None) -> None:
        self.config = config or CapacityConfig()
        plan = self.config.plan
        self.ledger = UsageLedger(plan)
        self.book = CapacityBook(plan, self.ledger, self.config.learning)
        self.forecaster = Forecaster()
        self.costs = CostModel(plan, self.config.prior)
        self.tracker = WarningTracker(self.config.thresholds)
        self.corrections: dict[Window, LimitCorrection] = {}
        self.pending_hits: list[PendingHit] = []
        self.warnings: deque[CapacityWarning] = deque(maxlen=_KEEP_WARNINGS)
        self.signals: dict[str, RateLimitSignal] = {}
        self.limit_hits = 0
        self.warnings_total = 0
        """Warnings given so far (``warnings`` keeps only the newest)."""
        self._running: dict[str, _Run] = {}
        self.pruned_day: int | None = None
        """Entries older than every window are dropped at the first usage of each day."""
        api_key = self.config.api_key
        self.limited = (
            any(plan.limit(w) is not None for w in ALL_WINDOWS)
            or any(plan.family(f).max_concurrent is not None for f in ModelFamily)
            or (api_key is not None and bool(api_key.families))
        )
        """False: no window or concurrency limit is configured; ``admit`` always says yes."""

    # -- folds ------------------------------------------------------------------------
    def dispatched(
        self,
        attempt_id: str,
        model: str | None,
        expected_units: float | None,
        at: float,
        *,
        size: SizeBucket,
        step: str = DEFAULT_STEP,
    ) -> None:
        family = model_family(model)
        self._running[attempt_id] = _Run(family, size, step)
        if expected_units is not None:
            self.book.hold(attempt_id, family, expected_units, at)

    def usage(
        self,
        at: float,
        attempt_id: str,
        model: str | None,
        usage: Usage | None,
        *,
        reported: bool = True,
        project: str | None = None,
        agent: str | None = None,
    ) -> None:
        """One usage entry of a running (or just finished) attempt; None: unknown."""
        run = self._running.get(attempt_id)
        family = model_family(model) if model else (run.family if run else model_family(None))
        entry = self.ledger.record(
            at,
            family,
            usage,
            reported=reported,
            model=model,
            project=project,
            agent=agent,
            step=run.step if run else None,
            attempt_id=attempt_id,
        )
        self.forecaster.observe(at, family, entry.units)
        if run is not None:
            if entry.units is None:
                run.unknown = True
            else:
                run.units += entry.units
                self.book.reconcile(attempt_id, run.units)
        day = int(at // _PRUNE_EVERY_S)
        if day != self.pruned_day:
            self.pruned_day = day
            self.ledger.prune(at)

    def finished(self, attempt_id: str, *, learn: bool) -> None:
        """The attempt ended: release its hold; ``learn``: its usage teaches the cost model."""
        self.book.release(attempt_id)
        run = self._running.pop(attempt_id, None)
        if run is not None and learn and not run.unknown and run.units > 0:
            self.costs.observe(CostKey(step=run.step, family=run.family, size=run.size), run.units)

    def observe_signal(
        self, window_type: str, utilization: float | None, resets_at: float | None, at: float
    ) -> None:
        if utilization is None or not 0.0 <= utilization <= 1.5:
            return
        signal = RateLimitSignal(
            window_type=window_type, utilization=utilization, resets_at=resets_at, at=at
        )
        held = self.signals.get(window_type)
        if held is None or at >= held.at:
            self.signals[window_type] = signal
        self.ledger.observe_signal(signal)

    def limit_hit(self, attempt_id: str, model: str | None, hit: LimitHit, at: float) -> None:
        """The provider refused: remember how full the window was (see ``hit_corrections``)."""
        self.limit_hits += 1
        family = model_family(model)
        window = signal_window(hit.window) if hit.window else None
        if window is None or self.book.limits.configured(window) is None:
            window = self._tightest(family, at)
        if window is None:
            return  # no configured limit to learn: the reset time alone is used
        used = self.book.used(window, at)
        self.pending_hits.append(
            PendingHit(
                window=window,
                used_at_hit=used,
                at=at,
                attempt_id=attempt_id,
                resets_at=hit.resets_at,
            )
        )

    def correct(self, correction: LimitCorrection) -> None:
        self.book.limits.apply(correction)
        self.corrections[correction.window] = correction
        self.pending_hits = [
            h
            for h in self.pending_hits
            if not (h.window == correction.window and h.at <= correction.at)
        ]

    def warned(self, warning: CapacityWarning) -> None:
        self.tracker.remember(warning)
        self.warnings.append(warning)
        self.warnings_total += 1

    def reset_running(self) -> None:
        """Forget every hold (a rollback rebuilds them from the records)."""
        for attempt_id in list(self._running):
            self.book.release(attempt_id)
        self._running.clear()

    def resume_running(
        self,
        attempt_id: str,
        model: str | None,
        expected_units: float | None,
        started_at: float,
        *,
        size: SizeBucket,
        step: str = DEFAULT_STEP,
    ) -> None:
        """Rebuild a running attempt's hold from its record and its ledger entries."""
        self.dispatched(attempt_id, model, expected_units, started_at, size=size, step=step)
        run = self._running[attempt_id]
        for entry in self.ledger.entries_between(started_at, float("inf")):
            if entry.attempt_id == attempt_id:
                if entry.units is None:
                    run.unknown = True
                else:
                    run.units += entry.units
        self.book.reconcile(attempt_id, run.units)

    # -- queries ----------------------------------------------------------------------
    def expected(
        self, family: ModelFamily, size: SizeBucket, step: str = DEFAULT_STEP
    ) -> CostEstimate:
        return self.costs.expected(CostKey(step=step, family=family, size=size))

    def admit(
        self,
        family: ModelFamily,
        expected_units: float,
        now: float,
        pending: Mapping[Window, float] | None = None,
        pending_active: Mapping[ModelFamily, int] | None = None,
    ) -> Refusal | None:
        """None: an attempt expecting ``expected_units`` fits; else why not and until when.

        An estimate larger than a whole window's budget is clamped to it: such an attempt
        runs only in an empty window, rather than never."""
        if not self.limited:
            return None
        api_key = self.config.api_key
        if api_key is not None and family in api_key.families:
            recent = self.ledger.entries_between(now - MINUTE_S, now + 1e-6)
            use = minute_use(recent, family, now)
            rate = minute_refusal(api_key, use, now, self.config.plan.safety_margin)
            if rate is not None:
                return Refusal(
                    reason=RefusalReason.RATE,
                    window=None,
                    possible_at=rate.possible_at,
                    on_release=False,
                    needed=1,
                    available=rate.allowed - rate.used,
                )
        budgets = [b for w in windows_for(family) if (b := self.book.budget(w)) is not None]
        needed = min([expected_units, *budgets])
        return self.book.check(family, needed, now, pending, pending_active)

    def scarce(self, family: ModelFamily, now: float, ratio: float) -> bool:
        """Free share of the family's tightest window < ``ratio`` * share of its time left."""
        for window in windows_for(family)[:2]:  # the family's own windows
            headroom = self.book.headroom(window, now)
            if headroom is None or headroom.resets_at is None:
                continue
            figure = self.ledger.figure(window, now, headroom.limit)
            length = self.config.plan.window_length(window.kind)
            start = figure.start if figure.start is not None else now
            time_left = max(headroom.resets_at - now, 0.0) / max(headroom.resets_at - start, length)
            free = max(headroom.available, 0.0) / headroom.budget if headroom.budget else 0.0
            if free < ratio * time_left:
                return True
        return False

    def figure(self, window: Window, now: float) -> WindowFigure:
        return self.ledger.figure(window, now, self.book.limits.effective(window))

    def projection(self, window: Window, now: float) -> Projection:
        figure = self.figure(window, now)
        return self.forecaster.project(window, figure.used_units, figure.limit, figure.end, now)

    def hit_corrections(self) -> list[LimitCorrection]:
        """The ``LimitCorrected`` events the pending hits call for."""
        out = []
        for hit in self.pending_hits:
            correction = self.book.limits.correction_for_hit(hit.window, hit.used_at_hit, hit.at)
            if correction is not None:
                out.append(correction)
        return out

    def probes(self, now: float) -> list[LimitCorrection]:
        """One-step raises due for learned limits below their configured value."""
        out = []
        for window in self.corrections:
            effective = self.book.limits.effective(window)
            configured = self.book.limits.configured(window)
            if effective is None or configured is None or effective >= configured:
                continue
            correction = self.book.limits.correction_for_probe(window, now)
            if correction is not None:
                out.append(correction)
        return out

    def warnings_due(self, now: float) -> list[CapacityWarning]:
        if not self.limited:
            return []
        out: list[CapacityWarning] = []
        for window in ALL_WINDOWS:
            if self.book.limits.effective(window) is None:
                continue
            figure = self.figure(window, now)
            if figure.entries == 0 and figure.reported_at is None:
                continue
            projection = self.forecaster.project(
                window, figure.used_units, figure.limit, figure.end, now
            )
            out.extend(self.tracker.pending(figure, projection, now))
        return out

    def running_units(self, attempt_id: str) -> float | None:
        run = self._running.get(attempt_id)
        return None if run is None or run.unknown else run.units

    def _tightest(self, family: ModelFamily, now: float) -> Window | None:
        best: tuple[float, Window] | None = None
        for window in windows_for(family):
            limit = self.book.limits.effective(window)
            if limit is None:
                continue
            share = self.book.used(window, now) / limit
            if best is None or share > best[0]:
                best = (share, window)
        return None if best is None else best[1]

    # -- snapshots --------------------------------------------------------------------
    def snapshot(self) -> CapacitySnapshot:
        return CapacitySnapshot(
            config=self.config,
            entries=self.ledger.entries_between(float("-inf"), float("inf")),
            corrections=list(self.corrections.values()),
            pending_hits=list(self.pending_hits),
            warnings=list(self.warnings),
            signals=sorted(self.signals.values(), key=lambda s: s.at),
            limit_hits=self.limit_hits,
            costs=self.costs.export(),
            burn_rates=self.forecaster.export(),
            pruned_day=self.pruned_day,
        )

    @classmethod
    def restore(cls, data: CapacitySnapshot) -> Capacity:
        capacity = cls(data.config)
        for entry in data.entries:
            capacity.ledger.add(entry)
        if data.burn_rates:
            capacity.forecaster.load(data.burn_rates)
        capacity.costs.load(data.costs)
        for signal in data.signals:
            capacity.signals[signal.window_type] = signal
            capacity.ledger.observe_signal(signal)
        for correction in data.corrections:
            capacity.correct(correction)
        capacity.pending_hits = list(data.pending_hits)
        for warning in data.warnings:
            capacity.warned(warning)
        capacity.limit_hits = data.limit_hits
        capacity.pruned_day = data.pruned_day
        return capacity
