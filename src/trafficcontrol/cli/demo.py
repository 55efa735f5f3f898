"""``tc demo``: a bundled 30-task backlog on simulated agents, in a fresh state home."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from rich.panel import Panel

from trafficcontrol.adapters.backlog_file import read_backlog
from trafficcontrol.cli import views
from trafficcontrol.cli.app import fail, make_app, out, run_app
from trafficcontrol.errors import TrafficControlError

BACKLOG = "demo_backlog.toml"


def _git_project(path: Path) -> None:
    """A small git repository, so the demo's attempts get real worktrees."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.md").write_text(f"# {path.name}\n\nA sample project for tc demo.\n")
    if shutil.which("git") is None:
        return
    identity = ["-c", "user.name=tc demo", "-c", "user.email=demo@trafficcontrol.invalid"]
    for argv in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "README.md"],
        ["git", *identity, "commit", "-q", "-m", "Initial commit"],
    ):
        subprocess.run(argv, cwd=path, check=True, capture_output=True)


def run_demo(home: Path | None, *, max_agents: int, live: bool | None) -> int:
    root = (home or Path(tempfile.mkdtemp(prefix="tc-demo-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    backlog = root / BACKLOG
    backlog.write_text(resources.files("trafficcontrol.cli").joinpath(BACKLOG).read_text())
    for name in ("api", "web"):
        _git_project(root / "projects" / name)
    out.print(
        Panel(
            "[bold yellow]SIMULATED AGENTS[/]: this demo calls no model and spends no tokens.\n"
            f"State: {root / 'state'}\nBacklog: {backlog}",
            title="tc demo",
        )
    )
    app_ = make_app(root / "state")
    try:
        request = read_backlog(backlog)
        result = app_.request(request)
    except TrafficControlError as exc:
        fail(exc.message, getattr(exc, "problems", None))
    if not result.ok:
        fail(result.message, result.details)
    code = run_app(app_, max_agents=max_agents, forever=False, live=live)
    state = app_.read_state()
    app_.close()
    out.print(views.summary_table(state))
    out.print(views.usage_table(state))
    retried = sum(1 for r in state.tasks.values() if len(r.attempts) > 1)
    out.print(
        f"{len(state.tasks)} tasks, {len(state.attempts)} attempts, {retried} tasks retried. "
        f"Look around: tc --help, e.g. tc show api-auth --home {root / 'state'}"
    )
    return code
