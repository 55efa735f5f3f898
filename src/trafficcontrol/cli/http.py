"""Serving the dashboard from ``tc run --http`` and ``tc serve`` (commands: ``cli.serve``).

The server itself is ``trafficcontrol.api``; this module binds it (early, so a taken
port fails before recovery starts), tells the user where it is, and runs it beside the
orchestrator (``serving``) or beside a read-only journal follower (``tc serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from trafficcontrol.api.app import build_app
from trafficcontrol.api.auth import check_bind, load_or_create_token, token_path
from trafficcontrol.api.metrics import LoopLag
from trafficcontrol.api.routes import Context
from trafficcontrol.api.server import HttpServer, bind, parse_listen
from trafficcontrol.api.source import JournalFollower, OrchestratorSource, Source
from trafficcontrol.bootstrap import App
from trafficcontrol.runtime.member import Member
from trafficcontrol.runtime.orchestrator import Orchestrator

err = Console(stderr=True)


@dataclass(slots=True)
class Listener:
    """A bound socket and the token it will require (None: auth off, loopback only)."""

    socket: socket.socket
    token: str | None
    token_created: bool


def listen(app_: App, listen_at: str | None) -> Listener | None:
    """Bind what ``--http`` or ``[http] listen`` asks for (None: neither does).
    Raises ``TrafficControlError`` naming the value or the address."""
    value = listen_at if listen_at is not None else app_.settings.http.listen
    if value is None:
        return None
    host, port = parse_listen(value)
    auth = app_.settings.http.auth
    check_bind(host, auth=auth)
    token, created = load_or_create_token(app_.home.root) if auth else (None, False)
    return Listener(bind(host, port), token, created)


def announce(server: HttpServer, listener: Listener, home: Path) -> None:
    """Where the dashboard is. The token is shown once, when it was just created."""
    if listener.token is None:
        err.print(
            f"dashboard: {server.url}/ (no token: loopback only)", highlight=False, soft_wrap=True
        )
    elif listener.token_created:
        err.print(
            f"dashboard: {server.url}/?token={listener.token}\n"
            f"  the token is saved in {token_path(home)} (0600); tc http token shows it",
            highlight=False,
            soft_wrap=True,
        )
    else:
        err.print(
            f"dashboard: {server.url}/ (add ?token=… once; tc http token shows it)",
            highlight=False,
            soft_wrap=True,
        )


def context(app_: App, source: Source) -> Context:
    return Context(
        source=source,
        scheduler=app_.settings.scheduler(),
        rotation=app_.settings.context,
        home=app_.home.root,
    )


@contextlib.asynccontextmanager
async def serving(
    app_: App,
    listener: Listener | None,
    current: Callable[[], Orchestrator],
    member: Orchestrator | Member | None = None,
) -> AsyncIterator[HttpServer | None]:
    """The server on this loop while the body runs (nothing when ``listener`` is None).
    ``current``: the orchestrator this process runs now (a member's changes with its
    role)."""
    if listener is None:
        yield None
        return
    cluster = member.cluster if isinstance(member, Member) else None
    source = OrchestratorSource(
        current, lambda: App(app_.home, environ=app_.environ), cluster=cluster
    )
    async with _served(app_, listener, source) as server:
        yield server
    source.close()


@contextlib.asynccontextmanager
async def _served(app_: App, listener: Listener, source: Source) -> AsyncIterator[HttpServer]:
    lag = LoopLag()
    app = build_app(
        context(app_, source),
        token=listener.token,
        healthy_after_s=app_.settings.http.healthy_after_s,
        lag=lag,
    )
    server = HttpServer(app, listener.socket)
    await server.start()
    lag_task = asyncio.create_task(lag.run(), name="loop-lag")
    announce(server, listener, app_.home.root)
    try:
        yield server
    finally:
        lag_task.cancel()
        source.hub.close()
        await server.stop()


async def serve_home(app_: App, listener: Listener) -> None:
    """``tc serve``: the dashboard of a state home no orchestrator here runs, until
    SIGINT/SIGTERM."""
    follower = JournalFollower(lambda: App(app_.home, environ=app_.environ))
    await follower.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    following = asyncio.create_task(follower.follow(), name="journal-follower")
    try:
        async with _served(app_, listener, follower):
            err.print(
                f"tc serve: following {app_.home.root} (Ctrl-C stops)",
                highlight=False,
                soft_wrap=True,
            )
            await stop.wait()
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        follower.close()
