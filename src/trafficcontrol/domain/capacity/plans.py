"""Plan profiles: what the user's Claude access allows, as typed config values.

Design note — the **usage unit**. Subscription limits are not published in tokens and
do not weigh every token alike, so windows are metered in *usage units*::

    units = family_factor * (input + output * 5 + cache_creation * 1.25 + cache_read * 0.1)

One unit is one uncached Sonnet input token; every other token kind and family is
weighted by its list price relative to that (output costs 5x input, a cache write
1.25x, a cache read 0.1x; Opus 5x Sonnet, Haiku 0.8/3 of it). Within a family units are
therefore proportional to cost, and across families they measure how fast each one
drains a shared window. The weights are config (``UnitWeights``): limits learned from
real limit hits (``limits``) absorb whatever the weights get wrong.

Two plan styles: ``ApiKeyPlan`` (per-minute request and token limits, per family, as
the API enforces them) and ``SubscriptionPlan`` (5-hour session and weekly windows in
units, per family and for all models together, plus concurrent-session caps).
Validation runs in ``__post_init__`` and raises ``ValueError``, which msgspec reports
as a ``ValidationError`` naming the field when config is decoded.
"""

from __future__ import annotations

import msgspec

from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.windows import (
    SESSION_S,
    WEEK_S,
    WeeklyReset,
    Window,
    WindowKind,
)
from trafficcontrol.domain.model import Usage


class UnitWeights(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """How one family's tokens turn into usage units."""

    input: float = 1.0
    """Units per uncached input token (before ``family_factor``)."""
    output: float = 5.0
    """Units per output token."""
    cache_creation: float = 1.25
    """Units per token written to the prompt cache."""
    cache_read: float = 0.1
    """Units per token read from the prompt cache."""
    family_factor: float = 1.0
    """Multiplies everything: how much faster than Sonnet this family drains a window."""

    def __post_init__(self) -> None:
        for name in ("input", "output", "cache_creation", "cache_read", "family_factor"):
            if getattr(self, name) < 0:
                raise ValueError(f"unit weight {name} must be >= 0")

    def units(self, usage: Usage) -> float:
        return self.family_factor * (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_creation_tokens * self.cache_creation
            + usage.cache_read_tokens * self.cache_read
        )


DEFAULT_WEIGHTS: dict[ModelFamily, UnitWeights] = {
    ModelFamily.OPUS: UnitWeights(family_factor=5.0),
    ModelFamily.SONNET: UnitWeights(),
    ModelFamily.HAIKU: UnitWeights(family_factor=0.8 / 3.0),
}


def _check_limit(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be > 0 (or unset for no limit), got {value}")


class FamilyPlan(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True
):
    """One model family's allowance under a subscription."""

    session_units: float | None = None
    """Limit of one 5-hour session window for this family alone; None: no own limit."""
    weekly_units: float | None = None
    """Limit of one weekly window for this family alone; None: no own limit."""
    max_concurrent: int | None = None
    """At most this many attempts of this family at once (e.g. 2 for Opus); None: no cap."""
    weights: UnitWeights | None = None
    """Token weights of this family; None: ``DEFAULT_WEIGHTS`` for the family."""

    def __post_init__(self) -> None:
        _check_limit("session_units", self.session_units)
        _check_limit("weekly_units", self.weekly_units)
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {self.max_concurrent}")


class SharedLimits(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True
):
    """Limits that every family's usage counts against together."""

    session_units: float | None = None
    """Limit of one 5-hour session window, all models together (Claude's ``five_hour``)."""
    weekly_units: float | None = None
    """Limit of one weekly window, all models together (Claude's ``seven_day``)."""

    def __post_init__(self) -> None:
        _check_limit("session_units", self.session_units)
        _check_limit("weekly_units", self.weekly_units)


class SubscriptionPlan(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A Pro/Max-style plan: rolling 5-hour sessions and weekly windows, in usage units."""

    families: dict[ModelFamily, FamilyPlan] = msgspec.field(default_factory=dict)
    """Per-family limits and weights; a family not listed has no own limit."""
    all_models: SharedLimits = msgspec.field(default_factory=SharedLimits)
    """Limits shared by all families."""
    weekly_reset: WeeklyReset = msgspec.field(default_factory=WeeklyReset)
    """When weekly windows reset (weekday, local time, IANA timezone)."""
    session_length_s: float = SESSION_S
    """Length of a session window, opened by the first usage when none is open."""
    safety_margin: float = 0.05
    """Fraction of every limit kept free: reservations stop at limit * (1 - margin)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.safety_margin < 1.0:
            raise ValueError(f"safety_margin must be in [0, 1), got {self.safety_margin}")
        if self.session_length_s <= 0:
            raise ValueError(f"session_length_s must be > 0, got {self.session_length_s}")

    def family(self, family: ModelFamily) -> FamilyPlan:
        return self.families.get(family) or FamilyPlan()

    def weights(self, family: ModelFamily) -> UnitWeights:
        return self.family(family).weights or DEFAULT_WEIGHTS[family]

    def units(self, family: ModelFamily, usage: Usage) -> float:
        """Usage units of ``usage`` spent on a model of ``family``."""
        return self.weights(family).units(usage)

    def limit(self, window: Window) -> float | None:
        """The configured limit of ``window`` in units; None when it has none."""
        source: FamilyPlan | SharedLimits = (
            self.all_models if window.family is None else self.family(window.family)
        )
        if window.kind is WindowKind.SESSION:
            return source.session_units
        return source.weekly_units

    def window_length(self, kind: WindowKind) -> float:
        """Nominal length of a window of ``kind`` (a DST week is an hour off)."""
        return self.session_length_s if kind is WindowKind.SESSION else WEEK_S


class ApiKeyLimits(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True
):
    """Per-minute limits of one model family under an API key (None: not limited)."""

    requests_per_minute: int | None = None
    """Requests started per rolling minute."""
    input_tokens_per_minute: int | None = None
    """Input tokens per rolling minute (the API counts uncached input and cache writes)."""
    output_tokens_per_minute: int | None = None
    """Output tokens per rolling minute."""

    def __post_init__(self) -> None:
        _check_limit("requests_per_minute", self.requests_per_minute)
        _check_limit("input_tokens_per_minute", self.input_tokens_per_minute)
        _check_limit("output_tokens_per_minute", self.output_tokens_per_minute)


class ApiKeyPlan(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """An API-key plan: per-minute limits per family; no session or weekly windows."""

    families: dict[ModelFamily, ApiKeyLimits] = msgspec.field(default_factory=dict)
    """Limits per family; a family not listed is not limited."""

    def limits(self, family: ModelFamily) -> ApiKeyLimits:
        return self.families.get(family) or ApiKeyLimits()
