"""``tc simulate [BACKLOG]`` (plan a backlog, or test the scheduler under faults) and
``tc verify`` (check the invariants on a real journal).

A simulated backlog needs no project directories: a path that does not exist is
simulated as a git repository (parallel worktrees, as ``tc demo`` creates them), one
that exists as what it is. Every simulated run replays exactly from its flags, so a
violation prints the command that reproduces it.
"""

from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.markup import escape
from rich.table import Table

from trafficcontrol.adapters.backlog_file import parse_backlog, read_backlog
from trafficcontrol.cli.app import HomeOption, JsonOption, emit_json, fail, make_app, out
from trafficcontrol.cli.formats import duration
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import AnyEvent
from trafficcontrol.domain.invariants import verify_journal
from trafficcontrol.domain.model import SIMULATED_LABEL
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.errors import TrafficControlError
from trafficcontrol.runtime.sim_faults import Faults, SimOptions
from trafficcontrol.runtime.sim_report import SimReport
from trafficcontrol.runtime.simulator import simulate

DEMO_BACKLOG = "demo_backlog.toml"
_VIRTUAL_BASE = Path("/simulated/demo")
_RATE_FLAGS = {
    "agent_crash": "--agent-crash-rate",
    "agent_hang": "--hang-rate",
    "orchestrator_crash": "--crash-rate",
    "store_failure": "--store-failure-rate",
    "slow_disk": "--slow-disk-rate",
    "supervisor_lost": "--supervisor-lost-rate",
}


# -- reading a backlog without its directories ------------------------------------------
def load_backlog(path: Path | None) -> SubmitRequest:
    """The backlog at ``path`` (the bundled demo backlog when None), for simulation:
    checked as ``tc submit`` checks it, except that project directories need not exist."""
    if path is None:
        text = resources.files("trafficcontrol.cli").joinpath(DEMO_BACKLOG).read_text()
        return parse_backlog(
            text, source=f"(bundled) {DEMO_BACKLOG}", base=_VIRTUAL_BASE, require_dirs=False
        )
    return read_backlog(path, require_dirs=False)


# -- the replay command -------------------------------------------------------------------
def replay_command(
    backlog: str | None,
    *,
    seed: int,
    config: SchedulerConfig,
    faults: Faults,
    options: SimOptions | None = None,
) -> str:
    """The ``tc simulate`` command line that runs exactly this simulation again."""
    argv = ["tc", "simulate"]
    if backlog is not None:
        argv.append(backlog)
    argv += ["--seed", str(seed), "--agents", str(config.max_agents)]
    if config.per_project is not None:
        argv += ["--per-project", str(config.per_project)]
    for model, limit in sorted(config.per_model.items()):
        argv += ["--per-model", f"{model}={limit}"]
    if options is not None and options.mean_duration_s != SimOptions().mean_duration_s:
        argv += ["--mean-duration", repr(options.mean_duration_s)]
    if faults == Faults.all_on():
        argv.append("--faults")
    else:
        for name, flag in _RATE_FLAGS.items():
            rate = getattr(faults, name)
            if rate:
                argv += [flag, repr(rate)]
    return shlex.join(argv)


def _faults(enabled: bool, overrides: dict[str, float | None]) -> Faults:
    base = Faults.all_on() if enabled else Faults()
    given = {name: rate for name, rate in overrides.items() if rate is not None}
    for name, rate in given.items():
        if not 0.0 <= rate <= 1.0:
            fail(f"{_RATE_FLAGS[name]} must be between 0 and 1 (got {rate})")
    return msgspec.structs.replace(base, **given)


def _per_model(values: list[str]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for value in values:
        model, _, limit = value.partition("=")
        if not model or not limit.isdigit() or int(limit) < 1:
            fail(f"--per-model {value!r}: use MODEL=N with N at least 1, e.g. opus=2")
        limits[model] = int(limit)
    return limits


# -- tc simulate -------------------------------------------------------------------------
def simulate_command(
    backlog: Annotated[
        Path | None, typer.Argument(help="Backlog TOML file (default: the bundled demo backlog).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random draw; same seed, same run.")] = 0,
    agents: Annotated[int, typer.Option("--agents", help="Agents at once.")] = 10,
    per_project: Annotated[int | None, typer.Option(help="Default agents per project.")] = None,
    per_model: Annotated[
        list[str] | None, typer.Option("--per-model", help="MODEL=N, repeatable.")
    ] = None,
    faults_on: Annotated[
        bool, typer.Option("--faults/--no-faults", help="Every fault kind at its default rate.")
    ] = False,
    agent_crash_rate: Annotated[float | None, typer.Option(help="Per attempt.")] = None,
    hang_rate: Annotated[float | None, typer.Option(help="Per attempt.")] = None,
    crash_rate: Annotated[float | None, typer.Option(help="Orchestrator, per commit.")] = None,
    store_failure_rate: Annotated[float | None, typer.Option(help="Per commit.")] = None,
    slow_disk_rate: Annotated[float | None, typer.Option(help="Per commit.")] = None,
    supervisor_lost_rate: Annotated[
        float | None,
        typer.Option(help="Per agent running at an orchestrator crash: its supervisor dies too."),
    ] = None,
    mean_duration: Annotated[
        float,
        typer.Option(help="Mean seconds per attempt of claude/command tasks without sim settings."),
    ] = SimOptions().mean_duration_s,
    as_json: JsonOption = False,
) -> None:
    """Run a backlog in virtual time on simulated agents: how long it takes with N agents,
    and whether every invariant holds under injected faults. Calls no model."""
    if agents < 1:
        fail("--agents must be at least 1")
    config = SchedulerConfig(
        max_agents=agents, per_project=per_project, per_model=_per_model(per_model or [])
    )
    faults = _faults(
        faults_on,
        {
            "agent_crash": agent_crash_rate,
            "agent_hang": hang_rate,
            "orchestrator_crash": crash_rate,
            "store_failure": store_failure_rate,
            "slow_disk": slow_disk_rate,
            "supervisor_lost": supervisor_lost_rate,
        },
    )
    options = SimOptions(mean_duration_s=mean_duration)
    try:
        request = load_backlog(backlog)
        report = simulate(request, config, seed=seed, faults=faults, options=options)
    except TrafficControlError as exc:
        fail(exc.message, getattr(exc, "problems", None))
    replay = replay_command(
        None if backlog is None else str(backlog),
        seed=seed,
        config=config,
        faults=faults,
        options=options,
    )
    if as_json:
        emit_json({**report.to_json(), "replay": replay})
    else:
        _print_report(report)
        if report.violations:
            out.print(f"[bold red]invariant violated[/]; replay with:\n  {replay}", highlight=False)
    if report.violations:
        raise typer.Exit(1)


def _print_report(report: SimReport) -> None:
    title = f"Simulation of {report.source} (seed {report.seed}) {SIMULATED_LABEL}"
    table = Table(title=escape(title))
    table.add_column("measure")
    table.add_column("value", justify="right")
    tasks = report.tasks
    rows = [
        ("makespan", f"{duration(report.makespan_s)} ({report.makespan_s:.1f}s virtual)"),
        ("utilisation", f"{report.utilisation:.0%} of {report.max_agents} agents"),
        (
            "tasks",
            f"{tasks['total']} total, {tasks['done']} done, {tasks['failed']} failed,"
            f" {tasks['cancelled']} cancelled, {tasks['pending']} pending",
        ),
        ("attempts", f"{report.attempts} ({report.retries} retries after back-off)"),
        ("failures", _pairs(report.failures) or "none"),
        ("faults injected", _pairs({k: v for k, v in report.faults.items() if v}) or "none"),
        (
            "recoveries",
            f"{report.recoveries} ({report.from_snapshot} from snapshot,"
            f" {report.full_replay} by full replay)",
        ),
        (
            "agents at recovery",
            f"{report.adopted} adopted, {report.finished_while_down} finished while down,"
            f" {report.lost} lost with their supervisor, {report.unstarted} never started",
        ),
        ("journal", f"{report.events} events in {report.commits} commits"),
    ]
    for model, usage in report.tokens.items():
        rows.append(
            (
                f"tokens {model}",
                f"{int(usage['input']):,} in / {int(usage['output']):,} out,"
                f" ${usage['cost_usd']:.2f}",
            )
        )
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)
    if report.violations:
        for violation in report.violations:
            out.print(f"[bold red]violation:[/] {violation}", highlight=False)
    elif report.settled:
        out.print("[green]every invariant held[/] (agents and usage are simulated)")


def _pairs(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


# -- tc verify -----------------------------------------------------------------------------
def verify_command(
    home: HomeOption = None,
    settled: Annotated[
        bool, typer.Option("--settled", help="Also require a finished run: nothing left open.")
    ] = False,
    max_agents: Annotated[
        int | None, typer.Option(help="The global limit the run had (default: config.toml's).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check the invariants on this home's journal: no task lost or done twice,
    dependencies, locks, limits, one outcome per attempt. Exit 1 naming each violation."""
    app_ = make_app(home)
    if not app_.has_state():
        fail(f"no state in {app_.home.root}: nothing to verify")
    config = app_.settings.scheduler()
    if max_agents is not None:
        config = msgspec.structs.replace(config, max_agents=max_agents)
    events: list[AnyEvent] = []
    problems: list[str] = []
    try:
        for seq, event in app_.journal().read():
            if seq != len(events) + 1:
                problems.append(f"at seq {seq}: the journal skips from {len(events)} to {seq}")
            events.append(event)
    except TrafficControlError as exc:
        fail(exc.message)
    finally:
        app_.close()
    problems += verify_journal(events, config, settled=settled)
    if as_json:
        emit_json({"ok": not problems, "events": len(events), "violations": problems})
    elif problems:
        for problem in problems:
            out.print(f"[bold red]violation:[/] {problem}", highlight=False)
    else:
        out.print(f"OK: {len(events)} events, every invariant holds", highlight=False)
    if problems:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``simulate`` and ``verify`` to ``app`` (once, however often it is called)."""
    names = {command.name for command in app.registered_commands}
    if "simulate" not in names:
        app.command("simulate")(simulate_command)
    if "verify" not in names:
        app.command("verify")(verify_command)
