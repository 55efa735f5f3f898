"""Reading a backlog TOML file into a submission, with errors that name file and place.

The file format (paths relative to the file)::

    [[projects]]
    id = "api"
    path = "../api"
    agent = "claude"

    [[tasks]]
    id = "auth-refactor"
    project = "api"
    title = "Refactor the auth middleware"
    prompt = "Split token parsing out of middleware.py and add tests."
    priority = "P1"
    depends_on = ["db-migration"]
    resources = ["repo:api"]
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from trafficcontrol.adapters.workspaces.git import is_git_repo
from trafficcontrol.domain.model import (
    AgentSettings,
    Difficulty,
    OnInterrupt,
    Priority,
    ProjectId,
    ProjectSpec,
    SimSettings,
    TaskId,
    TaskSpec,
)
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.errors import BacklogError

_AGENT_FIELDS = (
    "command",
    "resume_command",
    "env",
    "permission_mode",
    "allowed_tools",
    "max_turns",
    "system_prompt",
)


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class SimEntry(_Strict, frozen=True, kw_only=True):
    duration: float = 2.0
    jitter: float = 0.5
    failure_rate: float = 0.0
    fail_attempts: int = 0
    tokens_in: int = 4000
    question: str | None = None
    seed: int = 0
    needs: Difficulty | None = None
    underpowered_failure_rate: float = 0.7
    reject_rate: float = 0.0


class _AgentEntry(_Strict, frozen=True, kw_only=True):
    command: list[str] | None = None
    resume_command: list[str] | None = None
    env: dict[str, str] | None = None
    permission_mode: str | None = None
    allowed_tools: list[str] | None = None
    max_turns: int | None = None
    system_prompt: str | None = None
    sim: SimEntry | None = None


class ProjectEntry(_AgentEntry, frozen=True, kw_only=True):
    id: str
    path: str
    agent: str = "sim"
    model: str | None = None
    max_concurrent: int | None = None
    lock_in_place: bool = True
    timeout: float | None = None
    max_attempts: int = 1
    on_interrupt: OnInterrupt | None = None


class TaskEntry(_AgentEntry, frozen=True, kw_only=True):
    id: str
    project: str
    prompt: str
    title: str | None = None
    priority: Priority = Priority.P2
    score: float = 0.0
    depends_on: list[str] = msgspec.field(default_factory=list)
    resources: list[str] = msgspec.field(default_factory=list)
    agent: str | None = None
    model: str | None = None
    difficulty: Difficulty | None = None
    workflow: str | None = None
    split: bool = False
    timeout: float | None = None
    max_attempts: int | None = None
    on_interrupt: OnInterrupt | None = None
    retry_backoff: float = 5.0


class BacklogFile(_Strict, frozen=True, kw_only=True):
    projects: list[ProjectEntry] = msgspec.field(default_factory=list)
    tasks: list[TaskEntry] = msgspec.field(default_factory=list)


def _settings(entry: _AgentEntry) -> AgentSettings | None:
    values: dict[str, Any] = {name: getattr(entry, name) for name in _AGENT_FIELDS}
    if entry.sim is not None:
        sim = entry.sim
        values["sim"] = SimSettings(
            duration_s=sim.duration,
            jitter=sim.jitter,
            failure_rate=sim.failure_rate,
            fail_attempts=sim.fail_attempts,
            tokens_in=sim.tokens_in,
            question=sim.question,
            seed=sim.seed,
            needs=sim.needs,
            underpowered_failure_rate=sim.underpowered_failure_rate,
            reject_rate=sim.reject_rate,
        )
    if all(v is None for v in values.values()):
        return None
    return AgentSettings(**values)


_POSITION = re.compile(r"\s*\(at line (\d+), column \d+\)")
_WHERE = re.compile(r"\$\.(projects|tasks)\[(\d+)\]")


def _explain(exc: msgspec.ValidationError, data: dict[str, Any]) -> str:
    """msgspec's message with ``$.tasks[3]`` turned into the task's id."""
    message = str(exc)

    def name(match: re.Match[str]) -> str:
        kind, index = match.group(1), int(match.group(2))
        entries = data.get(kind)
        entry_id = None
        if isinstance(entries, list) and index < len(entries) and isinstance(entries[index], dict):
            entry_id = entries[index].get("id")
        label = f"{kind}[{index}]"
        return f"{label} (id {entry_id!r})" if entry_id is not None else label

    return _WHERE.sub(name, message)


def read_backlog(path: Path, *, require_dirs: bool = True) -> SubmitRequest:
    """Parse and check a backlog file. Raises ``BacklogError``; reads nothing else."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BacklogError(f"{source}: cannot read: {exc.strerror}") from exc
    return parse_backlog(text, source=source, base=path.parent, require_dirs=require_dirs)


def parse_backlog(
    text: str, *, source: str, base: Path, require_dirs: bool = True
) -> SubmitRequest:
    """A backlog from TOML text; ``require_dirs=False`` (simulation) accepts project
    directories that do not exist and treats them as git repositories."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's TOMLDecodeError carries the position only in its text.
        found = _POSITION.search(str(exc))
        where = f"{source}:{found.group(1)}" if found else source
        reason = _POSITION.sub("", str(exc)).strip()
        raise BacklogError(f"{where}: TOML syntax error: {reason}") from exc
    try:
        parsed = msgspec.convert(data, BacklogFile)
    except msgspec.ValidationError as exc:
        raise BacklogError(f"{source}: {_explain(exc, data)}") from exc
    return to_request(parsed, base=base, source=source, require_dirs=require_dirs)


def to_request(
    parsed: BacklogFile, *, base: Path, source: str, require_dirs: bool = True
) -> SubmitRequest:
    problems: list[str] = []
    projects = []
    for entry in parsed.projects:
        project_path = (base / entry.path).resolve()
        exists = project_path.is_dir()
        if not exists and require_dirs:
            problems.append(
                f"project {entry.id!r}: path {entry.path!r} is not a directory ({project_path})"
            )
            continue
        projects.append(
            ProjectSpec(
                id=ProjectId(entry.id),
                path=str(project_path),
                is_git=is_git_repo(project_path) if exists else True,
                agent=entry.agent,
                model=entry.model,
                max_concurrent=entry.max_concurrent,
                lock_in_place=entry.lock_in_place,
                timeout_s=entry.timeout,
                max_attempts=entry.max_attempts,
                on_interrupt=entry.on_interrupt,
                settings=_settings(entry) or AgentSettings(),
            )
        )
    if problems:
        raise BacklogError(f"{source}: submission refused", problems)
    tasks = [
        TaskSpec(
            id=TaskId(entry.id),
            project=ProjectId(entry.project),
            title=entry.title or entry.id,
            prompt=entry.prompt,
            priority=entry.priority,
            score=entry.score,
            depends_on=tuple(TaskId(d) for d in entry.depends_on),
            resources=tuple(entry.resources),
            agent=entry.agent,
            model=entry.model,
            difficulty=entry.difficulty,
            workflow=entry.workflow,
            split=entry.split,
            timeout_s=entry.timeout,
            max_attempts=entry.max_attempts,
            on_interrupt=entry.on_interrupt,
            retry_backoff_s=entry.retry_backoff,
            settings=_settings(entry),
        )
        for entry in parsed.tasks
    ]
    return SubmitRequest(source=source, projects=projects, tasks=tasks)
