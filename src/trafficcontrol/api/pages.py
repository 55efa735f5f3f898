"""The dashboard's pages: server-rendered HTML (Jinja2) that a small script keeps live
from ``/api/events/stream``.

Design note. Every page is whole when served — counts, tables and charts (inline SVG:
the throughput bars, each capacity window's projection band, the DAG drawn from
``api.dag``'s layout) are rendered here from the folded state, so a page works without
its script and a test can read it as text. Pages show what the JSON API returns: the
capacity, context, health, task and profile pages call the API's own handlers
(``_api``), so a page and ``/api/...`` cannot disagree. The script (``static/live.js``)
subscribes to the stream, sets the counts on every page from each ``journal`` message,
and refreshes what the message changed (debounced): most pages fetch themselves again
and swap their ``data-fragment`` parts; the DAG recolours its nodes from ``/api/dag``;
the context chart (the one chart drawn in the browser, by the vendored uPlot) adds
points from ``/api/context``. Nothing polls. Static files ship inside the package:
nothing is fetched from elsewhere at run time and there is no build step.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.staticfiles import StaticFiles

from trafficcontrol import __version__
from trafficcontrol.api import dag
from trafficcontrol.api import routes as api
from trafficcontrol.api.hub import counts_of
from trafficcontrol.api.routes import BadRequest, Context, Handler
from trafficcontrol.cli.capacity_view import PLAN_HINT
from trafficcontrol.cli.formats import countdown, duration, local_time
from trafficcontrol.domain.model import AttemptId, TaskState
from trafficcontrol.domain.state import State

HERE = Path(__file__).parent
_ENV = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
STATE_ORDER = tuple(s.value for s in TaskState)
FINISHED = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})
HOUR_S = 3600.0
THROUGHPUT_HOURS = 24
MAX_DAG_NODES = 5000
"""Tasks drawn at most; past that the page asks for a project filter."""
LOG_LINES = 200
RECENT_EVENTS = 20
CHART_SESSIONS = 12
"""Sessions drawn on the context chart (running ones first, then the newest)."""
CURVE_POINTS = 200
"""Points of a capacity window's usage curve at most."""


def static_files() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")


def _clock(iso: str | None) -> str:
    """``2026-12-04T18:43:03+00:00`` -> ``12-04 18:43:03`` (UTC, as the API gives it)."""
    return "-" if not iso else iso[5:19].replace("T", " ")


def percent_text(value: float | None) -> str:
    """A fraction as the pages write it: ``0.4567`` -> ``45.7%``."""
    return "-" if value is None else f"{100 * value:.1f}%"


def figure_text(value: float | None) -> str:
    """A figure as the pages write it: ``1,234,567``; small ones keep two decimals."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")


def _hms(epoch: float | None) -> str:
    """An event's time on this machine's clock: ``18:43:03``."""
    return "-" if epoch is None else datetime.fromtimestamp(epoch).strftime("%H:%M:%S")


_ENV.filters.update(
    hms=_hms,
    clock=_clock,
    percent=percent_text,
    number=figure_text,
    duration=duration,
    countdown=countdown,
)


def render(name: str, *, status: int = 200, **values: Any) -> HTMLResponse:
    page = _ENV.get_template(name).render(version=__version__, **values)
    return HTMLResponse(page, status_code=status, headers={"cache-control": "no-store"})


async def _api(handler: Handler, ctx: Context, request: Request) -> dict[str, Any]:
    """What ``/api/...`` answers for ``request`` (module notes)."""
    response = await handler(ctx, request)
    data: dict[str, Any] = json.loads(bytes(response.body))
    return data


# -- overview ----------------------------------------------------------------------------
_THROUGHPUT: dict[tuple[int, int, int], dict[str, Any]] = {}
"""The bars of one state at one wall-clock second: a pass over every task costs 5 ms at
10,000 (measured by ``./scripts/bench http``), and open pages reload it often."""


def throughput(state: State, now: float, hours: int = THROUGHPUT_HOURS) -> dict[str, Any]:
    """``_throughput``, computed at most once a second per state (one may be a second
    behind: the bars are per hour)."""
    key = (id(state), int(now), hours)
    cached = _THROUGHPUT.get(key)
    if cached is None:
        _THROUGHPUT.clear()
        cached = _THROUGHPUT[key] = _throughput(state, now, hours)
    return cached


def _throughput(state: State, now: float, hours: int) -> dict[str, Any]:
    """Tasks finished per clock hour (done and failed) over the last ``hours``, as bars;
    the last bar is the hour in progress."""
    end = (math.floor(now / HOUR_S) + 1) * HOUR_S
    start = end - hours * HOUR_S
    done, failed = [0] * hours, [0] * hours
    for record in state.tasks.values():
        at = record.finished_at
        if at is None or at < start or record.state not in (TaskState.DONE, TaskState.FAILED):
            continue
        index = min(int((at - start) // HOUR_S), hours - 1)
        (done if record.state is TaskState.DONE else failed)[index] += 1
    top = max((d + f for d, f in zip(done, failed, strict=True)), default=0)
    width, height, gap = 16.0, 80.0, 2.0
    bars = []
    for i, (d, f) in enumerate(zip(done, failed, strict=True)):
        hd = height * d / top if top else 0.0
        hf = height * f / top if top else 0.0
        bars.append(
            {
                "x": i * (width + gap),
                "done_y": height - hd,
                "done_h": hd,
                "failed_y": height - hd - hf,
                "failed_h": hf,
                "label": local_time(start + i * HOUR_S)[-5:],
                "done": d,
                "failed": f,
            }
        )
    return {
        "bars": bars,
        "width": hours * (width + gap) - gap,
        "height": height,
        "bar_w": width,
        "top": top,
        "last_hour": done[-1],
        "day": sum(done),
        "failed_day": sum(failed),
    }


def overview_values(ctx: Context) -> dict[str, Any]:
    state = ctx.source.state
    now = time.time()
    counts = counts_of(state)
    total = len(state.tasks)
    finished = sum(counts[s.value] for s in FINISHED)
    running = [
        {
            "attempt": a.id,
            "task": a.task_id,
            "backend": a.backend,
            "model": a.model or "",
            "step": a.step or "",
            "started": a.started_at,
            "elapsed": duration(now - a.started_at),
        }
        for a in sorted(state.running.values(), key=lambda a: a.started_at)
    ]
    return {
        "counts": counts,
        "total": total,
        "finished": finished,
        "progress": 0 if not total else math.floor(100 * finished / total),
        "running": running,
        "throughput": throughput(state, now),
        "events": list(reversed(ctx.source.hub.recent(limit=RECENT_EVENTS))),
    }


# -- DAG ---------------------------------------------------------------------------------
def dag_values(state: State, project: str | None) -> dict[str, Any]:
    records = [r for r in state.tasks.values() if project is None or r.spec.project == project]
    shown = records[:MAX_DAG_NODES]
    ids = [r.spec.id for r in shown]
    drawn = dag.layout(ids, ((d, r.spec.id) for r in shown for d in r.spec.depends_on))
    w, h = drawn.node_w, drawn.node_h
    nodes = []
    for record in shown:
        place = drawn.nodes[record.spec.id]
        nodes.append(
            {
                "id": record.spec.id,
                "label": record.spec.id if len(record.spec.id) <= 20 else record.spec.id[:19] + "…",
                "title": record.spec.title,
                "state": record.state.value,
                "x": place.x,
                "y": place.y,
                "layer": place.layer,
            }
        )
    edges = []
    for a, b in drawn.edges:
        pa, pb = drawn.nodes[a], drawn.nodes[b]
        x1, y1, x2, y2 = pa.x + w, pa.y + h / 2, pb.x, pb.y + h / 2
        bend = max((x2 - x1) / 2, 12.0)
        edges.append(
            {
                "from": a,
                "to": b,
                "d": f"M{x1:.0f},{y1:.0f}C{x1 + bend:.0f},{y1:.0f} {x2 - bend:.0f},{y2:.0f}"
                f" {x2:.0f},{y2:.0f}",
            }
        )
    by_state = {s: 0 for s in STATE_ORDER}
    for record in shown:
        by_state[record.state.value] += 1
    return {
        "nodes": nodes,
        "edges": edges,
        "bands": [(left - 6, right - left + 12) for left, right in drawn.bands],
        "width": drawn.width,
        "height": drawn.height,
        "node_w": w,
        "node_h": h,
        "layers": drawn.layers,
        "total": len(records),
        "cut": len(records) - len(shown),
        "by_state": by_state,
        "projects": sorted(state.projects),
        "project": project,
    }


# -- capacity ----------------------------------------------------------------------------
def window_chart(window: dict[str, Any], state: State, now: float) -> dict[str, Any] | None:
    """A window's used curve, its projection band to the reset and its limit, in SVG
    coordinates (None: the window has no bounds to draw)."""
    start_at = (window.get("start") or {}).get("epoch")
    end_at = (window.get("resets_at") or {}).get("epoch")
    if start_at is None or end_at is None or end_at <= start_at:
        return None
    start, end = float(start_at), float(end_at)
    family = window["family"]
    used = float(window["used_units"] or 0.0)
    limit = window["limit"]["effective"]
    projection = window["projection"]
    low, mid, high = (projection[k] for k in ("at_reset_low", "at_reset", "at_reset_high"))
    curve: list[tuple[float, float]] = [(start, 0.0)]
    total = 0.0
    for entry in state.capacity.ledger.entries_between(start, now):
        if family is not None and entry.family.value != family:
            continue
        total += entry.units or 0.0
        curve.append((entry.at, total))
    curve.append((now, used))
    if len(curve) > CURVE_POINTS:
        step = len(curve) / CURVE_POINTS
        curve = [curve[int(i * step)] for i in range(CURVE_POINTS)] + [curve[-1]]
    top = max(used, limit or 0.0, high or 0.0, mid or 0.0, 1.0) * 1.1
    w, h = 520.0, 150.0

    def x(t: float) -> float:
        return round(w * (min(max(t, start), end) - start) / (end - start), 1)

    def y(v: float) -> float:
        return round(h - h * v / top, 1)

    chart: dict[str, Any] = {
        "w": w,
        "h": h,
        "used": " ".join(f"{x(t)},{y(v)}" for t, v in curve),
        "now_x": x(now),
        "now_y": y(used),
        "limit_y": None if limit is None else y(limit),
        "top": top,
        "start": local_time(start),
        "end": local_time(end),
        "band": None,
    }
    if low is not None and high is not None and mid is not None:
        chart["band"] = f"{x(now)},{y(used)} {w},{y(high)} {w},{y(low)}"
        chart["mid"] = {"x1": x(now), "y1": y(used), "x2": w, "y2": y(mid)}
    limit_at = projection.get("limit_at")
    chart["limit_at_x"] = None if not limit_at else x(limit_at["epoch"])
    return chart


def capacity_values(report: dict[str, Any], state: State, now: float) -> dict[str, Any]:
    windows = [{**w, "chart": window_chart(w, state, now)} for w in report["windows"]]
    return {"report": report, "windows": windows, "plan_hint": PLAN_HINT}


# -- context -----------------------------------------------------------------------------
def context_series(data: dict[str, Any], state: State, now: float) -> dict[str, Any]:
    """The context chart's first points: each drawn session's first and latest turn (the
    page adds a point per update while it is open)."""
    sessions = sorted(
        data["sessions"],
        key=lambda s: (not s["running"], -state.attempts[AttemptId(s["attempt"])].started_at),
    )[:CHART_SESSIONS]
    series = []
    for session in sessions:
        attempt = state.attempts[AttemptId(session["attempt"])]
        window = session["window_tokens"]
        points = []
        if attempt.context_start is not None:
            points.append([attempt.started_at, attempt.context_start / window])
        points.append([attempt.ended_at or now, session["utilisation"]])
        series.append({"attempt": session["attempt"], "task": session["task"], "points": points})
    return {"thresholds": data["thresholds"], "rotate_at": data["rotate_at"], "series": series}


# -- task --------------------------------------------------------------------------------
async def task_values(ctx: Context, request: Request) -> dict[str, Any]:
    data = await _api(api.get_task, ctx, request)
    state, now = ctx.source.state, time.time()
    attempts = data["attempt_list"]
    for row in attempts:
        attempt = state.attempts[AttemptId(row["id"])]
        row["elapsed"] = duration((attempt.ended_at or now) - attempt.started_at)
        row["started"] = attempt.started_at
    chosen = request.query_params.get("attempt") or (attempts[-1]["id"] if attempts else None)
    log: dict[str, Any] = {"attempt": chosen, "path": None, "lines": []}
    record = state.attempts.get(AttemptId(chosen or ""))
    if record is not None and record.task_id == data["id"]:
        log["path"] = record.log_path
        log["lines"] = await asyncio.to_thread(api.tail_lines, Path(record.log_path), LOG_LINES)
    return {
        "task": data,
        "attempts": attempts,
        "handoffs": [a for a in attempts if a.get("handoff")],
        "log": log,
    }


# -- routes ------------------------------------------------------------------------------
def routes(ctx: Context) -> list[BaseRoute]:
    def page(name: str, live: str, **values: Any) -> HTMLResponse:
        state = ctx.source.state
        return render(
            f"{name}.html",
            page=name,
            live=live,
            role=ctx.source.role,
            seq=state.seq,
            header_counts=counts_of(state),
            **values,
        )

    async def overview(_request: Request) -> Response:
        return page("overview", "fragments", **overview_values(ctx))

    async def dag_page(request: Request) -> Response:
        project = request.query_params.get("project") or None
        return page("dag", "dag", **dag_values(ctx.source.state, project))

    async def task_page(request: Request) -> Response:
        try:
            values = await task_values(ctx, request)
        except BadRequest as exc:
            return render(
                "missing.html",
                status=exc.status,
                page="task",
                live="none",
                role=ctx.source.role,
                seq=ctx.source.state.seq,
                header_counts=counts_of(ctx.source.state),
                message=exc.message,
            )
        return page("task", "task", **values)

    async def capacity(request: Request) -> Response:
        report = await _api(api.get_capacity, ctx, request)
        values = capacity_values(report, ctx.source.state, time.time())
        return page("capacity", "fragments", **values)

    async def context(request: Request) -> Response:
        data = await _api(api.get_context, ctx, request)
        series = context_series(data, ctx.source.state, time.time())
        return page("context", "context", data=data, series=series)

    async def health(request: Request) -> Response:
        return page(
            "health",
            "fragments",
            report=await _api(api.get_health, ctx, request),
            cluster=await _api(api.get_cluster, ctx, request),
        )

    async def profile(request: Request) -> Response:
        return page("profile", "none", profile=await _api(api.get_profile, ctx, request))

    return [
        Route("/", overview, name="overview"),
        Route("/dag", dag_page, name="dag"),
        Route("/tasks/{task_id}", task_page, name="task"),
        Route("/capacity", capacity, name="capacity"),
        Route("/context", context, name="context"),
        Route("/health", health, name="health"),
        Route("/profile", profile, name="profile"),
    ]
