"""The data of ``tc capacity``: ``capacity_report`` folds the state's capacity book into
the dict that ``--json`` prints and the text view renders (each window's figures with
their sources, hourly usage sparklines, provider reports, warnings, limit hits, the
weekly breakdowns and usage by model), and ``adopt_config`` picks the plan that meters
it. Nothing here prints or reads the clock: the time comes in as ``now``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from trafficcontrol.cli.formats import stamp
from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.ledger import TagKind, UsageEntry
from trafficcontrol.domain.capacity.limits import LimitCorrection
from trafficcontrol.domain.capacity.tracker import Capacity, CapacityConfig
from trafficcontrol.domain.capacity.windows import ALL_WINDOWS, HOUR_S, Window, WindowKind
from trafficcontrol.domain.events import CapacityConfigured
from trafficcontrol.domain.model import AttemptId
from trafficcontrol.domain.state import State, apply

HOURS = 24
"""Hourly buckets of the usage sparkline."""
BLOCKS = "▁▂▃▄▅▆▇█"
RECENT = 10
"""Warnings and limit hits listed."""
WEEKLY_ALL = Window(kind=WindowKind.WEEKLY)


def adopt_config(
    state: State, config: CapacityConfig, *, running: bool, now: float
) -> tuple[str, str | None]:
    """Which plan meters the report (``journal`` or ``config.toml``) and a note when the two
    differ. With no orchestrator running, config.toml's plan is applied to ``state`` in
    memory (nothing is journaled): it is what the next ``tc run`` will use."""
    if config == state.capacity.config:
        return "journal", None
    if running:
        return "journal", (
            "config.toml's capacity settings differ from the running orchestrator's;"
            " they take effect when tc run starts again"
        )
    apply(state, CapacityConfigured(at=now, config=config))
    return "config.toml", "plan from config.toml; tc run journals it when it starts"


def capacity_report(state: State, now: float, *, hours: int = HOURS) -> dict[str, Any]:
    capacity = state.capacity
    plan = capacity.config.plan
    windows = [w for window in ALL_WINDOWS if (w := window_dict(capacity, window, now))]
    limits = {w.label: plan.limit(w) for w in ALL_WINDOWS if plan.limit(w) is not None}
    caps = {f.value: cap for f in ModelFamily if (cap := plan.family(f).max_concurrent) is not None}
    return {
        "now": stamp(now),
        "plan": {
            "configured": bool(limits or caps),
            "limits": limits,
            "max_concurrent": caps,
            "safety_margin": plan.safety_margin,
            "session_length_s": plan.session_length_s,
            "weekly_reset": {
                "weekday": plan.weekly_reset.weekday,
                "hour": plan.weekly_reset.hour,
                "minute": plan.weekly_reset.minute,
                "timezone": plan.weekly_reset.timezone,
            },
        },
        "windows": windows,
        "usage_24h": sparklines(capacity, now, hours),
        "signals": [
            {
                "window_type": s.window_type,
                "utilization": s.utilization,
                "resets_at": stamp(s.resets_at),
                "at": stamp(s.at),
                "source": "reported",
            }
            for s in sorted(capacity.signals.values(), key=lambda s: s.window_type)
        ],
        "warnings": [
            {
                "at": stamp(w.at),
                "kind": w.kind.value,
                "window": w.window.label,
                "utilization": w.utilization,
                "threshold": w.threshold,
                "source": w.source.value,
                "limit_at": stamp(w.limit_at),
                "text": w.text,
            }
            for w in list(capacity.warnings)[-RECENT:]
        ],
        "limit_hits": limit_hits(state),
        "weekly_breakdown": weekly_breakdown(capacity, now),
        "by_model": by_model(state, now),
    }


def window_dict(capacity: Capacity, window: Window, now: float) -> dict[str, Any] | None:
    """One window's figures; None when it has neither a configured limit nor any usage."""
    figure = capacity.figure(window, now)
    configured = capacity.book.limits.configured(window)
    if configured is None and figure.entries == 0 and figure.reported_at is None:
        return None
    limit = figure.limit
    projection = capacity.projection(window, now)
    rate = projection.rate
    correction = capacity.corrections.get(window)
    learned = correction is not None and limit is not None and limit != configured
    reported = figure.reported_at is not None
    # Without a limit a provider report gives a utilization, not units: used stays local.
    used_source = figure.source.value if limit is not None else "estimated"
    known = rate.samples > 0  # no closed bucket yet: the rate, and so the projection, is unknown
    crosses = known and projection.crosses_before_reset
    return {
        "window": window.label,
        "kind": window.kind.value,
        "family": None if window.family is None else window.family.value,
        "start": stamp(figure.start),
        "resets_at": stamp(figure.end),
        "resets_in_s": None if figure.end is None else max(figure.end - now, 0.0),
        "used_units": figure.used_units,
        "source": used_source,
        "unknown_entries": figure.unknown_entries,
        "entries": figure.entries,
        "units_from_estimated_tokens": figure.estimated_units,
        "reported_at": stamp(figure.reported_at),
        "units_since_report": figure.units_since_report if reported else None,
        "limit": {
            "effective": limit,
            "configured": configured,
            "source": None if limit is None else ("learned" if learned else "configured"),
            "last_correction": None if correction is None else correction_dict(correction),
        },
        "remaining_units": figure.remaining,
        "utilization": figure.utilization,
        "utilization_source": (
            used_source if limit is not None else ("reported" if reported else None)
        ),
        "reserved_units": capacity.book.reserved(window),
        "cost_usd": figure.cost_usd,
        "cost_unknown_entries": figure.cost_unknown_entries,
        "burn_rate": {
            "per_hour": rate.per_hour if rate.samples else None,
            "samples": rate.samples,
            "bucket_s": rate.bucket_s,
            "source": "estimated",
        },
        "projection": {
            "at_reset": projection.at_reset if known else None,
            "at_reset_low": projection.at_reset_low if known else None,
            "at_reset_high": projection.at_reset_high if known else None,
            "limit_at": stamp(projection.limit_at if crosses else None),
            "limit_at_earliest": stamp(projection.limit_at_earliest if crosses else None),
            "limit_at_latest": stamp(projection.limit_at_latest if crosses else None),
            "limit_before_reset": crosses,
            "source": "estimated",
        },
    }


def correction_dict(correction: LimitCorrection) -> dict[str, Any]:
    return {
        "reason": correction.reason.value,
        "at": stamp(correction.at),
        "previous": correction.previous,
        "effective": correction.effective,
        "configured": correction.configured,
        "used_at_hit": correction.used_at_hit,
    }


def sparklines(capacity: Capacity, now: float, hours: int) -> dict[str, Any]:
    """Known units per clock hour over the last ``hours`` hours, per pool (all models and
    each family); the last bucket is the hour in progress. Unknown entries are counted."""
    end = (math.floor(now / HOUR_S) + 1) * HOUR_S
    start = end - hours * HOUR_S
    pools: dict[str, tuple[list[float], list[int]]] = {}
    for entry in capacity.ledger.entries_between(start, math.inf):
        index = min(int((entry.at - start) // HOUR_S), hours - 1)
        for pool in ("all", entry.family.value):
            units, unknown = pools.setdefault(pool, ([0.0] * hours, [0] * hours))
            if entry.units is None:
                unknown[index] += 1
            else:
                units[index] += entry.units
    order = ["all", *(f.value for f in ModelFamily)]
    return {
        "start": stamp(start),
        "bucket_s": HOUR_S,
        "pools": [
            {
                "pool": pool,
                "hourly_units": pools[pool][0],
                "hourly_unknown": pools[pool][1],
                "total_units": sum(pools[pool][0]),
                "unknown_entries": sum(pools[pool][1]),
                "sparkline": sparkline(pools[pool][0]),
                "source": "estimated",
            }
            for pool in order
            if pool in pools
        ],
    }


def sparkline(values: list[float]) -> str:
    """One block per value, scaled to the largest; ``▁`` is nothing, any use shows higher."""
    top = max(values, default=0.0)
    if top <= 0:
        return BLOCKS[0] * len(values)
    steps = len(BLOCKS) - 2
    return "".join(BLOCKS[0] if v <= 0 else BLOCKS[1 + round(v / top * steps)] for v in values)


def limit_hits(state: State) -> dict[str, Any]:
    capacity = state.capacity
    hit = [a for a in state.attempts.values() if a.limit_hit is not None]
    hit.sort(key=lambda a: a.ended_at or a.started_at)
    return {
        "count": capacity.limit_hits,
        "pending": [
            {
                "window": h.window.label,
                "used_at_hit": h.used_at_hit,
                "at": stamp(h.at),
                "attempt": h.attempt_id,
            }
            for h in capacity.pending_hits
        ],
        "recent": [
            {
                "attempt": a.id,
                "task": a.task_id,
                "model": a.model,
                "at": stamp(a.ended_at),
                "window": a.limit_hit.window,
                "resets_at": stamp(a.limit_hit.resets_at),
                "message": a.limit_hit.message,
            }
            for a in hit[-RECENT:]
            if a.limit_hit is not None
        ],
    }


def weekly_breakdown(capacity: Capacity, now: float) -> dict[str, Any]:
    """The current weekly window (all models) by project and by agent."""
    figure = capacity.figure(WEEKLY_ALL, now)
    entries: list[UsageEntry] = []
    if figure.start is not None and figure.end is not None:
        entries = capacity.ledger.entries_between(figure.start, figure.end)

    def split(tag: TagKind, key: str) -> list[dict[str, Any]]:
        units = capacity.ledger.breakdown(WEEKLY_ALL, now, tag)
        unknown: dict[str, int] = defaultdict(int)
        for entry in entries:
            name = getattr(entry, key)
            if entry.units is None and name is not None:
                unknown[name] += 1
        names = sorted(set(units) | set(unknown), key=lambda n: (-units.get(n, 0.0), n))
        return [
            {"name": n, "units": units.get(n, 0.0), "unknown_entries": unknown.get(n, 0)}
            for n in names
        ]

    return {
        "window": WEEKLY_ALL.label,
        "start": stamp(figure.start),
        "resets_at": stamp(figure.end),
        "by_project": split(TagKind.PROJECT, "project"),
        "by_agent": split(TagKind.AGENT, "agent"),
        "source": "estimated",
    }


def by_model(state: State, now: float) -> list[dict[str, Any]]:
    """Units and tokens per model in the current weekly window (all models)."""
    capacity = state.capacity
    figure = capacity.figure(WEEKLY_ALL, now)
    if figure.start is None or figure.end is None:
        return []
    rows: dict[str, dict[str, Any]] = {}
    for entry in capacity.ledger.entries_between(figure.start, figure.end):
        name = entry.model or f"{entry.family.value} (default model)"
        row = rows.setdefault(
            name,
            {
                "model": name,
                "family": entry.family.value,
                "units": 0.0,
                "unknown_entries": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "cache_read_tokens": 0,
                "cache_creation_tokens": 0,
                "cost_usd": None,
                "cost_unknown_entries": 0,
                "simulated": True,
            },
        )
        attempt = state.attempts.get(AttemptId(entry.attempt_id or ""))
        row["simulated"] = row["simulated"] and attempt is not None and attempt.backend == "sim"
        if entry.usage is None or entry.units is None:
            row["unknown_entries"] += 1
            row["cost_unknown_entries"] += 1
            continue
        row["units"] += entry.units
        for field in (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_creation_tokens",
        ):
            row[field] += getattr(entry.usage, field)
        if entry.usage.cost_usd is None:
            row["cost_unknown_entries"] += 1
        else:
            row["cost_usd"] = (row["cost_usd"] or 0.0) + entry.usage.cost_usd
    return sorted(rows.values(), key=lambda r: (-r["units"], r["model"]))
