"""Provider rate-limit signals: the provider's own account of a window.

Design note. The Claude Agent SDK emits a ``RateLimitEvent`` per window type with the
fraction of the limit used and the reset time. Those types map onto our windows:
``five_hour`` is the session window of all models, ``seven_day`` the weekly one,
``seven_day_opus`` / ``seven_day_sonnet`` a family's weekly window. ``overage`` and types
not known yet meter no window; they are kept for display, never dropped as errors
(older SDKs crashed on unknown message types; we do not repeat that).
"""

from __future__ import annotations

import msgspec

from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.windows import Window, WindowKind


class RateLimitSignal(msgspec.Struct, frozen=True, kw_only=True):
    """The provider's own account of a window (Claude Agent SDK ``RateLimitEvent``)."""

    window_type: str
    """five_hour | seven_day | seven_day_opus | seven_day_sonnet | overage | (future types)."""
    utilization: float
    """Fraction of the window's limit used, 0–1 (up to 1.5 tolerated: over the limit)."""
    resets_at: float | None
    """When the window resets (epoch seconds), if reported."""
    at: float
    """When the signal was received."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.utilization <= 1.5:
            raise ValueError(f"utilization must be a fraction, got {self.utilization}")


SIGNAL_WINDOWS: dict[str, Window] = {
    "five_hour": Window(kind=WindowKind.SESSION),
    "seven_day": Window(kind=WindowKind.WEEKLY),
    "seven_day_opus": Window(kind=WindowKind.WEEKLY, family=ModelFamily.OPUS),
    "seven_day_sonnet": Window(kind=WindowKind.WEEKLY, family=ModelFamily.SONNET),
}


def signal_window(window_type: str) -> Window | None:
    """The window a signal type describes; None for types that meter no window (overage)."""
    return SIGNAL_WINDOWS.get(window_type)
