"""Learned limits: the configured limit of a window, corrected by what the provider did.

Design note. The configured limits are guesses (the provider publishes no numbers in
our units). Two corrections, each returned as a ``LimitCorrection`` value carrying its
evidence, which the caller journals and replays through ``apply``:

- **Limit hit** (HTTP 429, "usage limit reached"): the provider refused with
  ``used_at_hit`` units in the window, so the true limit is about that. The effective
  limit drops (or rises) to it, capped by the configured limit and floored at
  ``floor_fraction`` of it (a mis-metered hit at 0 must not stop all work forever). The
  hit also sets a *ceiling*.
- **Probe up**: once a full window length has passed since the last correction, the
  limit may rise by ``probe_step`` (+2%), one step per call, never above the configured
  limit and, while the last hit is remembered, never above ``ceiling * (1 +
  max_over_hit)``. With ``max_over_hit`` below ``margin / (1 - margin)`` the budget
  (``effective * (1 - margin)``) then stays under the level that was hit, so a learned
  limit is not hit again while it is remembered.
- **Memory**: a hit is remembered for ``forget_after_windows`` window lengths; then
  probing resumes, so a limit the provider raised is found again, at the price of one
  more hit if it was not. A hit at the same level as the last one (within
  ``same_level``) doubles the memory (up to ``max_memory_windows``): a limit confirmed
  again and again is probed ever more rarely, and the time spent above it tends to zero.

Invariant: ``floor_fraction * configured <= effective <= configured``.
Rejected: multiplicative decrease on a hit (TCP-style halving) — the hit tells us the
level directly, halving throws away half the plan for a whole window.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import msgspec

from trafficcontrol.domain.capacity.windows import Window, WindowKind


class LearningPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How fast learned limits move."""

    probe_step: float = 0.02
    """Relative raise per quiet window."""
    max_over_hit: float = 0.03
    """How far above the last hit probing may go while the hit is remembered."""
    forget_after_windows: int = 6
    """Window lengths after which a hit no longer caps probing (doubles on a repeat)."""
    max_memory_windows: int = 96
    """Upper bound of the memory after repeated hits at the same level."""
    same_level: float = 0.05
    """Two hits within this relative distance confirm the same limit."""
    floor_fraction: float = 0.05
    """The effective limit never drops below this fraction of the configured one."""


class CorrectionReason(StrEnum):
    LIMIT_HIT = "limit_hit"
    PROBE = "probe"


class LimitCorrection(msgspec.Struct, frozen=True, kw_only=True):
    """A change of one window's effective limit, with its evidence (journal it)."""

    window: Window
    reason: CorrectionReason
    at: float
    previous: float
    effective: float
    configured: float
    used_at_hit: float | None = None
    """Units used in the window when the provider refused (LIMIT_HIT)."""
    ceiling: float | None = None
    """Level of the last hit (kept by probes, for replay)."""
    ceiling_at: float | None = None
    memory_windows: int | None = None
    """How many window lengths the last hit caps probing."""


class _Learned:
    __slots__ = ("ceiling", "ceiling_at", "changed_at", "effective", "memory")

    def __init__(self, effective: float, memory: int) -> None:
        self.effective = effective
        self.ceiling: float | None = None
        self.ceiling_at: float | None = None
        self.changed_at: float | None = None
        self.memory = memory


class LearnedLimits:
    """Effective limits per window: configured, then corrected by evidence."""

    def __init__(
        self,
        configured: Mapping[Window, float | None],
        window_lengths: Mapping[WindowKind, float],
        policy: LearningPolicy | None = None,
    ) -> None:
        self.policy = policy or LearningPolicy()
        self._configured = {w: v for w, v in configured.items() if v is not None}
        self._lengths = dict(window_lengths)
        base = self.policy.forget_after_windows
        self._learned = {w: _Learned(v, base) for w, v in self._configured.items()}

    def configured(self, window: Window) -> float | None:
        return self._configured.get(window)

    def effective(self, window: Window) -> float | None:
        learned = self._learned.get(window)
        return None if learned is None else learned.effective

    def correction_for_hit(
        self, window: Window, used_at_hit: float, now: float
    ) -> LimitCorrection | None:
        """The correction a limit hit implies; None for a window without a configured limit."""
        configured = self._configured.get(window)
        if configured is None:
            return None
        learned = self._learned[window]
        floor = configured * self.policy.floor_fraction
        effective = min(max(used_at_hit, floor), configured)
        memory = self.policy.forget_after_windows
        last = learned.ceiling
        if last is not None and abs(effective - last) <= self.policy.same_level * last:
            memory = min(learned.memory * 2, self.policy.max_memory_windows)
        return LimitCorrection(
            window=window,
            reason=CorrectionReason.LIMIT_HIT,
            at=now,
            previous=learned.effective,
            effective=effective,
            configured=configured,
            used_at_hit=used_at_hit,
            ceiling=effective,
            ceiling_at=now,
            memory_windows=memory,
        )

    def correction_for_probe(self, window: Window, now: float) -> LimitCorrection | None:
        """A one-step raise if a full window passed since the last change; else None."""
        configured = self._configured.get(window)
        if configured is None:
            return None
        learned = self._learned[window]
        length = self._lengths[window.kind]
        if learned.changed_at is not None and now - learned.changed_at < length:
            return None
        cap = configured
        ceiling, ceiling_at = learned.ceiling, learned.ceiling_at
        memory_s = learned.memory * length
        if ceiling is not None and ceiling_at is not None and now - ceiling_at < memory_s:
            cap = min(cap, ceiling * (1.0 + self.policy.max_over_hit))
        raised = min(cap, learned.effective * (1.0 + self.policy.probe_step))
        if raised <= learned.effective:
            return None
        return LimitCorrection(
            window=window,
            reason=CorrectionReason.PROBE,
            at=now,
            previous=learned.effective,
            effective=raised,
            configured=configured,
            ceiling=ceiling,
            ceiling_at=ceiling_at,
            memory_windows=learned.memory,
        )

    def apply(self, correction: LimitCorrection) -> None:
        """Fold a correction (live, or replayed from the journal)."""
        learned = self._learned.get(correction.window)
        if learned is None:
            return
        learned.effective = correction.effective
        learned.ceiling = correction.ceiling
        learned.ceiling_at = correction.ceiling_at
        learned.changed_at = correction.at
        if correction.memory_windows is not None:
            learned.memory = correction.memory_windows

    def observe_limit_hit(
        self, window: Window, used_at_hit: float, now: float
    ) -> LimitCorrection | None:
        correction = self.correction_for_hit(window, used_at_hit, now)
        if correction is not None:
            self.apply(correction)
        return correction

    def probe_up(self, window: Window, now: float) -> LimitCorrection | None:
        correction = self.correction_for_probe(window, now)
        if correction is not None:
            self.apply(correction)
        return correction
