"""``tc capacity``: every metered window with where each of its figures comes from.

One report (``capacity_report`` in ``capacity_report.py``) is built from the folded state
and the App's clock; the JSON is that report, the text view (``capacity_view.py``)
renders it. Every figure carries its source: a window's used / remaining / utilization
are ``reported`` (the provider's rate-limit figure), ``reported+estimated`` (that figure
plus local usage since) or ``estimated`` (summed from usage entries); burn rates and
projections are always estimated. Usage nobody reported is counted as unknown entries,
never as zero.

The plan: the state's, as the last ``tc run`` journaled it. When no orchestrator runs
and ``config.toml`` says something else, the report uses ``config.toml`` (what the next
run will journal) and says so.
"""

from __future__ import annotations

from typing import Annotated

import typer

from trafficcontrol.cli.app import HomeOption, JsonOption, emit_json, existing_state, make_app, out
from trafficcontrol.cli.capacity_report import HOURS, adopt_config, capacity_report, sparkline
from trafficcontrol.cli.capacity_view import PLAN_HINT, render, short

__all__ = [
    "HOURS",
    "PLAN_HINT",
    "adopt_config",
    "capacity_command",
    "capacity_report",
    "register",
    "render",
    "short",
    "sparkline",
]


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
