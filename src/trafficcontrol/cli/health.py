"""``tc health``: is anything degraded now, since when, and what has been failing.

One report (``health_report`` in ``health_report.py``) is built from the folded state,
the App's clock and the scheduler settings; the JSON is that report, the text view
(``health_view.py``) renders it. It reads only what the journal says: circuit breakers
(``BreakerChanged``), the failure class of every failed attempt, tasks waiting and why,
and incidents (a breaker's open -> closed; a dependency such as the store journals its
outages the same way, under its own key).

Degraded modes: a breaker that is not closed (its work is routed a tier down, or held
when it may not move), an incident still open, ready tasks held by a breaker, tasks
waiting for capacity, tasks backing off after transient failures. The exit code is 0
when none is active, 1 when any is (for scripts and monitoring), 2 when there is no
state to judge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trafficcontrol.bootstrap import App
from trafficcontrol.cli.app import (
    HomeOption,
    JsonOption,
    emit_json,
    existing_state,
    make_app,
    out,
)
from trafficcontrol.cli.health_report import (
    DEGRADED,
    HEALTHY,
    RECENT,
    UNKNOWN,
    health_report,
)
from trafficcontrol.cli.health_view import render
from trafficcontrol.domain.state import State

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "RECENT",
    "UNKNOWN",
    "health_command",
    "health_report",
    "open_home",
    "register",
    "render",
]


def register(app: typer.Typer) -> None:
    """Add ``health`` to ``app`` (once, however often it is called)."""
    if "health" not in {command.name for command in app.registered_commands}:
        app.command("health")(health_command)


def health_command(
    home: HomeOption = None,
    as_json: JsonOption = False,
    errors: Annotated[int, typer.Option(help="Recent errors to list.", min=0)] = RECENT,
) -> None:
    """Breakers, degraded modes, errors by class, incidents and MTTR. Exit 1 when degraded."""
    app_, state = open_home(home)
    data = health_report(state, app_.clock.now(), app_.settings.scheduler(), recent=errors)
    if as_json:
        emit_json(data)
    else:
        for part in render(data):
            out.print(part)
    raise typer.Exit(data["exit_code"])


def open_home(home: Path | None) -> tuple[App, State]:
    """The App of an existing state home. When there is none (or the config is bad) the
    error is printed as every command prints it, but the exit code is 2: 1 means
    degraded."""
    try:
        app_ = make_app(home)
        return app_, existing_state(app_)
    except typer.Exit as exc:
        raise typer.Exit(UNKNOWN) from exc
