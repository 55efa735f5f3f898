"""API-key plans: per-minute request and token limits, as admission control. Pure.

Design note. Under an API key the provider limits requests, input tokens and output
tokens per rolling minute, per model family. An agent makes many requests the
orchestrator does not see one by one, so it cannot pace them; what it controls is
admission. A new attempt of a family is admitted only while the family's last minute
(its usage entries: one per model turn ≈ one request) is under every per-minute limit
times ``1 - safety_margin``; otherwise it waits until the oldest entry of that minute
leaves it. Overshoots that still happen get a 429 with ``retry-after``, which the
failure table classes as ``limit`` (wait, no failure counted).
"""

from __future__ import annotations

import msgspec

from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.ledger import UsageEntry
from trafficcontrol.domain.capacity.plans import ApiKeyPlan

MINUTE_S = 60.0


class MinuteUse(msgspec.Struct, frozen=True, kw_only=True):
    family: ModelFamily
    requests: int
    input_tokens: int
    """Uncached input plus cache writes (what the API counts against input limits)."""
    output_tokens: int
    oldest: float | None
    """Time of the oldest entry in the minute (when it leaves, room frees)."""


class MinuteRefusal(msgspec.Struct, frozen=True, kw_only=True):
    family: ModelFamily
    limit: str
    """requests_per_minute | input_tokens_per_minute | output_tokens_per_minute"""
    used: int
    allowed: float
    possible_at: float


def minute_use(entries: list[UsageEntry], family: ModelFamily, now: float) -> MinuteUse:
    """The family's use in the minute before ``now`` (``entries``: that minute's, any family)."""
    requests = inputs = outputs = 0
    oldest: float | None = None
    for entry in entries:
        if entry.family is not family or not now - MINUTE_S < entry.at <= now:
            continue
        requests += 1
        if entry.usage is not None:
            inputs += entry.usage.input_tokens + entry.usage.cache_creation_tokens
            outputs += entry.usage.output_tokens
        oldest = entry.at if oldest is None else min(oldest, entry.at)
    return MinuteUse(
        family=family, requests=requests, input_tokens=inputs, output_tokens=outputs, oldest=oldest
    )


def minute_refusal(
    plan: ApiKeyPlan, use: MinuteUse, now: float, margin: float
) -> MinuteRefusal | None:
    """Why a new attempt of ``use.family`` must wait, or None when the minute has room."""
    limits = plan.limits(use.family)
    for name, used in (
        ("requests_per_minute", use.requests),
        ("input_tokens_per_minute", use.input_tokens),
        ("output_tokens_per_minute", use.output_tokens),
    ):
        limit = getattr(limits, name)
        if limit is None:
            continue
        allowed = limit * (1.0 - margin)
        if used >= allowed:
            oldest = use.oldest if use.oldest is not None else now
            return MinuteRefusal(
                family=use.family,
                limit=name,
                used=used,
                allowed=allowed,
                possible_at=max(oldest + MINUTE_S, now + 1.0),  # never "now": no busy loop
            )
    return None
