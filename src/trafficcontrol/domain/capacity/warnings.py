"""Capacity warnings: thresholds crossed and projected overruns, once per window instance.

Design note. Warnings are values (``CapacityWarning``) that the caller journals and
hands to the live view and the notifiers; the text is derived from them, never the
other way round. ``WarningTracker`` remembers, per window *instance* (window and its
start), which thresholds already fired, so a figure hovering around 70% warns once,
and a new window re-arms everything. A projected overrun warns once per instance too.
When usage jumps past several thresholds at once, only the highest is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import msgspec

from trafficcontrol.domain.capacity.forecast import Projection
from trafficcontrol.domain.capacity.ledger import Source, WindowFigure
from trafficcontrol.domain.capacity.windows import Window

THRESHOLDS: tuple[float, ...] = (0.5, 0.7, 0.85, 0.95)


class WarningKind(StrEnum):
    THRESHOLD = "threshold"
    """Usage crossed a fraction of the window's limit."""
    PROJECTED_OVERRUN = "projected_overrun"
    """At the current burn rate the limit is reached before the window resets."""


class CapacityWarning(msgspec.Struct, frozen=True, kw_only=True):
    kind: WarningKind
    window: Window
    at: float
    used: float
    limit: float
    utilization: float
    source: Source
    """Whether ``used`` is the provider's figure or our estimate."""
    threshold: float | None = None
    """The threshold crossed (THRESHOLD warnings)."""
    resets_at: float | None = None
    limit_at: float | None = None
    """Projected time of reaching the limit (PROJECTED_OVERRUN warnings)."""
    limit_at_earliest: float | None = None
    window_start: float | None = None
    """Start of the window instance it was about (one warning per threshold per instance)."""

    @property
    def text(self) -> str:
        where = f"{self.window.label} at {self.utilization:.0%} ({self.source.value})"
        if self.kind is WarningKind.THRESHOLD:
            return f"capacity {where}: crossed {self.threshold:.0%}"
        return f"capacity {where}: projected to reach its limit before it resets"


def crossed(
    utilization: float, already: frozenset[float], thresholds: Sequence[float]
) -> float | None:
    """The highest threshold reached and not yet warned about, or None."""
    reached = [t for t in thresholds if utilization >= t and t not in already]
    return max(reached) if reached else None


class WarningTracker:
    """Emits each warning once per window instance."""

    def __init__(self, thresholds: Sequence[float] = THRESHOLDS) -> None:
        self.thresholds = tuple(sorted(thresholds))
        self._fired: dict[Window, tuple[float | None, frozenset[float], bool]] = {}

    def pending(
        self, figure: WindowFigure, projection: Projection | None, now: float
    ) -> list[CapacityWarning]:
        """Warnings ``figure`` (and its projection, if given) calls for; mutates nothing."""
        limit = figure.limit
        if limit is None or limit <= 0:
            return []
        start, fired, overrun = self._fired.get(figure.window, (None, frozenset(), False))
        if start != figure.start:
            fired, overrun = frozenset(), False
        utilization = figure.used_units / limit
        base = CapacityWarning(
            kind=WarningKind.THRESHOLD,
            window=figure.window,
            at=now,
            used=figure.used_units,
            limit=limit,
            utilization=utilization,
            source=figure.source,
            resets_at=figure.end,
            window_start=figure.start,
        )
        out: list[CapacityWarning] = []
        top = crossed(utilization, fired, self.thresholds)
        if top is not None:
            out.append(msgspec.structs.replace(base, threshold=top))
        if not overrun and projection is not None and projection.crosses_before_reset:
            out.append(
                msgspec.structs.replace(
                    base,
                    kind=WarningKind.PROJECTED_OVERRUN,
                    limit_at=projection.limit_at,
                    limit_at_earliest=projection.limit_at_earliest,
                )
            )
        return out

    def remember(self, warning: CapacityWarning) -> None:
        """``warning`` was given (live, or replayed from the journal): do not repeat it."""
        start, fired, overrun = self._fired.get(warning.window, (None, frozenset(), False))
        if start != warning.window_start:
            fired, overrun = frozenset(), False
        if warning.kind is WarningKind.THRESHOLD and warning.threshold is not None:
            fired = fired | {t for t in self.thresholds if t <= warning.threshold}
        else:
            overrun = True
        self._fired[warning.window] = (warning.window_start, fired, overrun)

    def check(
        self, figure: WindowFigure, projection: Projection | None, now: float
    ) -> list[CapacityWarning]:
        """New warnings for ``figure`` (and its projection, if given) at ``now``."""
        out = self.pending(figure, projection, now)
        for warning in out:
            self.remember(warning)
        return out
