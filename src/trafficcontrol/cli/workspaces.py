"""``tc workspaces``: list attempts' git worktrees and prune the ones safe to remove.

A worktree is never removed while its attempt runs or while it holds work that is
not merged; "abandoned" means its attempt did not succeed and its task has finished
since (done by a later attempt, failed for good, or cancelled).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.table import Table

from trafficcontrol.adapters.workspaces.git import GitWorkspaces
from trafficcontrol.bootstrap import App
from trafficcontrol.cli.app import emit_json, existing_state, fail, out
from trafficcontrol.domain.model import Outcome
from trafficcontrol.domain.records import AttemptRecord
from trafficcontrol.domain.state import State
from trafficcontrol.errors import TrafficControlError


@dataclass(frozen=True)
class Entry:
    attempt: AttemptRecord
    verdict: str
    """running | unmerged | dirty | merged | abandoned | gone"""

    @property
    def prunable(self) -> bool:
        return self.verdict in ("merged", "abandoned")


def _entries(app_: App, state: State) -> list[Entry]:
    git = GitWorkspaces(app_.home.worktrees)
    entries = []
    for attempt in state.attempts.values():
        if attempt.branch is None or attempt.workdir is None:
            continue
        task = state.tasks[attempt.task_id]
        project = state.projects[task.spec.project]
        if attempt.outcome is None:
            entries.append(Entry(attempt, "running"))
            continue
        status = git.inspect(project, Path(attempt.workdir), attempt.branch)
        if not status.exists:
            verdict = "gone"
        elif attempt.outcome is not Outcome.SUCCEEDED and task.state.terminal:
            verdict = "abandoned"
        elif status.dirty:
            verdict = "dirty"
        elif status.merged:
            verdict = "merged"
        else:
            verdict = "unmerged"
        entries.append(Entry(attempt, verdict))
    return entries


def list_workspaces(app_: App, *, as_json: bool) -> None:
    entries = _entries(app_, existing_state(app_))
    if as_json:
        emit_json(
            [
                {
                    "attempt": e.attempt.id,
                    "path": e.attempt.workdir,
                    "branch": e.attempt.branch,
                    "status": e.verdict,
                    "prunable": e.prunable,
                }
                for e in entries
            ]
        )
        return
    table = Table(title="Workspaces")
    for column in ("attempt", "branch", "status", "path"):
        table.add_column(column)
    for e in entries:
        table.add_row(e.attempt.id, e.attempt.branch or "", e.verdict, e.attempt.workdir or "")
    out.print(table)


def prune_workspaces(app_: App, *, yes: bool) -> None:
    state = existing_state(app_)
    doomed = [e for e in _entries(app_, state) if e.prunable]
    if not doomed:
        out.print("nothing to prune")
        return
    for e in doomed:
        out.print(f"  {e.verdict:9} {e.attempt.branch}  {e.attempt.workdir}", highlight=False)
    if not yes:
        if not sys.stdin.isatty():
            fail("refusing to prune without confirmation: pass --yes")
        typer.confirm(f"Remove these {len(doomed)} worktrees and their branches?", abort=True)
    git = GitWorkspaces(app_.home.worktrees)
    for e in doomed:
        project = state.projects[state.tasks[e.attempt.task_id].spec.project]
        assert e.attempt.workdir is not None and e.attempt.branch is not None
        try:
            git.remove(project, Path(e.attempt.workdir), e.attempt.branch)
        except TrafficControlError as exc:
            fail(exc.message)
    out.print(f"removed {len(doomed)} worktrees")
