"""Shared test helpers: state homes, backlogs and journal queries on real SQLite."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.bootstrap import STORE_ENV, App, Home, open_journal
from trafficcontrol.domain.events import AnyEvent, AttemptDispatched, AttemptFinished
from trafficcontrol.domain.model import (
    AgentSettings,
    AttemptId,
    ProjectId,
    ProjectSpec,
    SimSettings,
    TaskId,
    TaskSpec,
)
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.ports import AgentRequest
from trafficcontrol.settings import RunSettings, Settings

AGENT = str(Path(__file__).parent / "agents" / "agent.py")


def agent_argv(*flags: str) -> list[str]:
    return [sys.executable, AGENT, *flags]


class FixedClock:
    """The adapter reads ``now`` from its clock; nothing here depends on its value."""

    def now(self) -> float:
        return 1_800_000_000.0

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


def agent_request(
    tmp_path: Path,
    *,
    title: str,
    prompt: str,
    settings: AgentSettings,
    model: str | None,
    workdir: Path | None = None,
    log_name: str = "a1.jsonl",
) -> AgentRequest:
    """Attempt a1 of task t1 in project p1, logging under ``tmp_path/logs``."""
    return AgentRequest(
        attempt_id=AttemptId("a1"),
        task_id=TaskId("t1"),
        project_id=ProjectId("p1"),
        attempt_no=1,
        title=title,
        prompt=prompt,
        workdir=workdir or tmp_path,
        log_path=tmp_path / "logs" / log_name,
        model=model,
        settings=settings,
    )


def claude_request(tmp_path: Path, **env: str) -> AgentRequest:
    return agent_request(
        tmp_path,
        title="hello",
        prompt="Say hello",
        model="sonnet",
        settings=AgentSettings(allowed_tools=["Write"], env=env or None),
    )


def log_records(request: AgentRequest) -> list[dict[str, Any]]:
    return [json.loads(line) for line in request.log_path.read_text().splitlines()]


OPENED: list[App] = []
"""Apps ``make_app`` made during the current test: closed after it (``tests/pg.py``), as
a PostgreSQL connection left open is a ResourceWarning (an SQLite one is silent)."""


def make_app(root: Path, **run: Any) -> App:
    settings = Settings(run=RunSettings(**{"grace_s": 1.0, "request_poll_s": 0.05, **run}))
    app = App(Home(root), environ=dict(os.environ), settings=settings)
    OPENED.append(app)
    return app


def project(
    path: Path,
    pid: str = "p",
    *,
    agent: str = "sim",
    sim: SimSettings | None = None,
    command: list[str] | None = None,
    **kw: Any,
) -> ProjectSpec:
    path.mkdir(parents=True, exist_ok=True)
    settings = AgentSettings(sim=sim or SimSettings(duration_s=0.0, jitter=0.0), command=command)
    kw.setdefault("lock_in_place", False)
    return ProjectSpec(id=ProjectId(pid), path=str(path), agent=agent, settings=settings, **kw)


def task(tid: str, pid: str = "p", *, deps: Sequence[str] = (), **kw: Any) -> TaskSpec:
    return TaskSpec(
        id=TaskId(tid),
        project=ProjectId(pid),
        title=tid,
        prompt=f"do {tid}",
        depends_on=tuple(TaskId(d) for d in deps),
        **kw,
    )


def submit(app: App, projects: list[ProjectSpec], tasks: list[TaskSpec]) -> None:
    result = app.request(SubmitRequest(source="test", projects=projects, tasks=tasks))
    assert result.ok, result


def journal_events(home: Path) -> list[AnyEvent]:
    """The journal of ``home``: its own SQLite file, or the store ``TC_STORE`` names (a
    test that runs ``tc`` on PostgreSQL sets it for the processes it starts)."""
    url = os.environ.get(STORE_ENV)
    journal = open_journal(url) if url else SqliteJournal(home / "journal.db")
    try:
        return [event for _seq, event in journal.read()]
    finally:
        journal.close()


def events_of(events: list[AnyEvent], kind: type[Any], attempt_id: str) -> list[Any]:
    """The events of one type that belong to one attempt, in order."""
    return [e for e in events if isinstance(e, kind) and e.attempt_id == attempt_id]


def max_concurrency(events: list[AnyEvent], key: Any = None) -> dict[Any, int]:
    """Peak number of attempts running at once, per key(dispatch event) (None: overall)."""
    running: dict[Any, int] = {}
    peak: dict[Any, int] = {}
    owner: dict[str, Any] = {}
    for event in events:
        if isinstance(event, AttemptDispatched):
            k = key(event) if key else None
            owner[event.attempt_id] = k
            running[k] = running.get(k, 0) + 1
            peak[k] = max(peak.get(k, 0), running[k])
        elif isinstance(event, AttemptFinished):
            k = owner.pop(event.attempt_id)
            running[k] -= 1
    return peak


async def run_until_idle(app: App, *, record_latency: bool = False) -> Any:
    """Run an orchestrator in this process the way ``tc run`` does (holding the run lock)."""
    lock = app.run_lock()
    assert lock.try_acquire()
    try:
        orchestrator, _notes = app.start(record_latency=record_latency)
        orchestrator.check_backends()
        await orchestrator.run(until_idle=True)
        return orchestrator
    finally:
        lock.release()


def git_repo(path: Path) -> None:
    """A git repository with one commit, made without any global git identity."""
    path.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=path, check=True)
    (path / "README.md").write_text("project\n")
    subprocess.run(["git", "add", "."], cwd=path, check=True)
    ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", *ident, "commit", "-qm", "init"], cwd=path, check=True)


def blocking_backlog(tmp_path: Path, task_id: str) -> tuple[Path, Path]:
    """A backlog file whose one command task runs until stopped, and the FIFO its agent
    writes once it runs (reading it waits for the agent: no sleeps)."""
    started = tmp_path / "started"
    os.mkfifo(started)
    (tmp_path / "w").mkdir()
    backlog = tmp_path / "blocking.toml"
    argv = json.dumps(agent_argv("--started", str(started), "--block"))
    backlog.write_text(
        f'[[projects]]\nid = "w"\npath = "w"\nagent = "command"\ncommand = {argv}\n\n'
        f'[[tasks]]\nid = "{task_id}"\nproject = "w"\nprompt = "runs until stopped"\n'
    )
    return backlog, started
