"""The ASGI application: the JSON API (``api.routes``), the live stream, ``/metrics``,
health checks and the dashboard pages, behind the token (``api.auth``).

Design note. ``/healthz`` is liveness — the loop (or ``tc serve``'s follower) turned
within ``healthy_after_s`` — and needs no token, so that a probe holding no secret can
ask it. ``/readyz`` is readiness: the state is recovered and the store takes writes.
``/api/events/stream`` is Server-Sent Events: one ``journal`` message per committed
batch carrying the events' summaries and the counts by state after it, so a page
updates without asking anything back (``api.hub`` says what a message carries).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from trafficcontrol import __version__
from trafficcontrol.api import pages
from trafficcontrol.api.auth import TokenAuth
from trafficcontrol.api.hub import (
    COALESCE_S,
    MAX_SUMMARIES,
    MAX_TOUCHED,
    counts_of,
    encode,
    summary,
    tail,
    touched,
)
from trafficcontrol.api.metrics import LoopLag, StateCollector
from trafficcontrol.api.routes import ROUTES, BadRequest, Context, Handler, error
from trafficcontrol.api.routes import Route as ApiRoute
from trafficcontrol.runtime.stats import Spans

STREAM_PING_S = 15.0
OPENAPI_PATH = "/api/openapi.json"
STREAM_PATH = "/api/events/stream"


def openapi(routes: tuple[ApiRoute, ...] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (module notes of ``api.routes``)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "tags": [route.tag],
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.where == "path",
                    "description": p.description,
                    "schema": p.schema(),
                }
                for p in route.params
            ],
            "responses": {
                str(code): {
                    "description": "ok" if code == 200 else "refused; nothing changed",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
                for code in (*route.responses, 401)
            },
        }
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": route.body}},
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "TrafficControl", "version": __version__},
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"token": []}],
        "paths": paths,
    }


def _endpoint(ctx: Context, handler: Handler) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(ctx, request)
        except BadRequest as exc:
            return error(exc.status, exc.field_name, exc.message)

    endpoint.__name__ = handler.__name__
    return endpoint


class Live:
    """Liveness and readiness (module notes)."""

    def __init__(self, ctx: Context, healthy_after_s: float) -> None:
        self._ctx = ctx
        self._healthy_after_s = healthy_after_s

    async def healthz(self, _request: Request) -> Response:
        stats = self._ctx.source.stats
        age = None if stats.last_turn is None else time.monotonic() - stats.last_turn
        alive = age is not None and age <= self._healthy_after_s
        return JSONResponse(
            {"ok": alive, "loop_turned_s_ago": None if age is None else round(age, 3)},
            status_code=200 if alive else 503,
        )

    async def readyz(self, _request: Request) -> Response:
        """Leader (or alone): recovered and the store takes writes. Standby: caught up
        with the journal within ``STANDBY_LAG_S`` (it serves reads; writes go through the
        journal's inbox to the leader either way)."""
        source = self._ctx.source
        cluster = source.cluster()
        body: dict[str, Any] = {"role": source.role}
        if cluster is not None and cluster.get("role") == "standby":
            caught_up_at = cluster.get("caught_up_at")
            lag_s = None if not isinstance(caught_up_at, float) else time.time() - caught_up_at
            checks = {"following": lag_s is not None and lag_s <= STANDBY_LAG_S}
            body["lag_s"] = None if lag_s is None else round(lag_s, 3)
        else:
            checks = {"recovered": source.stats.recovered, "store_writable": source.writable()}
        if cluster is not None:
            body.update({k: v for k, v in cluster.items() if k not in ("role", "caught_up_at")})
        ready = all(checks.values())
        return JSONResponse({"ready": ready, **body, **checks}, status_code=200 if ready else 503)


STANDBY_LAG_S = 5.0
"""A standby that has not caught up with the journal for this long is not ready."""


def _stream(ctx: Context) -> Callable[[Request], Any]:
    hub = ctx.source.hub

    async def stream(_request: Request) -> Response:
        state = ctx.source.state
        subscriber = hub.subscribe(state.seq)

        async def messages() -> AsyncIterator[ServerSentEvent]:
            try:
                hello = {"seq": state.seq, "counts": counts_of(state)}
                yield ServerSentEvent(encode(hello), event="hello")
                sent = 0.0
                while not hub.closed:
                    await subscriber.wake.wait()
                    subscriber.wake.clear()
                    if time.monotonic() - sent < COALESCE_S:
                        await asyncio.sleep(COALESCE_S)  # a burst becomes one message
                    sent = time.monotonic()
                    batches = hub.since(subscriber.cursor)
                    gap = batches is None
                    if batches is None:  # fell out of the ring: say so, send what is held
                        batches = hub.held()
                    if not batches:
                        continue
                    first, events = batches[-1]
                    subscriber.cursor = last = first + len(events) - 1
                    count = sum(len(b[1]) for b in batches)
                    now = ctx.source.state
                    tasks, attempts = (
                        touched(batches) if count <= MAX_TOUCHED and not gap else (None, None)
                    )
                    message = {
                        "seq": last,
                        "gap": gap,
                        "events": [summary(seq, e) for seq, e in tail(batches, MAX_SUMMARIES)],
                        "dropped": max(0, count - MAX_SUMMARIES),
                        "tasks": tasks,
                        "attempts": attempts,
                        "counts": counts_of(now),
                        "running": len(now.running),
                    }
                    yield ServerSentEvent(encode(message), event="journal", id=str(last))
            finally:
                hub.unsubscribe(subscriber)

        return EventSourceResponse(messages(), ping=STREAM_PING_S, send_timeout=30)

    return stream


class Timed:
    """ASGI middleware: each request's time as the ``http`` span (not the live stream,
    which lasts as long as its page is open)."""

    def __init__(self, app: Any, spans: Spans) -> None:
        self.app = app
        self._spans = spans

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == STREAM_PATH:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            self._spans.observe("http", started, time.monotonic())


def build_app(
    ctx: Context, *, token: str | None, healthy_after_s: float = 10.0, lag: LoopLag | None = None
) -> Any:
    """The whole ASGI app, the token middleware outermost."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(ctx.source, lag, ctx.rotation))
    live = Live(ctx, healthy_after_s)
    document = openapi()

    async def metrics(_request: Request) -> Response:
        # On the loop: the collector reads the state between two turns (api.metrics).
        data = generate_latest(registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    async def schema(_request: Request) -> Response:
        return JSONResponse(document)

    routes: list[BaseRoute] = [
        Route("/healthz", live.healthz),
        Route("/readyz", live.readyz),
        Route("/metrics", metrics),
        Route(OPENAPI_PATH, schema),
        Route(STREAM_PATH, _stream(ctx)),
        *(
            Route(r.path, _endpoint(ctx, r.handler), methods=[r.method], name=r.handler.__name__)
            for r in ROUTES
        ),
        *pages.routes(ctx),
        Mount("/static", app=pages.static_files(), name="static"),
    ]
    app = Starlette(routes=routes)
    return TokenAuth(Timed(app, ctx.source.stats.spans), token)
