"""Enforcement: capacity is reserved before an attempt starts, so parallel dispatches
cannot jointly overshoot a window.

Design note. ``CapacityBook.reserve`` admits an attempt only if, in every window its
family counts against (own session and weekly, shared session and weekly) that has a
limit::

    used + reserved + expected <= effective_limit * (1 - safety_margin)

where ``used`` is the ledger's figure (provider-reported when a signal is current) and
``reserved`` the sum of what running attempts still hold. Check and hold happen in one
call on the single-threaded fold, so two dispatches in one ``decide`` pass see each
other. While an attempt runs, its usage streams into the ledger and ``reconcile``
shrinks its hold to ``max(expected - actual, 0)``: used + reserved stays constant until
the attempt overruns its estimate; ``release`` drops the rest when it ends.

Invariant: as long as attempts use no more than they reserved and no limit is lowered,
used + reserved <= budget in every window at all times. Overruns and learned limit
drops (which we cannot undo) can push a window over; then nothing more is admitted to
it until it is back under (reset, or holds released).

A holding reservation counts against every *current* window, whatever instance it was
taken in: an attempt that runs across a reset spends in the new window.

A ``Refusal`` says why and when: ``possible_at`` is the latest reset among the windows
that only a reset can free (None if none), ``on_release`` that releasing holds would
free room (possibly earlier), ``TOO_LARGE`` that the attempt does not fit even an empty
window (route it to a cheaper family or split it), ``CONCURRENCY`` that the family is at
its cap of concurrent attempts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from enum import StrEnum

import msgspec

from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.ledger import Source, UsageLedger
from trafficcontrol.domain.capacity.limits import LearnedLimits, LearningPolicy, LimitCorrection
from trafficcontrol.domain.capacity.plans import SubscriptionPlan
from trafficcontrol.domain.capacity.windows import ALL_WINDOWS, Window, WindowKind, windows_for


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    attempt_id: str
    family: ModelFamily
    expected_units: float
    at: float
    windows: tuple[Window, ...]
    """The limited windows the reservation counts against."""


class RefusalReason(StrEnum):
    WINDOW_FULL = "window_full"
    """A window has no room until it resets."""
    RESERVED = "reserved"
    """Running attempts hold the room; it frees when they end."""
    TOO_LARGE = "too_large"
    """Does not fit even an empty window."""
    CONCURRENCY = "concurrency"
    """The family is at its cap of concurrent attempts."""
    RATE = "rate"
    """An API-key per-minute limit: room frees as the minute rolls on (``possible_at``)."""


_SEVERITY = {
    RefusalReason.RATE: 1,
    RefusalReason.TOO_LARGE: 3,
    RefusalReason.WINDOW_FULL: 2,
    RefusalReason.RESERVED: 1,
    RefusalReason.CONCURRENCY: 0,
}


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    reason: RefusalReason
    window: Window | None
    """The binding window (None for CONCURRENCY)."""
    possible_at: float | None
    """When a reset makes room; None when only releases can (or nothing can: TOO_LARGE)."""
    on_release: bool
    """Releasing held reservations would make room (maybe before ``possible_at``)."""
    needed: float
    available: float


class Headroom(msgspec.Struct, frozen=True, kw_only=True):
    """One window's state, as ``tc capacity`` and ``/metrics`` show it."""

    window: Window
    used: float
    source: Source
    reserved: float
    limit: float
    configured: float
    budget: float
    """limit * (1 - margin): what reservations may fill."""
    available: float
    resets_at: float | None


class _Hold:
    __slots__ = ("held", "reservation")

    def __init__(self, reservation: Reservation) -> None:
        self.reservation = reservation
        self.held = reservation.expected_units


class CapacityBook:
    """Reservations against the ledger's windows and the learned limits."""

    def __init__(
        self,
        plan: SubscriptionPlan,
        ledger: UsageLedger,
        policy: LearningPolicy | None = None,
    ) -> None:
        self.plan = plan
        self.ledger = ledger
        self.limits = LearnedLimits(
            {w: plan.limit(w) for w in ALL_WINDOWS},
            {kind: plan.window_length(kind) for kind in WindowKind},
            policy,
        )
        self._holds: dict[str, _Hold] = {}
        self._reserved: dict[Window, float] = {w: 0.0 for w in ALL_WINDOWS}
        self._active: Counter[ModelFamily] = Counter()

    def budget(self, window: Window) -> float | None:
        limit = self.limits.effective(window)
        return None if limit is None else limit * (1.0 - self.plan.safety_margin)

    def used(self, window: Window, now: float) -> float:
        return self.ledger.figure(window, now, self.limits.effective(window)).used_units

    def reserved(self, window: Window) -> float:
        return self._reserved[window]

    def active(self, family: ModelFamily) -> int:
        return self._active[family]

    def reservation(self, attempt_id: str) -> Reservation | None:
        hold = self._holds.get(attempt_id)
        return None if hold is None else hold.reservation

    def check(
        self,
        family: ModelFamily,
        expected_units: float,
        now: float,
        pending: Mapping[Window, float] | None = None,
        pending_active: Mapping[ModelFamily, int] | None = None,
    ) -> Refusal | None:
        """Would an attempt of ``family`` expecting ``expected_units`` fit? Mutates nothing.

        ``pending`` / ``pending_active`` are holds decided but not yet folded (the other
        dispatches of the same ``decide`` pass), so one pass cannot jointly overshoot."""
        if expected_units < 0:
            raise ValueError(f"expected_units must be >= 0, got {expected_units}")
        limited = tuple(w for w in windows_for(family) if self.budget(w) is not None)
        refusal = self._refusal(limited, expected_units, now, pending or {})
        if refusal is not None:
            return refusal
        cap = self.plan.family(family).max_concurrent
        active = self._active[family] + (pending_active or {}).get(family, 0)
        if cap is not None and active >= cap:
            return Refusal(
                reason=RefusalReason.CONCURRENCY,
                window=None,
                possible_at=None,
                on_release=True,
                needed=1,
                available=0,
            )
        return None

    def hold(
        self, attempt_id: str, family: ModelFamily, expected_units: float, now: float
    ) -> Reservation:
        """Hold ``expected_units`` unconditionally (the fold of a journaled dispatch, which
        ``check`` admitted). Idempotent per attempt id."""
        held = self._holds.get(attempt_id)
        if held is not None:
            return held.reservation
        reservation = Reservation(
            attempt_id=attempt_id,
            family=family,
            expected_units=max(expected_units, 0.0),
            at=now,
            windows=tuple(w for w in windows_for(family) if self.budget(w) is not None),
        )
        self._holds[attempt_id] = _Hold(reservation)
        for window in windows_for(family):
            self._reserved[window] += reservation.expected_units
        self._active[family] += 1
        return reservation

    def reserve(
        self, attempt_id: str, family: ModelFamily, expected_units: float, now: float
    ) -> Reservation | Refusal:
        """Hold ``expected_units`` for an attempt if every window has room; else say why not.

        Idempotent: reserving an id that already holds returns its reservation.
        """
        held = self._holds.get(attempt_id)
        if held is not None:
            return held.reservation
        refusal = self.check(family, expected_units, now)
        if refusal is not None:
            return refusal
        return self.hold(attempt_id, family, expected_units, now)

    def reconcile(self, attempt_id: str, actual_units: float) -> float | None:
        """The attempt has used ``actual_units`` so far (already in the ledger): its hold
        shrinks to what its estimate has left. Returns the overrun (actual - expected,
        > 0 when it used more than reserved), None for an unknown id."""
        hold = self._holds.get(attempt_id)
        if hold is None:
            return None
        expected = hold.reservation.expected_units
        self._set_held(hold, max(expected - actual_units, 0.0))
        return actual_units - expected

    def release(self, attempt_id: str) -> Reservation | None:
        """The attempt ended: drop what it still holds. Unknown ids are ignored."""
        hold = self._holds.pop(attempt_id, None)
        if hold is None:
            return None
        self._set_held(hold, 0.0)
        self._active[hold.reservation.family] -= 1
        return hold.reservation

    def observe_limit_hit(
        self, window: Window, used_at_hit: float, now: float
    ) -> LimitCorrection | None:
        """The provider refused with ``used_at_hit`` used in ``window``: learn the limit."""
        return self.limits.observe_limit_hit(window, used_at_hit, now)

    def probe_up(self, window: Window, now: float) -> LimitCorrection | None:
        """Raise a learned limit one step if a full window passed without a hit."""
        return self.limits.probe_up(window, now)

    def headroom(self, window: Window, now: float) -> Headroom | None:
        """The window's state at ``now``; None when it has no limit."""
        limit = self.limits.effective(window)
        configured = self.limits.configured(window)
        if limit is None or configured is None:
            return None
        figure = self.ledger.figure(window, now, limit)
        budget = limit * (1.0 - self.plan.safety_margin)
        reserved = self._reserved[window]
        return Headroom(
            window=window,
            used=figure.used_units,
            source=figure.source,
            reserved=reserved,
            limit=limit,
            configured=configured,
            budget=budget,
            available=budget - figure.used_units - reserved,
            resets_at=figure.end,
        )

    def statistics(self, now: float) -> list[Headroom]:
        """Every limited window's state (for the CLI and /metrics)."""
        return [h for w in ALL_WINDOWS if (h := self.headroom(w, now)) is not None]

    def _set_held(self, hold: _Hold, held: float) -> None:
        delta = held - hold.held
        hold.held = held
        for window in windows_for(hold.reservation.family):
            self._reserved[window] = max(self._reserved[window] + delta, 0.0)

    def _refusal(
        self,
        windows: tuple[Window, ...],
        expected: float,
        now: float,
        pending: Mapping[Window, float],
    ) -> Refusal | None:
        refusals: list[Refusal] = []
        for window in windows:
            limit = self.limits.effective(window)
            assert limit is not None
            budget = limit * (1.0 - self.plan.safety_margin)
            figure = self.ledger.figure(window, now, limit)
            used = figure.used_units
            reserved = self._reserved[window] + pending.get(window, 0.0)
            if used + reserved + expected <= budget:
                continue
            if expected > budget:
                reason, possible_at = RefusalReason.TOO_LARGE, None
            elif used + expected <= budget:
                reason, possible_at = RefusalReason.RESERVED, None
            else:
                reason, possible_at = RefusalReason.WINDOW_FULL, figure.end
            refusals.append(
                Refusal(
                    reason=reason,
                    window=window,
                    possible_at=possible_at,
                    on_release=reserved > 0,
                    needed=expected,
                    available=budget - used - reserved,
                )
            )
        if not refusals:
            return None
        worst = max(refusals, key=lambda r: (_SEVERITY[r.reason], r.possible_at or 0.0))
        on_release = worst.reason is not RefusalReason.TOO_LARGE and any(
            r.on_release for r in refusals
        )
        return msgspec.structs.replace(worst, on_release=on_release)
