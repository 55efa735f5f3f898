"""``tc worker``: run agents on this machine for a leader elsewhere (PostgreSQL store).

Projects whose tasks name a backend ``<name>@workers`` (``agent = "claude@workers"``)
are not run by the leader itself: it queues each attempt, and a ``tc worker`` with a
checkout of the project claims and runs it, reporting back through the store.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Annotated

import typer

from trafficcontrol.cli.app import HomeOption, err, fail, make_app
from trafficcontrol.errors import TrafficControlError


def register(app: typer.Typer) -> None:
    """Add ``worker`` to ``app`` (once, however often it is called)."""
    if "worker" not in {command.name for command in app.registered_commands}:
        app.command("worker")(worker_command)


def parse_checkouts(values: list[str]) -> dict[str, Path]:
    """``ID=PATH`` pairs: each project this worker has a checkout of."""
    checkouts: dict[str, Path] = {}
    for value in values:
        project, sep, path = value.partition("=")
        if not sep or not project or not path:
            fail(f"--project {value!r}: expected ID=PATH (a project id and its checkout)")
        checkout = Path(path).expanduser().resolve()
        if not checkout.is_dir():
            fail(f"--project {value!r}: {checkout} is not a directory")
        checkouts[project] = checkout
    if not checkouts:
        fail("name at least one --project ID=PATH: the projects this worker can run")
    return checkouts


def worker_command(
    project: Annotated[
        list[str],
        typer.Option(help="A project this machine has a checkout of, as ID=PATH (repeatable)."),
    ],
    host_id: Annotated[
        str | None, typer.Option(help="This worker's name [default: the host name].")
    ] = None,
    max_agents: Annotated[int, typer.Option(help="Agents at once on this machine.")] = 4,
    home: HomeOption = None,
) -> None:
    """Run the attempts a leader queues for workers, for the projects checked out here,
    until Ctrl-C/SIGTERM (its agents are stopped; the leader retries their attempts)."""
    if max_agents < 1:
        fail("--max-agents must be at least 1")
    checkouts = parse_checkouts(project)
    app_ = make_app(home)
    name = host_id or socket.gethostname()
    try:
        try:
            worker = app_.worker(host_id=name, checkouts=checkouts, max_agents=max_agents)
        except TrafficControlError as exc:
            fail(exc.message, code=2)
        err.print(
            f"tc worker {name} (pid {os.getpid()}): projects {', '.join(sorted(checkouts))},"
            f" {max_agents} agents at once",
            highlight=False,
        )

        async def run() -> None:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, worker.stop)
            await worker.run()

        try:
            asyncio.run(run())
        except TrafficControlError as exc:
            fail(exc.message)
        err.print(f"tc worker {name}: stopped after {worker.ran} attempts", highlight=False)
    finally:
        app_.close()
