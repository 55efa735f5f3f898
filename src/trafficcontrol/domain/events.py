"""Journal events. Every state change is one of these, appended before it is acted on.

Events are msgspec structs tagged by ``type`` so one decoder reads any row. ``at`` is
the time the shell stamped on the event; ``apply`` uses it instead of a clock, which
keeps replay deterministic.
"""

from __future__ import annotations

import msgspec

from trafficcontrol.domain.model import (
    AttemptId,
    Outcome,
    ProjectSpec,
    StopReason,
    TaskId,
    TaskSpec,
    Usage,
)
from trafficcontrol.domain.records import SnapshotData


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    at: float


class BacklogSubmitted(Event, tag="backlog_submitted", frozen=True):
    """A validated submission: all of it applies, or none of it was journaled."""

    source: str
    projects: list[ProjectSpec]
    tasks: list[TaskSpec]


class AttemptDispatched(Event, tag="attempt_dispatched", frozen=True):
    """The task runs: its locks are taken and an agent slot is counted from here on."""

    attempt_id: AttemptId
    task_id: TaskId
    attempt_no: int
    backend: str
    model: str | None
    resources: tuple[str, ...]
    deadline: float | None
    log_path: str
    resume_of: AttemptId | None = None
    """The interrupted attempt this one continues (same worktree, same agent session)."""


class WorkspacePrepared(Event, tag="workspace_prepared", frozen=True):
    attempt_id: AttemptId
    path: str
    branch: str | None = None
    base_commit: str | None = None


class AgentProcessStarted(Event, tag="agent_process_started", frozen=True):
    """Lets a restarted orchestrator find a process group that outlived it."""

    attempt_id: AttemptId
    pid: int
    pgid: int
    create_time: float


class AgentSessionStarted(Event, tag="agent_session_started", frozen=True):
    attempt_id: AttemptId
    session_id: str


class TurnUsageReported(Event, tag="turn_usage_reported", frozen=True):
    """One model turn's usage, as the provider reported it while the attempt ran."""

    attempt_id: AttemptId
    model: str | None
    usage: Usage


class RateLimitObserved(Event, tag="rate_limit_observed", frozen=True):
    """A limit window as the provider reported it: official, so it wins over estimates."""

    attempt_id: AttemptId
    window: str
    """five_hour | seven_day | seven_day_opus | seven_day_sonnet | overage | (newer ones)."""
    status: str
    """allowed | allowed_warning | rejected (as the provider says it)."""
    utilization: float | None = None
    resets_at: float | None = None


class AttemptStopRequested(Event, tag="attempt_stop_requested", frozen=True):
    attempt_id: AttemptId
    reason: StopReason


class AttemptFinished(Event, tag="attempt_finished", frozen=True):
    attempt_id: AttemptId
    outcome: Outcome
    exit_code: int | None = None
    error: str | None = None
    usage: Usage | None = None
    session_id: str | None = None
    simulated: bool = False


class TaskCancelRequested(Event, tag="task_cancel_requested", frozen=True):
    task_id: TaskId
    reason: str = "cancelled by user"


class TaskRetryRequested(Event, tag="task_retry_requested", frozen=True):
    task_id: TaskId


class TaskWoken(Event, tag="task_woken", frozen=True):
    """A waiting task's back-off is over."""

    task_id: TaskId


class RolledBack(Event, tag="rolled_back", frozen=True):
    """The state becomes the snapshot's (attempt history is kept; see ``rollback``)."""

    version: int
    snapshot: SnapshotData


class OrchestratorStarted(Event, tag="orchestrator_started", frozen=True):
    instance: str
    pid: int
    previous_clean: bool


class OrchestratorStopped(Event, tag="orchestrator_stopped", frozen=True):
    instance: str


AnyEvent = (
    BacklogSubmitted
    | AttemptDispatched
    | WorkspacePrepared
    | AgentProcessStarted
    | AgentSessionStarted
    | AttemptStopRequested
    | TurnUsageReported
    | RateLimitObserved
    | AttemptFinished
    | TaskCancelRequested
    | TaskRetryRequested
    | TaskWoken
    | OrchestratorStarted
    | OrchestratorStopped
    | RolledBack
)
