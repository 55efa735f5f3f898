"""``tc profile``: where a backlog's time went (``domain.profile``), from its journal."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from trafficcontrol.bootstrap import App
from trafficcontrol.cli.app import (
    HomeOption,
    JsonOption,
    emit_json,
    err,
    fail,
    make_app,
    out,
    require_state,
)
from trafficcontrol.cli.formats import duration
from trafficcontrol.cli.profile_report import PROFILE_FILE, profile_dict, read_saved
from trafficcontrol.domain.profile import (
    PHASES,
    profile,
)
from trafficcontrol.domain.requests import SampleRequest


def _seconds(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def register(app: typer.Typer) -> None:
    """Add ``profile`` to ``app`` (once, however often it is called)."""
    if "profile" not in {command.name for command in app.registered_commands}:
        app.command("profile")(profile_command)


def parse_duration(text: str) -> float:
    """``30s``, ``2m``, ``90``: seconds; raises ``typer.BadParameter`` naming the value."""
    value = text.strip().lower()
    scale = {"s": 1.0, "m": 60.0}.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration (30s, 2m, 90)") from None
    if not 0 < seconds <= 600:
        raise typer.BadParameter(f"{text!r}: a sample lasts more than 0 s and at most 10m")
    return seconds


def sample(app_: App, seconds: float) -> None:
    """Ask the running orchestrator for a sampling profile; wait for its report."""
    result = app_.request(SampleRequest(seconds=seconds))
    if not result.ok:
        fail(result.message, code=2)
    html, speedscope = (Path(p) for p in result.details)
    err.print(f"tc profile: {result.message}; the report goes to {html}", highlight=False)
    deadline = time.monotonic() + seconds + 60
    while not html.exists():
        if time.monotonic() > deadline:
            fail(f"no report at {html} within {seconds + 60:.0f} s (see tc run's output)")
        time.sleep(0.2)  # another process writes it: nothing to wait on
    out.print(f"report: {html}\nspeedscope: {speedscope}", highlight=False)


def profile_command(
    home: HomeOption = None,
    as_json: JsonOption = False,
    sample_for: Annotated[
        str | None,
        typer.Option(
            "--sample",
            metavar="DURATION",
            help="Sample the running tc run's stacks this long (30s, 2m) with pyinstrument"
            " and save an HTML and a speedscope report under <home>/profiles/.",
        ),
    ] = None,
) -> None:
    """Where the backlog's time went: phases of every attempt, the critical path, the
    top bottlenecks, and what to change (from the journal; works while tc run runs)."""
    app_ = make_app(home)
    if sample_for is not None:
        sample(app_, parse_duration(sample_for))
        return
    require_state(app_)  # the profile reads the journal itself, not the folded state
    events = [event for _seq, event in app_.journal().read()]
    result = profile(events)
    saved = read_saved(app_.home.root / PROFILE_FILE)
    data = profile_dict(
        result,
        max_agents=app_.settings.run.max_agents,
        cores=os.cpu_count() or 1,
        operations=saved,
    )
    if as_json:
        emit_json(data)
        return
    out.print(
        f"profile: {data['tasks']} tasks, {data['attempts']} attempts,"
        f" makespan {duration(result.makespan_s)}",
        highlight=False,
    )
    table = Table(title="Attempt phases (seconds)")
    for column in ("phase", "n", "total", "p50", "p99", "max"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in PHASES:
        s = result.phases[phase]
        table.add_row(phase, str(s.count), *(f"{v:.3f}" for v in (s.total, s.p50, s.p99, s.max)))
    out.print(table)
    if saved:
        ops = Table(title=f"Orchestrator operations (the last tc run, {PROFILE_FILE})")
        for column in ("operation", "n", "total s", "p50 ≤ s", "p99 ≤ s"):
            ops.add_column(column, justify="left" if column == "operation" else "right")
        for name, figures in saved.items():
            ops.add_row(
                name,
                str(figures.get("count")),
                *(_seconds(figures.get(k)) for k in ("total_s", "p50_s", "p99_s")),
            )
        out.print(ops)
    o, h = result.orchestration, result.handoffs
    out.print(
        f"orchestration, ready → agent started: p50 {o.p50:.3f} s, p99 {o.p99:.3f} s;"
        f" a dependency's agent exit → its dependent's agent start: p50 {h.p50:.3f} s,"
        f" p99 {h.p99:.3f} s",
        highlight=False,
    )
    chain = " → ".join(s.task_id for s in result.critical_path)
    orchestration = result.path_orchestration_s
    out.print(
        f"critical path: {chain} ({orchestration:.2f} s of it orchestration)", highlight=False
    )
    for rank, (phase, seconds, share) in enumerate(result.bottlenecks(), 1):
        out.print(f"  {rank}. {phase}: {seconds:.2f} s ({share:.0%} of the makespan)")
    for rec in data["recommendations"]:
        out.print(f"recommendation: {rec['text']} [{rec['key']}]", highlight=False)
