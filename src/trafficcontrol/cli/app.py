"""``tc``: submit a backlog, run it through agents, and watch it.

Every command takes ``--home`` (or ``TC_HOME``); state lives in ``./.trafficcontrol``
by default. Commands that only read work while ``tc run`` runs in another process;
commands that change state go through the running orchestrator when there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from trafficcontrol import __version__
from trafficcontrol.adapters.backlog_file import read_backlog
from trafficcontrol.adapters.stores.urls import mask_url
from trafficcontrol.bootstrap import STORE_ENV, App, Home
from trafficcontrol.cli import formats, views
from trafficcontrol.cli.profile_report import PROFILE_FILE, save_spans
from trafficcontrol.domain.model import (
    Difficulty,
    Priority,
    ProjectId,
    TaskId,
    TaskSpec,
    TaskState,
)
from trafficcontrol.domain.records import AttemptRecord
from trafficcontrol.domain.requests import AnyRequest, CancelRequest, RetryRequest, SubmitRequest
from trafficcontrol.domain.rotation import rotation_stats
from trafficcontrol.domain.state import State
from trafficcontrol.errors import TrafficControlError
from trafficcontrol.ports import RequestResult
from trafficcontrol.runtime.member import Member
from trafficcontrol.runtime.orchestrator import Orchestrator

if TYPE_CHECKING:
    from trafficcontrol.cli.http import Listener

app = typer.Typer(
    help="TrafficControl: run a backlog of coding tasks through AI agents, in parallel, durably.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
workspaces_app = typer.Typer(help="Git worktrees of attempts.", invoke_without_command=True)
app.add_typer(workspaces_app, name="workspaces")

out = Console()
err = Console(stderr=True)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", envvar="TC_HOME", help="State directory [default: ./.trafficcontrol]"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
HttpOption = Annotated[
    str | None,
    typer.Option(
        "--http",
        metavar="[HOST:]PORT",
        help="Serve the dashboard, API and /metrics here (HOST defaults to 127.0.0.1;"
        " PORT 0 picks a free one) [default: [http] listen in config.toml].",
    ),
]


def fail(message: str, details: list[str] | None = None, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    for line in details or []:
        if line != message:
            err.print(f"  - {line}", highlight=False)
    raise typer.Exit(code)


def make_app(home: Path | None) -> App:
    root = (home or Path.cwd() / ".trafficcontrol").resolve()
    try:
        return App(Home(root), environ=os.environ)
    except TrafficControlError as exc:
        fail(exc.message)


def require_state(app_: App) -> None:
    """Fail, saying what to do, when nothing was ever journaled here."""
    if not app_.has_state():
        where = app_.home.root if app_.on_sqlite else mask_url(app_.store_url)
        fail(f"no state in {where}: submit a backlog first (tc submit FILE.toml)")


def existing_state(app_: App) -> State:
    require_state(app_)
    return app_.read_state()


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def report(result: RequestResult, *, as_json: bool, what: str) -> None:
    if as_json:
        emit_json({"ok": result.ok, "message": result.message, "details": result.details})
        if not result.ok:
            raise typer.Exit(1)
        return
    if not result.ok:
        fail(result.message, result.details)
    out.print(f"{what}: {result.message}")


def send(app_: App, request: AnyRequest) -> RequestResult:
    try:
        return app_.request(request)
    except TrafficControlError as exc:
        fail(exc.message)


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar=STORE_ENV,
            metavar="URL",
            help="Where the journal lives: sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
            " [default: [run] store in config.toml, else <home>/journal.db].",
        ),
    ] = None,
) -> None:
    if store:
        os.environ[STORE_ENV] = store  # every App of this command reads it (bootstrap)
    if version:
        out.print(f"tc {__version__}")
        raise typer.Exit()


# -- submitting -----------------------------------------------------------------------
@app.command()
def submit(
    file: Annotated[Path, typer.Argument(help="Backlog TOML file.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a backlog file: all of it, or nothing when anything is wrong."""
    try:
        request = read_backlog(file)
    except TrafficControlError as exc:
        if as_json:
            emit_json(
                {"ok": False, "message": exc.message, "details": getattr(exc, "problems", [])}
            )
            raise typer.Exit(1) from exc
        fail(exc.message, getattr(exc, "problems", None))
    app_ = make_app(home)
    result = send(app_, request)
    report(result, as_json=as_json, what=f"{file} ({len(request.tasks)} tasks)")


@app.command()
def add(
    task_id: Annotated[str, typer.Argument(help="Id of the new task.")],
    project: Annotated[str, typer.Option(help="Project id (already submitted).")],
    prompt: Annotated[str, typer.Option(help="What the agent should do.")],
    title: Annotated[str | None, typer.Option(help="Short title [default: the id].")] = None,
    priority: Annotated[Priority, typer.Option(help="P0 (most urgent) .. P3.")] = Priority.P2,
    depends_on: Annotated[list[str] | None, typer.Option("--depends-on")] = None,
    resource: Annotated[list[str] | None, typer.Option("--resource")] = None,
    agent: Annotated[str | None, typer.Option(help="api | claude | command | sim")] = None,
    model: Annotated[str | None, typer.Option(help="Pin the model (no routing).")] = None,
    difficulty: Annotated[
        Difficulty | None, typer.Option(help="Routing hint: trivial | normal | hard.")
    ] = None,
    workflow: Annotated[
        str | None, typer.Option(help="Run as a workflow (tc workflow list).")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds per attempt.")] = None,
    max_attempts: Annotated[int | None, typer.Option()] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add one task to a submitted project."""
    spec = TaskSpec(
        id=TaskId(task_id),
        project=ProjectId(project),
        title=title or task_id,
        prompt=prompt,
        priority=priority,
        depends_on=tuple(TaskId(d) for d in depends_on or ()),
        resources=tuple(resource or ()),
        agent=agent,
        model=model,
        difficulty=difficulty,
        workflow=workflow,
        timeout_s=timeout,
        max_attempts=max_attempts,
    )
    app_ = make_app(home)
    result = send(app_, SubmitRequest(source="tc add", projects=[], tasks=[spec]))
    report(result, as_json=as_json, what=f"task {task_id}")


@app.command()
def cancel(task_id: str, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Cancel a task; a running attempt is stopped (its process group killed)."""
    result = send(make_app(home), CancelRequest(task_id=TaskId(task_id)))
    report(result, as_json=as_json, what=f"cancel {task_id}")


@app.command()
def retry(task_id: str, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Queue a failed or cancelled task again, with a fresh attempt budget."""
    result = send(make_app(home), RetryRequest(task_id=TaskId(task_id)))
    report(result, as_json=as_json, what=f"retry {task_id}")


# -- running --------------------------------------------------------------------------
@app.command()
def run(
    home: HomeOption = None,
    max_agents: Annotated[int | None, typer.Option(help="Agents at once.")] = None,
    forever: Annotated[
        bool, typer.Option(help="Keep running when the backlog is empty, waiting for new work.")
    ] = False,
    live: Annotated[
        bool | None, typer.Option("--live/--no-live", help="Live view [default: on a terminal].")
    ] = None,
    leave_agents_running: Annotated[
        bool,
        typer.Option(
            help="On Ctrl-C/SIGTERM, leave running agents to finish under their supervisors;"
            " the next tc run adopts them."
        ),
    ] = False,
    handoff: Annotated[
        bool,
        typer.Option(
            help="On SIGTERM, hand the lead to a standby (as tc handoff) instead of stopping"
            " the agents (PostgreSQL store)."
        ),
    ] = False,
    http_at: HttpOption = None,
) -> None:
    """Run the backlog in the foreground until it is finished (or Ctrl-C).

    On a PostgreSQL store several tc run may share the work's journal: one leads (holds
    the lease), the others follow it as hot standbys and take over when it is gone."""
    app_ = make_app(home)
    code = run_app(
        app_,
        max_agents=max_agents,
        forever=forever,
        live=live,
        leave_agents_running=leave_agents_running or handoff,
        handoff=handoff,
        http_at=http_at,
    )
    raise typer.Exit(code)


def run_app(
    app_: App,
    *,
    max_agents: int | None,
    forever: bool,
    live: bool | None,
    leave_agents_running: bool = False,
    handoff: bool = False,
    http_at: str | None = None,
) -> int:
    if max_agents is not None:
        if max_agents < 1:
            fail("--max-agents must be at least 1")
        import msgspec

        app_.settings = msgspec.structs.replace(
            app_.settings, run=msgspec.structs.replace(app_.settings.run, max_agents=max_agents)
        )
    lock = app_.run_lock() if app_.on_sqlite else None
    if handoff and lock is not None:
        fail("--handoff needs a PostgreSQL store (a standby to hand off to)")
    if lock is not None and not lock.try_acquire():
        fail(f"another tc run is already working on {app_.home.root}")
    try:
        try:
            listener = None
            if http_at is not None or app_.settings.http.listen is not None:
                # Imported only then: the HTTP stack is a tenth of a second of imports.
                from trafficcontrol.cli import http

                listener = http.listen(app_, http_at)  # a taken port fails before recovery
            member: Member | None = None
            if lock is None:
                member = app_.member(on_role=_announce_role)
                orchestrator = member.prepare()
                notes = app_.last_notes
            else:
                orchestrator, notes = app_.start()
            orchestrator.leave_agents_running = leave_agents_running
            orchestrator.check_backends()
        except TrafficControlError as exc:
            fail(exc.message, code=2)
        for note in notes:
            err.print(f"[yellow]recovery:[/] {note}", highlight=False)
        if member is None and (adoptable := orchestrator.adoptable_leftovers()):
            err.print(
                f"recovery: {adoptable} attempt(s) left running by the previous run will be"
                " adopted if their supervisors are alive or finished",
                highlight=False,
            )
        recovered = app_.last_recovery
        if recovered is not None and recovered.snapshot is not None:
            err.print(
                f"state: snapshot {recovered.snapshot.version} (seq {recovered.snapshot.seq})"
                f" + {recovered.tail} journal events",
                highlight=False,
            )
        show_live = out.is_terminal if live is None else live
        target: Orchestrator | Member = orchestrator if member is None else member
        try:
            asyncio.run(
                _run(
                    app_,
                    target,
                    listener,
                    forever=forever,
                    show_live=show_live,
                    handoff=handoff,
                    leave_agents_running=leave_agents_running,
                )
            )
        except TrafficControlError as exc:
            fail(exc.message)
        if member is not None and member.orchestrator is not None:
            orchestrator = member.orchestrator
        with contextlib.suppress(OSError):  # the profile is a convenience, never an error
            save_spans(app_.home.root / PROFILE_FILE, orchestrator.stats.spans.summary())
        state = orchestrator.state
        out.print(views.counts_text(state))
        if any(a.simulated for a in state.attempts.values()):
            out.print("[yellow]Agents were simulated: no model was called.[/]")
        if orchestrator.handing_off:
            return 0
        return 1 if state.counts[TaskState.FAILED] else 0
    finally:
        app_.close()
        if lock is not None:
            lock.release()


def _announce_role(role: str, detail: str) -> None:
    err.print(f"tc run: {role}: {detail}", highlight=False)


async def _run(
    app_: App,
    target: Orchestrator | Member,
    listener: Listener | None,
    *,
    forever: bool,
    show_live: bool,
    handoff: bool = False,
    leave_agents_running: bool = False,
) -> None:
    loop = asyncio.get_running_loop()

    def current() -> Orchestrator:
        if isinstance(target, Orchestrator):
            return target
        assert target.orchestrator is not None
        return target.orchestrator

    def stop() -> None:
        orchestrator = current()
        orchestrator.leave_agents_running = leave_agents_running
        target.stop()

    def terminate() -> None:
        if handoff and current().leadership is not None:
            current().hand_off()
            return
        stop()

    loop.add_signal_handler(signal.SIGINT, stop)
    loop.add_signal_handler(signal.SIGTERM, terminate)
    job = asyncio.create_task(target.run(until_idle=not forever), name="orchestrator")
    if listener is None:
        await _follow(current, job, show_live=show_live)
        return
    from trafficcontrol.cli import http

    async with http.serving(app_, listener, current, target):
        await _follow(current, job, show_live=show_live)


async def _follow(
    current: Callable[[], Orchestrator], job: asyncio.Task[Any], *, show_live: bool
) -> None:
    orchestrator = current()
    view = views.LiveView()
    if show_live:
        with Live(
            view.render(orchestrator.state, time.time()), console=out, refresh_per_second=4
        ) as screen:
            while not job.done():
                await asyncio.wait({job}, timeout=0.25)
                screen.update(view.render(current().state, time.time()))
    else:
        last = ""
        seen = orchestrator.state.capacity.warnings_total
        slow_seen: set[tuple[str, float]] = set()
        views.new_slow_incidents(orchestrator.state, slow_seen)  # the ones before this run
        while True:
            finished = job.done()
            if not finished:
                await asyncio.wait({job}, timeout=2.0)
            orchestrator = current()
            line = views.counts_text(orchestrator.state).plain.strip()
            if line != last:
                err.print(f"tc run: {line}", highlight=False)
                last = line
            warnings, seen = views.new_warnings(orchestrator.state, seen)
            for text in warnings:
                err.print(f"tc run: warning: {text}", highlight=False)
            for text in views.new_slow_incidents(orchestrator.state, slow_seen):
                err.print(f"tc run: slow: {text}", highlight=False)
            if finished:
                break
    await job


# -- reading --------------------------------------------------------------------------
@app.command()
def status(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Counts by state, running agents, waiting tasks and why, tokens by model."""
    app_ = make_app(home)
    state = existing_state(app_)
    now = app_.clock.now()
    data = views.status_dict(state, orchestrator_running=app_.orchestrator_running(), now=now)
    sessions = rotation_stats(state, app_.settings.context)
    data["sessions"] = {
        "measured": sessions.sessions,
        "rotations": sessions.rotations,
        "delegation_rate": sessions.delegation_rate,
        "peak_utilisation": sessions.peak_utilisation,
        "mean_utilisation": sessions.mean_utilisation,
    }
    leader = None
    if not app_.on_sqlite:  # who holds the lease: the leader of several instances
        live = [lease for lease in app_.leases().leases() if lease.live]
        leader = live[0] if live else None
        data["leader"] = (
            None if leader is None else {"instance": leader.holder, "epoch": leader.epoch}
        )
    if as_json:
        emit_json(data)
        return
    running = "running" if data["orchestrator_running"] else "not running"
    if leader is not None:
        running += f" (leader {leader.holder}, epoch {leader.epoch}; tc cluster)"
    out.print(f"orchestrator: {running}   home: {app_.home.root}   events: {state.seq}")
    out.print(views.counts_text(state))
    if state.running:
        out.print(views.running_table(state, now))
    for waiting in data["waiting"][:20]:
        out.print(f"  {waiting['task']}  waiting — {waiting['text']}", highlight=False)
    if len(data["waiting"]) > 20:
        out.print(f"  … {len(data['waiting']) - 20} more waiting (tc tasks --state waiting)")
    if state.attempts:
        out.print(views.usage_table(state))
    for limit in data["rate_limits"]:
        used = "" if limit["utilization"] is None else f" {limit['utilization']:.0%} used,"
        out.print(
            f"limit {limit['window']} (reported by the provider): {limit['status']},{used}"
            f" resets {limit['resets_at'] or 'unknown'}",
            highlight=False,
        )
    policy = state.resilience.config.breaker
    for breaker in views.broken_breakers(state):
        out.print(f"breaker {views.breaker_text(breaker, policy, now)}", highlight=False)
    if data["errors_by_class"]:
        by_class = ", ".join(f"{name} {n}" for name, n in data["errors_by_class"].items())
        out.print(f"failed attempts by class: {by_class} (tc health)", highlight=False)
    if sessions.sessions:
        out.print(
            f"agent contexts: {sessions.sessions} sessions measured, peak"
            f" {sessions.peak_utilisation:.0%} / mean {sessions.mean_utilisation:.0%} of the"
            f" window; {sessions.rotations} rotated ({sessions.delegation_rate:.0%})",
            highlight=False,
        )


@app.command()
def tasks(
    state_filter: Annotated[
        TaskState | None, typer.Option("--state", help="Only tasks in this state.")
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """List tasks."""
    app_ = make_app(home)
    state = existing_state(app_)
    records = [r for r in state.tasks.values() if state_filter is None or r.state is state_filter]
    if as_json:
        emit_json([views.task_dict(state, r) for r in records])
        return
    out.print(views.tasks_table(state, records, app_.clock.now()))


@app.command()
def show(task_id: str, home: HomeOption = None, as_json: JsonOption = False) -> None:
    """One task: its spec, attempts, outcomes, usage and log paths."""
    app_ = make_app(home)
    state = existing_state(app_)
    record = state.tasks.get(TaskId(task_id))
    if record is None:
        fail(f"no task {task_id!r}")
    data = views.task_dict(state, record, attempts=True)
    if as_json:
        emit_json(data)
        return
    now = app_.clock.now()
    out.print(f"[bold]{escape(record.spec.id)}[/]  {escape(record.spec.title)}", highlight=False)
    for key in ("project", "state", "priority", "model", "difficulty", "depends_on", "resources"):
        if data.get(key):
            out.print(f"  {key}: {escape(str(data[key]))}", highlight=False)
    if record.state is TaskState.WAITING:
        out.print(f"  waiting: {escape(views.wait_text(record, now))}", highlight=False)
    elif data.get("retry_at"):
        out.print(f"  retry_at: {data['retry_at']}", highlight=False)
    if data.get("last_error"):
        out.print(f"  last_error: {escape(str(data['last_error']))}", highlight=False)
    if record.transient_failures:
        out.print(f"  transient_failures: {record.transient_failures}", highlight=False)
    for attempt_id in record.attempts:
        show_attempt(state.attempts[attempt_id], now)


def show_attempt(attempt: AttemptRecord, now: float) -> None:
    data = views.attempt_dict(attempt)
    label = " \\[simulated]" if attempt.simulated else ""
    out.print(
        f"  attempt {attempt.id}: {attempt.outcome or 'running'}{label}"
        f"  {attempt.backend}/{attempt.model or '-'}"
        f"  {formats.duration(data['seconds'])}",
        highlight=False,
    )
    lines: list[tuple[str, object]] = [
        ("route", attempt.route),
        (
            "reserved",
            None if attempt.expected_units is None else f"{attempt.expected_units:,.0f} units",
        ),
        ("limit_hit", attempt.limit_hit and views.limit_hit_text(attempt.limit_hit, now)),
        ("failure", views.failure_text(attempt)),
        (
            "adopted",
            attempt.adoptions
            and f"{attempt.adoptions}x (its agent outlived the tc run that started it)",
        ),
        ("turns", attempt.turns and f"{attempt.turns} reported, {data['turn_usage']}"),
    ]
    lines += [
        (key, data[key])
        for key in ("error", "session_id", "usage", "workdir", "branch", "log_path")
    ]
    for key, value in lines:
        if value:
            out.print(f"      {key}: {escape(str(value))}", highlight=False)


@app.command()
def logs(
    attempt: Annotated[
        str, typer.Argument(help="Attempt id (task#n) or task id (its last attempt).")
    ],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until it ends.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Print an attempt's log."""
    app_ = make_app(home)
    state = existing_state(app_)
    record = state.attempts.get(attempt)  # type: ignore[call-overload]
    if record is None and TaskId(attempt) in state.tasks and state.tasks[TaskId(attempt)].attempts:
        record = state.attempts[state.tasks[TaskId(attempt)].attempts[-1]]
    if record is None:
        fail(f"no attempt {attempt!r} (use task#n, or a task id for its last attempt)")
    path = Path(record.log_path)
    offset = 0
    while True:
        if path.exists():
            with path.open("rb") as log:
                log.seek(offset)
                chunk = log.read()
                offset += len(chunk)
                sys.stdout.write(chunk.decode("utf-8", errors="replace"))
                sys.stdout.flush()
        if not follow:
            if not path.exists():
                fail(f"attempt {record.id} has no log yet ({path})")
            return
        state = app_.read_state()
        if (
            state.attempts[record.id].outcome is not None
            and path.exists()
            and path.stat().st_size == offset
        ):
            return
        time.sleep(0.5)  # polling another process's file: nothing to await


# -- workspaces -----------------------------------------------------------------------
@workspaces_app.callback()
def workspaces_list(
    ctx: typer.Context, home: HomeOption = None, as_json: JsonOption = False
) -> None:
    """List the attempts' git worktrees and whether they can be pruned."""
    if ctx.invoked_subcommand is not None:
        return
    from trafficcontrol.cli.workspaces import list_workspaces

    list_workspaces(make_app(home), as_json=as_json)


@workspaces_app.command("prune")
def workspaces_prune(
    home: HomeOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove worktrees of finished attempts that are merged, unchanged or abandoned."""
    from trafficcontrol.cli.workspaces import prune_workspaces

    prune_workspaces(make_app(home), yes=yes)


# -- demo -----------------------------------------------------------------------------
@app.command()
def demo(
    home: Annotated[
        Path | None, typer.Option("--home", help="Where to put the demo [default: a new temp dir].")
    ] = None,
    max_agents: Annotated[int, typer.Option(help="Agents at once.")] = 8,
    live: Annotated[bool | None, typer.Option("--live/--no-live")] = None,
) -> None:
    """Run a bundled 30-task backlog on simulated agents and print a summary."""
    from trafficcontrol.cli.demo import run_demo

    raise typer.Exit(run_demo(home, max_agents=max_agents, live=live))


def main() -> None:
    from trafficcontrol.cli import (
        capacity,
        cluster,
        db,
        health,
        profile,
        serve,
        simulate,
        snapshots,
        worker,
        workflow,
    )

    snapshots.register(app)
    simulate.register(app)
    capacity.register(app)
    health.register(app)
    workflow.register(app)
    serve.register(app)
    profile.register(app)
    db.register(app)
    cluster.register(app)
    worker.register(app)
    try:
        app()
    except TrafficControlError as exc:  # one line, whatever command met it (a bad store)
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
