"""``tc capacity``: every metered window with where each of its figures comes from.

One report (``capacity_report``) is built from the folded state and the App's clock; the
JSON is that report, the text view renders it. Every figure carries its source: a
window's used / remaining / utilization are ``reported`` (the provider's rate-limit
figure), ``reported+estimated`` (that figure plus local usage since) or ``estimated``
(summed from usage entries); burn rates and projections are always estimated. Usage
nobody reported is counted as unknown entries, never as zero.

The plan: the state's, as the last ``tc run`` journaled it. When no orchestrator runs
and ``config.toml`` says something else, the report uses ``config.toml`` (what the next
run will journal) and says so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Annotated, Any

import typer
from rich import box
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from trafficcontrol.cli.app import HomeOption, JsonOption, emit_json, existing_state, make_app, out
from trafficcontrol.cli.views import countdown, local_time, stamp, until
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
LEFT = ("window", "source", "resets", "limit reached")
PLAN_HINT = """\
  [capacity.plan.all_models]
  session_units = 6_000_000     # one 5-hour session, all models together
  weekly_units = 60_000_000
  [capacity.plan.families.opus]
  weekly_units = 15_000_000"""


def register(app: typer.Typer) -> None:
    """Add ``capacity`` to ``app`` (once, however often it is called)."""
    if "capacity" not in {command.name for command in app.registered_commands}:
        app.command("capacity")(capacity_command)


def capacity_command(
    home: HomeOption = None,
    as_json: JsonOption = False,
    hours: Annotated[int, typer.Option(help="Hours of the usage sparkline.", min=1)] = HOURS,
) -> None:
    """Capacity windows: used, limits (configured or learned), burn rate, projection."""
    app_ = make_app(home)
    state = existing_state(app_)
    now = app_.clock.now()
    plan_source, note = adopt_config(
        state, app_.settings.capacity, running=app_.orchestrator_running(), now=now
    )
    data = capacity_report(state, now, hours=hours)
    data["plan"].update(source=plan_source, note=note, config_path=str(app_.home.config))
    if as_json:
        emit_json(data)
        return
    for part in render(data, now):
        out.print(part)


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


# -- the report ------------------------------------------------------------------------
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


# -- the text view ---------------------------------------------------------------------
def units(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def short(value: float | None) -> str:
    """Units at a glance: ``9,876``, ``151.2k``, ``1.35M`` (the JSON has them exact)."""
    if value is None:
        return "-"
    size = abs(value)
    if size < 10_000:
        return f"{value:,.0f}"
    if size < 1_000_000:
        return f"{value / 1000:.1f}k".replace(".0k", "k")
    return f"{value / 1e6:.2f}".rstrip("0").rstrip(".") + "M"


def render(data: dict[str, Any], now: float) -> list[RenderableType]:
    plan = data["plan"]
    parts: list[RenderableType] = []
    if plan.get("note"):
        parts.append(Text(f"note: {plan['note']}", style="yellow"))
    if not plan["configured"]:
        parts.append(
            Text.from_markup(
                "[bold]No capacity plan is configured:[/] usage is metered below, but no"
                " window has a limit, so nothing waits for capacity.\nTo configure one, add to"
                f" {escape(plan.get('config_path') or '<home>/config.toml')} (see README,"
                " 'Capacity and model routing'):\n" + escape(PLAN_HINT)
            )
        )
    if data["windows"]:
        parts.append(windows_table(data["windows"], now))
        parts.append(Text(LEGEND, style="dim"))
        parts.extend(window_notes(data["windows"], now))
        parts.append(forecast_table(data["windows"], now))
    else:
        parts.append(Text("No usage metered yet and no window has a limit."))
    parts.extend(usage_lines(data["usage_24h"]))
    parts.extend(event_lines(data, now))
    parts.extend(breakdown_lines(data["weekly_breakdown"]))
    if data["by_model"]:
        parts.append(model_table(data["by_model"]))
    return parts


LEGEND = (
    "source: where used, left and util come from — reported (the provider's rate-limit"
    " figure), reported+estimated (that plus local usage since), estimated (summed"
    " locally). +N unknown: usage entries nobody reported; the true use is more."
)


def windows_table(windows: list[dict[str, Any]], now: float) -> Table:
    """Where each window stands now; ``source`` says where used, left and util come from."""
    limited = any(w["limit"]["effective"] is not None for w in windows)
    columns = ["window", "used", "source", "limit", "left", "util", "resets"]
    if not limited:  # no limit anywhere: keep only the columns that say something
        columns = [c for c in columns if c not in ("limit", "left", "util")]
    table = _table("Capacity windows (usage units)", columns)
    for w in windows:
        used = short(w["used_units"])
        if w["unknown_entries"]:
            used += f" +{w['unknown_entries']} unknown"
        limit = w["limit"]
        limit_text = "none"
        if limit["effective"] is not None:
            limit_text = f"{short(limit['effective'])} {limit['source']}"
        util = w["utilization"]
        util_text = "-" if util is None else f"{util:.0%}"
        if util is not None and w["utilization_source"] != w["source"]:
            util_text += f" {w['utilization_source']}"
        cells = {
            "window": w["window"],
            "used": used,
            "source": w["source"],
            "limit": limit_text,
            "left": short(w["remaining_units"]),
            "util": util_text,
            "resets": "no session open"
            if w["resets_at"] is None
            else until(w["resets_at"]["epoch"], now),
        }
        table.add_row(*(cells[c] for c in columns))
    return table


def forecast_table(windows: list[dict[str, Any]], now: float) -> Table:
    """Burn rate and projection per window: estimates, always (labelled in the title)."""
    limited = any(w["limit"]["effective"] is not None for w in windows)
    columns = ["window", "burn/h", "at reset (low–high)", "limit reached"]
    if not limited:
        columns.remove("limit reached")
    table = _table("Forecast (estimated from the local burn rate)", columns)
    for w in windows:
        rate = w["burn_rate"]["per_hour"]
        projection = w["projection"]
        at_reset = "-"
        if projection["at_reset"] is not None:
            at_reset = (
                f"{short(projection['at_reset'])} ({short(projection['at_reset_low'])}"
                f"–{short(projection['at_reset_high'])})"
            )
        reached = "-"
        if w["limit"]["effective"] is not None and rate is not None:
            reached = "not before reset"
        limit_at = projection["limit_at"]
        if limit_at is not None:
            reached = "reached" if limit_at["epoch"] <= now else until(limit_at["epoch"], now)
            earliest = projection["limit_at_earliest"]
            if earliest is not None and now < earliest["epoch"] < limit_at["epoch"]:
                reached += f", maybe from {local_time(earliest['epoch'])}"
        cells = {
            "window": w["window"],
            "burn/h": "no data yet" if rate is None else short(rate),
            "at reset (low–high)": at_reset,
            "limit reached": reached,
        }
        table.add_row(*(cells[c] for c in columns))
    return table


def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(
            column,
            justify="left" if column in LEFT else "right",
            no_wrap=column in ("window", "source", "limit", "resets"),
        )
    return table


def window_notes(windows: list[dict[str, Any]], now: float) -> list[RenderableType]:
    """Learned limits with their evidence, reservations, usage from estimated tokens."""
    lines: list[str] = []
    for w in windows:
        label = w["window"]
        limit = w["limit"]
        correction = limit["last_correction"]
        if correction is not None:
            at = local_time(correction["at"]["epoch"])
            if correction["reason"] == "limit_hit":
                why = (
                    f"the provider refused on {at} with {units(correction['used_at_hit'])}"
                    " units used"
                )
            else:
                why = f"probed up on {at} after a window without a limit hit"
            lines.append(
                f"{label}: limit {units(limit['effective'])} ({limit['source']}; configured"
                f" {units(limit['configured'])}) — last correction {units(correction['previous'])}"
                f" -> {units(correction['effective'])}: {why}"
            )
        if w["reserved_units"] > 0:
            lines.append(
                f"{label}: {units(w['reserved_units'])} units reserved by running attempts"
            )
        if w["units_from_estimated_tokens"] > 0:
            lines.append(
                f"{label}: {units(w['units_from_estimated_tokens'])} of the local units come"
                " from token counts we estimated, not the provider's usage report"
            )
    return [Text(line) for line in lines]


def usage_lines(usage: dict[str, Any]) -> list[RenderableType]:
    pools = usage["pools"]
    if not pools:
        return []
    hours = len(pools[0]["hourly_units"])
    title = Text(f"Usage, last {hours} h (units per hour, oldest left, ▁ = none; estimated)")
    table = Table(show_header=False, box=None)
    for _ in range(3):
        table.add_column()
    for pool in pools:
        total = units(pool["total_units"])
        if pool["unknown_entries"]:
            total += f" +{pool['unknown_entries']} unknown"
        table.add_row(pool["pool"], pool["sparkline"], total)
    return [title, table]


def event_lines(data: dict[str, Any], now: float) -> list[RenderableType]:
    lines: list[RenderableType] = []
    for signal in data["signals"]:
        resets = (
            ""
            if signal["resets_at"] is None
            else f", resets {until(signal['resets_at']['epoch'], now)}"
        )
        lines.append(
            Text(
                f"provider report {signal['window_type']}: {signal['utilization']:.0%} used"
                f" (reported {countdown(now - signal['at']['epoch'])} ago){resets}"
            )
        )
    for warning in data["warnings"]:
        at = local_time(warning["at"]["epoch"])
        lines.append(Text(f"warning {at}: {warning['text']}", style="yellow"))
    hits = data["limit_hits"]
    if hits["count"]:
        lines.append(Text(f"limit hits: {hits['count']}", style="bold red"))
        for hit in hits["recent"]:
            resets = (
                ""
                if hit["resets_at"] is None
                else f", resets {until(hit['resets_at']['epoch'], now)}"
            )
            lines.append(
                Text(
                    f"  {hit['attempt']} ({hit['model'] or 'default model'}):"
                    f" {hit['window'] or 'window not said'}{resets}"
                    + (f" — {hit['message']}" if hit["message"] else "")
                )
            )
        for pending in hits["pending"]:
            lines.append(
                Text(
                    f"  {pending['window']}: hit at {units(pending['used_at_hit'])} units,"
                    " limit correction pending (the next tc run journals it)"
                )
            )
    return lines


def breakdown_lines(breakdown: dict[str, Any]) -> list[RenderableType]:
    if breakdown["start"] is None:
        return []
    lines: list[RenderableType] = []
    for key, title in (("by_project", "project"), ("by_agent", "agent")):
        rows = breakdown[key]
        if not rows:
            continue
        parts = []
        for row in rows:
            part = f"{row['name']} {units(row['units'])}"
            if row["unknown_entries"]:
                part += f" +{row['unknown_entries']} unknown"
            parts.append(part)
        lines.append(Text(f"this week ({breakdown['window']}) by {title}: " + ", ".join(parts)))
    return lines


def model_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="This week by model (weekly/all window)", title_justify="left")
    table.add_column("model")
    for column in ("units", "input", "output", "cache read", "cache write", "cost (USD)"):
        table.add_column(column, justify="right")
    for row in rows:
        name = escape(row["model"]) + (" \\[simulated]" if row["simulated"] else "")
        used = units(row["units"])
        if row["unknown_entries"]:
            used += f" +{row['unknown_entries']} unknown"
        cost = "unknown" if row["cost_usd"] is None else f"{row['cost_usd']:.4f}"
        if row["cost_usd"] is not None and row["cost_unknown_entries"]:
            cost += f" +{row['cost_unknown_entries']} unknown"
        table.add_row(
            name,
            used,
            f"{row['input_tokens']:,}",
            f"{row['output_tokens']:,}",
            f"{row['cache_read_tokens']:,}",
            f"{row['cache_creation_tokens']:,}",
            cost,
        )
    return table
