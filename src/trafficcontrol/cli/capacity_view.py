"""The text of ``tc capacity``: ``render`` turns the dict ``capacity_report`` built into
Rich renderables (the plan note or hint, the windows and forecast tables, notes on
learned limits and reservations, the usage sparklines, provider reports, warnings and
limit hits, the weekly breakdowns and the per-model table). It reads only that dict and
``now``, never the state.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from trafficcontrol.cli.formats import countdown, local_time, until

LEFT = ("window", "source", "resets", "limit reached")
PLAN_HINT = """\
  [capacity.plan.all_models]
  session_units = 6_000_000     # one 5-hour session, all models together
  weekly_units = 60_000_000
  [capacity.plan.families.opus]
  weekly_units = 15_000_000"""


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
