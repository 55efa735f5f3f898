"""The text of ``tc health``: ``render`` turns the dict ``health_report`` built into Rich
renderables (the headline, each degraded mode with the tasks it holds, shifts or keeps
waiting, the circuit-breaker table, failed attempts by class and the newest errors,
incidents and MTTR). It reads only that dict, never the state.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from trafficcontrol.cli.formats import ago, duration, local_time, until
from trafficcontrol.cli.health_report import RECENT, plural
from trafficcontrol.domain.breakers import BreakerState


def render(data: dict[str, Any]) -> list[RenderableType]:
    now = data["now"]["epoch"]
    parts: list[RenderableType] = [headline(data)]
    for mode in data["degraded"]:
        parts.append(Text(f"  {mode['text']}", style="yellow"))
        if mode["kind"] == "breaker":
            if mode["shifted"]:
                parts.append(Text(f"    a tier down: {listed(mode['shifted'])}"))
            if mode["held"]:
                parts.append(
                    Text(
                        "    held (hard, pinned, escalated, resumed or nothing cheaper):"
                        f" {listed(mode['held'])}"
                    )
                )
        waits = data["waiting"].get(
            {"transient_backoff": "transient", "capacity_wait": "capacity"}.get(mode["kind"], "")
        )
        for item in (waits or [])[:RECENT]:
            parts.append(Text(f"    {item['task']}: {wait_line(item, now)}"))
        if waits and len(waits) > RECENT:
            parts.append(Text(f"    … {len(waits) - RECENT} more (tc tasks --state waiting)"))
    if data["breakers"]:
        parts.append(breakers_table(data["breakers"], now))
    parts.extend(error_parts(data["errors"], now))
    parts.extend(incident_parts(data["incidents"], now))
    return parts


def listed(tasks: list[str], limit: int = RECENT) -> str:
    more = f" … {len(tasks) - limit} more" if len(tasks) > limit else ""
    return ", ".join(tasks[:limit]) + more


def headline(data: dict[str, Any]) -> Text:
    if data["status"] == "healthy":
        return Text(
            f"health: healthy — no breaker open, nothing degraded (exit {data['exit_code']})",
            style="green",
        )
    return Text(
        f"health: degraded — {plural(len(data['degraded']), 'degraded mode')}"
        f" (exit {data['exit_code']})",
        style="bold yellow",
    )


def wait_line(item: dict[str, Any], now: float) -> str:
    reason = item["reason"] or "waiting"
    if item["until"] is None:
        return reason
    return f"{reason}, until {until(item['until']['epoch'], now)}"


def breakers_table(breakers: list[dict[str, Any]], now: float) -> Table:
    table = _table(
        "Circuit breakers",
        ["key", "state", "since", "reason", "probes", "next probe", "failures in a row"],
    )
    for b in breakers:
        since = "-" if b["since"] is None else ago(b["since"]["epoch"], now)
        probe = "-"
        if b["next_probe_at"] is not None:
            probe = until(b["next_probe_at"]["epoch"], now)
        elif b["probe_attempt"] is not None:
            probe = f"{b['probe_attempt']} running"
        style = "green" if b["state"] == BreakerState.CLOSED else "bold red"
        table.add_row(
            b["key"],
            Text(b["state"], style=style),
            since,
            escape(b["reason"] or "-"),
            str(b["probes"]),
            probe,
            str(b["failures_in_a_row"]),
        )
    return table


def error_parts(errors: dict[str, Any], now: float) -> list[RenderableType]:
    by_class = errors["by_class"]
    if not any(c["total"] for c in by_class.values()):
        return [Text("No failed attempts.")]
    hour = "last hour" if errors["last_hour_complete"] else "last hour (at least)"
    table = _table("Failed attempts by class", ["class", "total", hour])
    for name, counts in by_class.items():
        if counts["total"]:
            table.add_row(name, str(counts["total"]), str(counts["last_hour"]))
    parts: list[RenderableType] = [table]
    if errors["recent"]:
        recent = _table(
            "Recent errors (newest first)", ["time", "attempt", "class", "rule", "message"]
        )
        for e in errors["recent"]:
            recent.add_row(
                ago(e["at"]["epoch"], now),
                e["attempt"],
                e["class"],
                escape(e["rule"] or "-"),
                escape(e["message"].splitlines()[0][:120] if e["message"] else "-"),
            )
        parts.append(recent)
    return parts


def incident_parts(incidents: dict[str, Any], now: float) -> list[RenderableType]:
    if not incidents["closed"] and not incidents["ongoing"]:
        return [Text("No incidents.")]
    table = _table("Incidents", ["key", "opened", "closed", "duration", "reason"])
    for i in incidents["closed"][-RECENT:]:
        table.add_row(
            i["key"],
            local_time(i["opened_at"]["epoch"]),
            local_time(i["closed_at"]["epoch"]),
            duration(i["duration_s"]),
            escape(i["reason"]),
        )
    for i in incidents["ongoing"]:
        table.add_row(
            i["key"],
            local_time(i["opened_at"]["epoch"]),
            Text("ongoing", style="bold red"),
            f"{duration(i['age_s'])} so far",
            escape(i["reason"]),
        )
    parts: list[RenderableType] = [table]
    mttr = [
        f"{m['key']} {duration(m['mttr_s'])} over {plural(m['incidents'], 'incident')}"
        for m in incidents["mttr"]
        if m["mttr_s"] is not None
    ]
    if mttr:
        parts.append(Text("MTTR (open -> closed): " + ", ".join(mttr)))
    return parts


def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(column, no_wrap=column in ("key", "state", "since", "time"))
    return table
