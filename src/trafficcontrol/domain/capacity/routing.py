"""Model routing: which model family an attempt runs on, and why.

Design note. Three inputs, applied in this order, each leaving its words in the reason:

1. **Difficulty**: the task's hint (``trivial`` -> haiku, ``hard`` -> opus); without a
   hint its size (prompt length bucket ``opus_from_size`` or larger -> opus); else
   sonnet, the default tier.
2. **Escalation**: each failed attempt of the task moves one tier up (haiku -> sonnet ->
   opus): a cheaper model that failed is not asked the same thing again.
3. **Capacity**: a family is *scarce* when the share of its tightest window still free is
   below ``scarce_ratio`` times the share of that window's time still to run (it burns
   faster than its window allows). A size-based opus choice then shifts down to sonnet;
   a hint or an escalation does not (that work waits for opus instead: it is where opus
   pays). ``decide`` additionally shifts any unpinned choice down one tier when the
   chosen family is refused outright (window full, concurrency cap) and the cheaper one
   fits — unless the choice came from a hard hint or an escalation, or the full window is
   one all families share (a cheaper model would only squeeze in work meant for a better
   one; that work waits for the reset).

A task or project that names a model is pinned: routing records that and changes nothing.
Rejected: routing on a global success-rate model (needs far more history than a backlog
gives; escalation on failure reaches the same place per task).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from trafficcontrol.domain.capacity.costs import SizeBucket
from trafficcontrol.domain.capacity.families import ModelFamily, model_family
from trafficcontrol.domain.model import Difficulty

TIERS: tuple[ModelFamily, ...] = (ModelFamily.HAIKU, ModelFamily.SONNET, ModelFamily.OPUS)
_SIZE_ORDER = (SizeBucket.S, SizeBucket.M, SizeBucket.L, SizeBucket.XL)


def tier(family: ModelFamily) -> int:
    return TIERS.index(family)


class RoutingPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    enabled: bool = True
    """False: unpinned attempts run on the backend's default model (no model is passed)."""
    models: dict[ModelFamily, str] = msgspec.field(
        default_factory=lambda: {
            ModelFamily.OPUS: "opus",
            ModelFamily.SONNET: "sonnet",
            ModelFamily.HAIKU: "haiku",
        }
    )
    """The model name passed to the agent per family (Claude Code accepts the aliases)."""
    opus_from_size: SizeBucket = SizeBucket.XL
    """Unhinted tasks this large or larger start on opus."""
    scarce_ratio: float = 0.8
    """A family is scarce when free share < scarce_ratio * time share left in its window."""

    def __post_init__(self) -> None:
        if self.scarce_ratio < 0:
            raise ValueError(f"scarce_ratio must be >= 0, got {self.scarce_ratio}")

    def model(self, family: ModelFamily) -> str:
        return self.models.get(family, family.value)


class Route(msgspec.Struct, frozen=True, kw_only=True):
    family: ModelFamily
    model: str | None
    reason: str
    firm: bool
    """A hint, an escalation or a pin chose it: ``decide`` must not shift it down."""


def route(
    *,
    pinned: str | None,
    pinned_by: str,
    difficulty: Difficulty | None,
    size: SizeBucket,
    failures: int,
    policy: RoutingPolicy,
    scarce: Callable[[ModelFamily], bool],
    step_tier: tuple[str, ModelFamily] | None = None,
) -> Route:
    """The family and model of a task's next attempt, with the reason in words.

    ``step_tier``: (step name, family) when a workflow step names its tier; it takes
    the place of the difficulty judgement (escalation and capacity still apply)."""
    if pinned is not None:
        return Route(
            family=model_family(pinned), model=pinned, reason=f"pinned by {pinned_by}", firm=True
        )
    if not policy.enabled:
        return Route(family=model_family(None), model=None, reason="routing off", firm=True)
    firm = False
    if step_tier is not None:
        base, reason = step_tier[1], f"step {step_tier[0]}: {step_tier[1].value}"
    elif difficulty is Difficulty.HARD:
        base, reason, firm = ModelFamily.OPUS, "hint hard", True
    elif difficulty is Difficulty.TRIVIAL:
        base, reason = ModelFamily.HAIKU, "hint trivial"
    elif _SIZE_ORDER.index(size) >= _SIZE_ORDER.index(policy.opus_from_size):
        base, reason = ModelFamily.OPUS, f"size {size.value}"
    else:
        base, reason = ModelFamily.SONNET, f"default (size {size.value})"
    chosen = base
    if failures > 0:
        up = min(tier(base) + failures, len(TIERS) - 1)
        if up > tier(base):
            chosen = TIERS[up]
            firm = True
            reason += f"; escalated to {chosen.value} after {failures} failed attempt(s)"
    if not firm and chosen is ModelFamily.OPUS and scarce(ModelFamily.OPUS):
        chosen = ModelFamily.SONNET
        reason += "; opus scarce for the time left in its window -> sonnet"
    return Route(family=chosen, model=policy.model(chosen), reason=reason, firm=firm)


def shift_down(current: Route, policy: RoutingPolicy, why: str) -> Route | None:
    """One tier cheaper after the chosen family was refused, or None (firm, or cheapest)."""
    if current.firm or current.family is ModelFamily.HAIKU:
        return None
    cheaper = TIERS[tier(current.family) - 1]
    return Route(
        family=cheaper,
        model=policy.model(cheaper),
        reason=f"{current.reason}; {current.family.value} {why} -> {cheaper.value}",
        firm=current.firm,
    )
