"""``tc serve`` and ``tc http token``."""

from __future__ import annotations

import asyncio

import typer

from trafficcontrol.api.auth import load_or_create_token
from trafficcontrol.api.server import DEFAULT_HOST, DEFAULT_PORT
from trafficcontrol.cli.app import HomeOption, HttpOption, fail, make_app
from trafficcontrol.cli.http import listen, serve_home
from trafficcontrol.errors import TrafficControlError

http_app = typer.Typer(help="The dashboard's token.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``http`` to ``app`` (once, however often it is called)."""
    if "serve" not in {command.name for command in app.registered_commands}:
        app.command("serve")(serve_command)
        app.add_typer(http_app, name="http")


@http_app.command("token")
def token_command(home: HomeOption = None) -> None:
    """Print the token the dashboard and API require (created if there is none)."""
    app_ = make_app(home)
    try:
        token, _created = load_or_create_token(app_.home.root)
    except TrafficControlError as exc:
        fail(exc.message, code=2)
    typer.echo(token)


def serve_command(http_at: HttpOption = None, home: HomeOption = None) -> None:
    """Serve the dashboard of a state home while no tc run serves it (read-only view;
    cancel, retry and submit go to the journal as the CLI's do). Ctrl-C stops."""
    app_ = make_app(home)
    try:
        at = http_at or app_.settings.http.listen or f"{DEFAULT_HOST}:{DEFAULT_PORT}"
        listener = listen(app_, at)
        assert listener is not None
        asyncio.run(serve_home(app_, listener))
    except TrafficControlError as exc:
        fail(exc.message, code=2)
    finally:
        app_.close()
