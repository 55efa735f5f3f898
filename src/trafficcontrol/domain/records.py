"""The records the state is made of, and the snapshot schema that carries them.

Kept apart from ``state.py`` so that events (a rollback carries a snapshot) can name
them without a cycle.
"""

from __future__ import annotations

import msgspec

from trafficcontrol.domain.capacity.tracker import CapacitySnapshot
from trafficcontrol.domain.failures import FailureClass
from trafficcontrol.domain.model import (
    AttemptId,
    LimitHit,
    Outcome,
    ProjectSpec,
    StopReason,
    TaskId,
    TaskSpec,
    TaskState,
    Usage,
)
from trafficcontrol.domain.resilience import ResilienceSnapshot
from trafficcontrol.domain.workflows import StepOutcome, WorkflowRun, WorkflowSpec


class TaskRecord(msgspec.Struct, kw_only=True):
    spec: TaskSpec
    state: TaskState
    unfinished_deps: int
    attempts: list[AttemptId] = msgspec.field(default_factory=list)
    failures: int = 0
    """Failed attempts since the task was (re)submitted or retried by hand."""
    retry_at: float | None = None
    ready_order: int = -1
    ready_since: float | None = None
    submitted_at: float = 0.0
    finished_at: float | None = None
    cancel_requested: bool = False
    last_error: str | None = None
    wait_reason: str | None = None
    """Why it waits (state waiting): a back-off after a failure, or capacity."""
    workflow_run: WorkflowRun | None = None
    """Progress through the task's workflow (None: a one-attempt task)."""
    feedback: str | None = None
    """What the next attempt should know (set by a retry with feedback)."""
    triaged: int = 0
    """How often the lead was asked about this task's failure (answered or not)."""
    split_into: list[TaskId] | None = None
    """Subtasks the lead split it into (it is done when they are)."""
    transient_failures: int = 0
    """Transient / infrastructure failures since (re)submission or a manual retry."""
    first_transient_at: float | None = None


class AttemptRecord(msgspec.Struct, kw_only=True):
    id: AttemptId
    task_id: TaskId
    no: int
    backend: str
    model: str | None
    resources: tuple[str, ...]
    started_at: float
    deadline: float | None
    log_path: str
    ended_at: float | None = None
    outcome: Outcome | None = None
    exit_code: int | None = None
    error: str | None = None
    usage: Usage | None = None
    session_id: str | None = None
    workdir: str | None = None
    branch: str | None = None
    base_commit: str | None = None
    pid: int | None = None
    pgid: int | None = None
    create_time: float | None = None
    stop_reason: StopReason | None = None
    simulated: bool = False
    resume_of: AttemptId | None = None
    """The interrupted attempt this one continued."""
    turn_usage: Usage | None = None
    """Sum of the turns reported while it ran (None: no turn reported)."""
    turns: int = 0
    expected_units: float | None = None
    """Capacity reserved for it at dispatch (usage units)."""
    route: str | None = None
    """Why it ran on its model."""
    limit_hit: LimitHit | None = None
    failure_class: FailureClass | None = None
    failure_rule: str | None = None
    step: str | None = None
    """The workflow step it ran."""
    step_outcome: StepOutcome | None = None
    context_tokens: int = 0
    """What the model saw on its latest turn (input + cache read + cache write tokens)."""
    context_peak: int = 0
    """The largest context of any of its turns (its session's peak utilisation)."""
    context_start: int | None = None
    """The context of its first turn (None: no turn reported)."""
    handoff: str | None = None
    """Its handoff summary, when its session was rotated."""
    adoptions: int = 0
    """How many times a restarted orchestrator adopted it (its agent outlived one)."""
    reports: int = 0
    """How many lines of its supervisor's report file are journaled (the highest
    ``report_no`` folded): an adopted attempt's reports are read on from there, so none
    is counted twice."""


class RateLimitReport(msgspec.Struct, frozen=True, kw_only=True):
    window: str
    status: str
    utilization: float | None
    resets_at: float | None
    at: float
    attempt_id: AttemptId


class SnapshotData(msgspec.Struct, frozen=True, kw_only=True):
    """Schema of a snapshot: what the journal would rebuild, without derived indices."""

    schema: int
    seq: int
    next_ready_order: int
    instance: str | None
    running_orchestrator: bool
    projects: list[ProjectSpec]
    tasks: list[TaskRecord]
    attempts: list[AttemptRecord]
    rate_limits: list[RateLimitReport] = msgspec.field(default_factory=list)
    """The newest provider report per limit window (added in schema 1; absent: none)."""
    capacity: CapacitySnapshot | None = None
    """Ledger, learned limits, forecasts (added in schema 1; absent: nothing metered)."""
    workflows: list[WorkflowSpec] = msgspec.field(default_factory=list)
    """Workflow definitions tasks run (added in schema 1)."""
    resilience: ResilienceSnapshot | None = None
    """Breakers, incidents, recent errors, retry policy (added in schema 1)."""
