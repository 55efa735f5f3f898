"""The JSON API: what ``tc … --json`` prints, per route, plus the three write actions.

Design note. Each route is declared once in ``ROUTES`` (method, path, handler,
parameters, body, summary); the Starlette routing table, the OpenAPI document and the
auth test's "every route" list are all built from it, so none can drift from the
others. Handlers read the source's folded state (``api.source``) and keep their work
bounded (pagination, a tail of a log, the newest events). Query parameters are checked
by ``Param`` and a bad one is a 422 naming it; write bodies are parsed and validated
before any request is made, so a refused one changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from trafficcontrol.adapters.backlog_file import parse_backlog
from trafficcontrol.api.source import Source
from trafficcontrol.cli import views
from trafficcontrol.cli.capacity_report import capacity_report
from trafficcontrol.cli.cluster_report import cluster_dict
from trafficcontrol.cli.formats import when
from trafficcontrol.cli.health_report import health_report
from trafficcontrol.cli.profile_report import profile_dict
from trafficcontrol.domain.context import Thresholds
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import LeadConsulted
from trafficcontrol.domain.model import TaskId, TaskState
from trafficcontrol.domain.profile import profile
from trafficcontrol.domain.records import TaskRecord
from trafficcontrol.domain.requests import CancelRequest, RetryRequest
from trafficcontrol.domain.rotation import RotationConfig, rotation_stats
from trafficcontrol.domain.state import State
from trafficcontrol.errors import TrafficControlError
from trafficcontrol.ports import RequestResult

MAX_PAGE = 500
MAX_LOG_LINES = 2000
MAX_LOG_BYTES = 1_000_000
MAX_BODY_BYTES = 5_000_000
STATES = tuple(s.value for s in TaskState)


class BadRequest(Exception):
    """A 4xx naming the field at fault."""

    def __init__(self, status: int, field_name: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field_name = field_name
        self.message = message


def error(status: int, field_name: str | None, message: str) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field_name is not None:
        body["field"] = field_name
    return JSONResponse(body, status_code=status)


@dataclass(frozen=True, slots=True)
class Param:
    """A query or path parameter, as OpenAPI declares it."""

    name: str
    where: str = "query"
    kind: str = "string"
    description: str = ""
    enum: tuple[str, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    default: int | str | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind}
        if self.enum is not None:
            out["enum"] = list(self.enum)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.default is not None:
            out["default"] = self.default
        return out

    def read(self, request: Request) -> Any:
        raw = (request.path_params if self.where == "path" else request.query_params).get(self.name)
        if raw is None:
            return self.default
        if self.kind == "integer":
            try:
                value = int(raw)
            except ValueError:
                raise BadRequest(422, self.name, f"{self.name}: not an integer: {raw!r}") from None
            low = self.minimum if self.minimum is not None else -(2**63)
            high = self.maximum if self.maximum is not None else 2**63
            if not low <= value <= high:
                raise BadRequest(
                    422, self.name, f"{self.name}: {value} is not within {low}..{high}"
                )
            return value
        if self.enum is not None and raw not in self.enum:
            raise BadRequest(
                422, self.name, f"{self.name}: {raw!r} is not one of {', '.join(self.enum)}"
            )
        return raw


Handler = Callable[["Context", Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Context:
    """What every handler may use."""

    source: Source
    scheduler: SchedulerConfig
    rotation: RotationConfig
    home: Path


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    params: tuple[Param, ...] = ()
    body: dict[str, Any] | None = None
    """The request body's JSON schema (write routes)."""
    responses: tuple[int, ...] = (200,)
    tag: str = "read"
    extra: dict[str, Any] = field(default_factory=dict)


def _now() -> float:
    return time.time()


def ok(data: Any) -> JSONResponse:
    return JSONResponse(data)


def _task(state: State, request: Request) -> TaskRecord:
    task_id = request.path_params["task_id"]
    record = state.tasks.get(TaskId(task_id))
    if record is None:
        raise BadRequest(404, "task_id", f"task_id: no task {task_id!r}")
    return record


# -- reading ---------------------------------------------------------------------------
async def get_status(ctx: Context, _request: Request) -> Response:
    state = ctx.source.state
    data = views.status_dict(state, orchestrator_running=ctx.source.role == "orchestrator")
    sessions = rotation_stats(state, ctx.rotation)
    data["sessions"] = {
        "measured": sessions.sessions,
        "rotations": sessions.rotations,
        "delegation_rate": sessions.delegation_rate,
        "peak_utilisation": sessions.peak_utilisation,
        "mean_utilisation": sessions.mean_utilisation,
    }
    data["role"] = ctx.source.role
    return ok(data)


TASK_PARAMS = (
    Param("state", enum=STATES, description="Only tasks in this state."),
    Param("project", description="Only tasks of this project."),
    Param("limit", kind="integer", minimum=1, maximum=MAX_PAGE, default=50),
    Param("offset", kind="integer", minimum=0, default=0),
)


async def get_tasks(ctx: Context, request: Request) -> Response:
    state_filter, project, limit, offset = (p.read(request) for p in TASK_PARAMS)
    state = ctx.source.state
    records = [
        r
        for r in state.tasks.values()
        if (state_filter is None or r.state == state_filter)
        and (project is None or r.spec.project == project)
    ]
    page = records[offset : offset + limit]
    return ok(
        {
            "total": len(records),
            "offset": offset,
            "limit": limit,
            "tasks": [views.task_dict(state, r) for r in page],
        }
    )


async def get_task(ctx: Context, request: Request) -> Response:
    state = ctx.source.state
    record = _task(state, request)
    data = views.task_dict(state, record, attempts=True)
    data["dependents"] = sorted(
        t for t, r in state.tasks.items() if record.spec.id in r.spec.depends_on
    )
    return ok(data)


LOG_PARAMS = (Param("lines", kind="integer", minimum=1, maximum=MAX_LOG_LINES, default=200),)


def tail_lines(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path``, reading at most ``MAX_LOG_BYTES``."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - MAX_LOG_BYTES))
            data = file.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    if size > MAX_LOG_BYTES and text:
        text = text[1:]  # the first line read is likely cut
    return text[-lines:]


async def get_task_log(ctx: Context, request: Request) -> Response:
    (lines,) = (p.read(request) for p in LOG_PARAMS)
    state = ctx.source.state
    record = _task(state, request)
    if not record.attempts:
        return ok({"attempt": None, "path": None, "lines": []})
    attempt = state.attempts[record.attempts[-1]]
    tail = await asyncio.to_thread(tail_lines, Path(attempt.log_path), lines)
    return ok({"attempt": attempt.id, "path": attempt.log_path, "lines": tail})


async def get_agents(ctx: Context, _request: Request) -> Response:
    state, now = ctx.source.state, _now()
    return ok(
        {
            "agents": [
                {
                    "attempt": a.id,
                    "task": a.task_id,
                    "backend": a.backend,
                    "model": a.model,
                    "started_at": when(a.started_at),
                    "elapsed_s": round(now - a.started_at, 1),
                    "turns": a.turns,
                    "usage": views.usage_dict(a.turn_usage),
                    "context_tokens": a.context_tokens,
                    "adoptions": a.adoptions,
                    "stopping": a.stop_reason,
                }
                for a in state.running.values()
            ]
        }
    )


async def get_capacity(ctx: Context, _request: Request) -> Response:
    return ok(capacity_report(ctx.source.state, _now()))


async def get_context(ctx: Context, _request: Request) -> Response:
    state = ctx.source.state
    stats = rotation_stats(state, ctx.rotation)
    sessions = []
    for use in stats.by_session:
        attempt = state.attempts[use.attempt_id]
        sessions.append(
            {
                "attempt": use.attempt_id,
                "task": attempt.task_id,
                "model": attempt.model,
                "running": attempt.outcome is None,
                "window_tokens": use.window_tokens,
                "tokens": attempt.context_tokens,
                "peak_tokens": use.peak_tokens,
                "utilisation": (attempt.context_tokens or 0) / use.window_tokens,
                "peak_utilisation": use.utilisation,
                "rotated": use.rotated,
            }
        )
    lead = [
        e
        for e in ctx.source.hub.recent(limit=1000)
        if e["type"] == LeadConsulted.__struct_config__.tag
    ]
    thresholds = msgspec.to_builtins(Thresholds())
    return ok(
        {
            "thresholds": thresholds,
            "rotate_at": ctx.rotation.rotate_at,
            "sessions": sessions,
            "delegation_rate": stats.delegation_rate,
            "lead": {
                "consults": len(lead),
                "utilisation": lead[-1].get("context_utilisation", 0.0) if lead else None,
            },
        }
    )


async def get_health(ctx: Context, _request: Request) -> Response:
    data = health_report(ctx.source.state, _now(), ctx.scheduler)
    health = ctx.source.health()
    data["orchestrator"] = msgspec.to_builtins(health) if health is not None else None
    return ok(data)


EVENT_PARAMS = (
    Param("after", kind="integer", minimum=0, default=0, description="Sequence number."),
    Param("limit", kind="integer", minimum=1, maximum=1000, default=100),
)


async def get_events(ctx: Context, request: Request) -> Response:
    after, limit = (p.read(request) for p in EVENT_PARAMS)
    return ok(
        {"seq": ctx.source.state.seq, "events": ctx.source.hub.recent(after=after, limit=limit)}
    )


async def get_dag(ctx: Context, _request: Request) -> Response:
    state = ctx.source.state
    return ok(
        {
            "nodes": [
                {"id": t, "state": r.state, "project": r.spec.project, "title": r.spec.title}
                for t, r in state.tasks.items()
            ],
            "edges": [[d, t] for t, r in state.tasks.items() for d in r.spec.depends_on],
        }
    )


async def get_cluster(ctx: Context, _request: Request) -> Response:
    """``tc cluster --json``, with this instance's own view (role, epoch, lag)."""
    members = await ctx.source.members()
    data: dict[str, Any] = {"shared": members is not None, "leases": [], "instances": []}
    if members is not None:
        data.update(cluster_dict(*members))
    data["this"] = ctx.source.cluster() or {"role": ctx.source.role}
    return ok(data)


async def get_profile(ctx: Context, _request: Request) -> Response:
    """``tc profile --json`` of the journal, with this process's own operation spans."""
    events = await ctx.source.journal()
    result = await asyncio.to_thread(profile, events)
    data = profile_dict(
        result,
        max_agents=ctx.scheduler.max_agents,
        cores=os.cpu_count() or 1,
        operations=ctx.source.stats.spans.summary(),
    )
    data["available"] = True
    data["slow_spans"] = [
        {"operation": s.name, "seconds": s.seconds} for s in list(ctx.source.stats.spans.slow)
    ]
    return ok(data)


# -- writing ---------------------------------------------------------------------------
def result_response(result: RequestResult) -> JSONResponse:
    body = {"ok": result.ok, "message": result.message, "details": result.details}
    return JSONResponse(body, status_code=200 if result.ok else 409)


async def post_cancel(ctx: Context, request: Request) -> Response:
    record = _task(ctx.source.state, request)
    return result_response(await ctx.source.request(CancelRequest(task_id=record.spec.id)))


async def post_retry(ctx: Context, request: Request) -> Response:
    record = _task(ctx.source.state, request)
    return result_response(await ctx.source.request(RetryRequest(task_id=record.spec.id)))


BACKLOG_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["toml"],
    "additionalProperties": False,
    "properties": {
        "toml": {
            "type": "string",
            "description": "A backlog file's text, as tc submit reads it; project paths absolute.",
        }
    },
}


def _check_paths(text: str) -> None:
    """Project paths must be absolute: a request has no directory to be relative to."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # parse_backlog names the position
    projects = data.get("projects")
    if not isinstance(projects, list):
        return
    for index, entry in enumerate(projects):
        path = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(path, str) and not Path(path).is_absolute():
            raise BadRequest(
                422,
                f"toml.projects[{index}].path",
                f"projects[{index}].path: {path!r} is"
                " not absolute (a backlog sent over HTTP has no directory to resolve it from)",
            )


async def post_backlog(ctx: Context, request: Request) -> Response:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(413, "toml", f"body: larger than {MAX_BODY_BYTES} bytes")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(400, "body", f"body: not JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) != {"toml"} or not isinstance(body["toml"], str):
        raise BadRequest(422, "toml", 'body: expected {"toml": "<backlog text>"} and nothing else')
    text: str = body["toml"]
    _check_paths(text)
    try:
        submission = await asyncio.to_thread(
            parse_backlog, text, source="POST /api/backlog", base=Path("/")
        )
    except TrafficControlError as exc:
        problems = getattr(exc, "problems", [])
        return JSONResponse(
            {"ok": False, "field": "toml", "error": exc.message, "details": problems},
            status_code=422,
        )
    result = await ctx.source.request(submission)
    if not result.ok:
        return JSONResponse(
            {"ok": False, "field": "toml", "error": result.message, "details": result.details},
            status_code=422,
        )
    return result_response(result)


TASK_ID = Param("task_id", where="path", description="The task's id.")

ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/status", get_status, "Counts, running agents, waits, usage (tc status)"),
    Route("GET", "/api/tasks", get_tasks, "Tasks, filtered and paginated", TASK_PARAMS),
    Route(
        "GET",
        "/api/tasks/{task_id}",
        get_task,
        "One task, its attempts",
        (TASK_ID,),
        responses=(200, 404),
    ),
    Route(
        "GET",
        "/api/tasks/{task_id}/log",
        get_task_log,
        "The tail of the task's newest attempt's log",
        (TASK_ID, *LOG_PARAMS),
        responses=(200, 404),
    ),
    Route("GET", "/api/agents", get_agents, "Agents running now"),
    Route("GET", "/api/capacity", get_capacity, "Capacity windows and projections (tc capacity)"),
    Route("GET", "/api/context", get_context, "Context utilisation per session and the lead"),
    Route("GET", "/api/health", get_health, "Breakers, incidents, degraded modes (tc health)"),
    Route("GET", "/api/events", get_events, "The journal's recent events", EVENT_PARAMS),
    Route("GET", "/api/dag", get_dag, "Tasks and their dependencies"),
    Route("GET", "/api/profile", get_profile, "The profiler's summary"),
    Route(
        "GET", "/api/cluster", get_cluster, "Leases and instances on a shared store (tc cluster)"
    ),
    Route(
        "POST",
        "/api/tasks/{task_id}/cancel",
        post_cancel,
        "Cancel a task (tc cancel)",
        (TASK_ID,),
        responses=(200, 404, 409),
        tag="write",
    ),
    Route(
        "POST",
        "/api/tasks/{task_id}/retry",
        post_retry,
        "Queue a failed or cancelled task again (tc retry)",
        (TASK_ID,),
        responses=(200, 404, 409),
        tag="write",
    ),
    Route(
        "POST",
        "/api/backlog",
        post_backlog,
        "Submit a backlog (tc submit): all of it, or nothing",
        body=BACKLOG_BODY,
        responses=(200, 400, 413, 422),
        tag="write",
    ),
)
