"""Requests from people and scripts (submit, cancel, retry), turned into events. Pure.

The same functions serve ``tc submit`` writing straight to the journal and a running
orchestrator taking the request from its inbox, so both refuse the same things
with the same words.
"""

from __future__ import annotations

import re

import msgspec

from trafficcontrol.domain.backlog import validate_submission
from trafficcontrol.domain.events import (
    AnyEvent,
    BacklogSubmitted,
    TaskCancelRequested,
    TaskRetryRequested,
)
from trafficcontrol.domain.model import (
    WORKERS,
    ProjectSpec,
    TaskId,
    TaskSpec,
    TaskState,
    base_backend,
)
from trafficcontrol.domain.state import State
from trafficcontrol.domain.workflows import WorkflowSpec
from trafficcontrol.domain.workflows import validate as validate_workflow
from trafficcontrol.errors import BacklogError, UnknownTaskError

BACKENDS = frozenset({"api", "claude", "command", "sim"})
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class SubmitRequest(msgspec.Struct, frozen=True, tag="submit"):
    source: str
    projects: list[ProjectSpec]
    tasks: list[TaskSpec]
    workflows: list[WorkflowSpec] = msgspec.field(default_factory=list)
    """The workflows its tasks name (resolved from the templates by the shell)."""


class CancelRequest(msgspec.Struct, frozen=True, tag="cancel"):
    task_id: TaskId
    reason: str = "cancelled by user"


class RetryRequest(msgspec.Struct, frozen=True, tag="retry"):
    task_id: TaskId


class SnapshotRequest(msgspec.Struct, frozen=True, tag="snapshot"):
    """Write a snapshot now (``tc snapshot create``)."""


class RollbackRequest(msgspec.Struct, frozen=True, tag="rollback"):
    version: int
    dry_run: bool = False


class SampleRequest(msgspec.Struct, frozen=True, tag="sample"):
    """Run the sampling profiler on the orchestrator for ``seconds`` (``tc profile
    --sample``); served by the running orchestrator only."""

    seconds: float


class HandoffRequest(msgspec.Struct, frozen=True, tag="handoff"):
    """Hand the lead to a standby (``tc handoff``): stop dispatching, leave the running
    agents to the next leader, journal the stop, release the lease. Served by the
    running orchestrator only."""


AnyRequest = (
    SubmitRequest
    | CancelRequest
    | RetryRequest
    | SnapshotRequest
    | RollbackRequest
    | SampleRequest
    | HandoffRequest
)

request_decoder = msgspec.json.Decoder(AnyRequest)


def _check_ids_and_backends(projects: list[ProjectSpec], tasks: list[TaskSpec]) -> list[str]:
    problems = []
    for project in projects:
        if not _ID.fullmatch(project.id):
            problems.append(f"project id {project.id!r}: use letters, digits, '.', '_', '-'")
        if base_backend(project.agent) not in BACKENDS:
            problems.append(
                f"project {project.id!r}: unknown agent {project.agent!r}"
                f" (one of {', '.join(sorted(BACKENDS))}, each also as NAME{WORKERS})"
            )
    for task in tasks:
        if not _ID.fullmatch(task.id):
            problems.append(f"task id {task.id!r}: use letters, digits, '.', '_', '-'")
        if task.agent is not None and base_backend(task.agent) not in BACKENDS:
            problems.append(
                f"task {task.id!r}: unknown agent {task.agent!r}"
                f" (one of {', '.join(sorted(BACKENDS))}, each also as NAME{WORKERS})"
            )
    return problems


def plan_submit(state: State, request: SubmitRequest, now: float) -> BacklogSubmitted | None:
    """The event that applies the submission, None when it changes nothing.

    Raises ``BacklogError`` listing every problem; then nothing may be applied.
    """
    problems = _check_ids_and_backends(request.projects, request.tasks)
    found, new_projects, new_tasks = validate_submission(state, request.projects, request.tasks)
    problems.extend(found)
    given = {w.name: w for w in request.workflows}
    for spec in request.workflows:
        problems.extend(validate_workflow(spec))
    for task in request.tasks:
        known = task.workflow in given or task.workflow in state.workflows
        if task.workflow is not None and not known:
            problems.append(f"task {task.id!r}: unknown workflow {task.workflow!r}")
    if problems:
        raise BacklogError(f"{request.source}: submission refused", problems)
    if not new_projects and not new_tasks:
        return None
    used = {t.workflow for t in new_tasks if t.workflow is not None}
    workflows = [
        w for name, w in sorted(given.items()) if name in used and state.workflows.get(name) != w
    ]
    return BacklogSubmitted(
        at=now,
        source=request.source,
        projects=new_projects,
        tasks=new_tasks,
        workflows=workflows,
    )


def _record(state: State, task_id: TaskId) -> TaskState:
    record = state.tasks.get(task_id)
    if record is None:
        raise UnknownTaskError(f"no task {task_id!r}")
    return record.state


def plan_cancel(state: State, request: CancelRequest, now: float) -> TaskCancelRequested:
    current = _record(state, request.task_id)
    if current.terminal:
        raise BacklogError(f"task {request.task_id!r} is already {current}")
    return TaskCancelRequested(at=now, task_id=request.task_id, reason=request.reason)


def plan_retry(state: State, request: RetryRequest, now: float) -> TaskRetryRequested:
    current = _record(state, request.task_id)
    if current not in (TaskState.FAILED, TaskState.CANCELLED):
        raise BacklogError(
            f"task {request.task_id!r} is {current}; only failed or cancelled tasks can be retried"
        )
    return TaskRetryRequested(at=now, task_id=request.task_id)


def plan(
    state: State, request: SubmitRequest | CancelRequest | RetryRequest, now: float
) -> AnyEvent | None:
    """The event a submit, cancel or retry turns into (snapshot and rollback requests
    need the shell: they are served there)."""
    match request:
        case SubmitRequest():
            return plan_submit(state, request, now)
        case CancelRequest():
            return plan_cancel(state, request, now)
        case RetryRequest():
            return plan_retry(state, request, now)
