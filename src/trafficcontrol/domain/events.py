"""Journal events. Every state change is one of these, appended before it is acted on.

Events are msgspec structs tagged by ``type`` so one decoder reads any row. ``at`` is
the time the shell stamped on the event; ``apply`` uses it instead of a clock, which
keeps replay deterministic.
"""

from __future__ import annotations

import msgspec

from trafficcontrol.domain.breakers import BreakerState
from trafficcontrol.domain.capacity.limits import LimitCorrection
from trafficcontrol.domain.capacity.tracker import CapacityConfig
from trafficcontrol.domain.capacity.warnings import CapacityWarning
from trafficcontrol.domain.failures import FailureClass
from trafficcontrol.domain.model import (
    AttemptId,
    FailureEvidence,
    LimitHit,
    Outcome,
    ProjectSpec,
    StopReason,
    TaskId,
    TaskSpec,
    Usage,
)
from trafficcontrol.domain.records import SnapshotData
from trafficcontrol.domain.resilience import ResilienceConfig
from trafficcontrol.domain.workflows import StepOutcome, WorkflowSpec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True):
    at: float


class BacklogSubmitted(Event, tag="backlog_submitted", frozen=True):
    """A validated submission: all of it applies, or none of it was journaled."""

    source: str
    projects: list[ProjectSpec]
    tasks: list[TaskSpec]
    workflows: list[WorkflowSpec] = msgspec.field(default_factory=list)
    """Definitions of the workflows its tasks run (new or changed ones only)."""


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
    expected_units: float | None = None
    """Capacity reserved for it (usage units); None: nothing reserved."""
    step: str | None = None
    """The workflow step this attempt runs."""
    route: str | None = None
    """Why this model: the routing decision in words."""


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


class AttemptAdopted(Event, tag="attempt_adopted", frozen=True):
    """A restarted orchestrator took over an attempt whose supervisor outlived the one
    that started it, instead of running it again."""

    attempt_id: AttemptId
    instance: str
    finished: bool
    """Its agent had already ended (its exit record was written while no orchestrator
    ran); otherwise it still ran and is followed from here."""


class AgentSessionStarted(Event, tag="agent_session_started", frozen=True):
    attempt_id: AttemptId
    session_id: str
    report_no: int | None = None
    """Its line in the attempt's report file, when a supervisor wrote it (see
    ``AttemptRecord.reports``)."""


class TurnUsageReported(Event, tag="turn_usage_reported", frozen=True):
    """One model turn's usage, as the provider reported it while the attempt ran."""

    attempt_id: AttemptId
    model: str | None
    usage: Usage
    report_no: int | None = None
    """Its line in the attempt's report file, when a supervisor wrote it."""


class RateLimitObserved(Event, tag="rate_limit_observed", frozen=True):
    """A limit window as the provider reported it: official, so it wins over estimates."""

    attempt_id: AttemptId
    window: str
    """five_hour | seven_day | seven_day_opus | seven_day_sonnet | overage | (newer ones)."""
    status: str
    """allowed | allowed_warning | rejected (as the provider says it)."""
    utilization: float | None = None
    resets_at: float | None = None
    report_no: int | None = None
    """Its line in the attempt's report file, when a supervisor wrote it."""


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
    limit_hit: LimitHit | None = None
    """The provider refused on a limit: the task waits for the reset, no failure counted."""
    failure: FailureEvidence | None = None
    """What the adapter saw when it failed."""
    failure_class: FailureClass | None = None
    """The class the shell's failure table gave it (``domain.failures``): what happens next."""
    failure_rule: str | None = None
    """The rule that classified it."""
    step_outcome: StepOutcome | None = None
    """A workflow step's validated output, or why its answer was not valid."""
    handoff: str | None = None
    """A session rotated (stop reason rotate): its summary for the fresh session that
    continues the work (the agent's own, else extracted from its log)."""
    agent_started_at: float | None = None
    """When the agent's own process was created (epoch seconds; ``domain.profile``)."""
    first_output_at: float | None = None
    """When the agent first wrote anything (Claude Code: its stream's first message)."""
    exited_at: float | None = None
    """When the agent's process ended (before its end was journaled)."""


class TaskDeferred(Event, tag="task_deferred", frozen=True):
    """A ready task waits for capacity: no window it could run in has room before ``until``."""

    task_id: TaskId
    until: float
    reason: str


class CapacityConfigured(Event, tag="capacity_configured", frozen=True):
    """The plan the usage is metered against from here on (journaled when config changes)."""

    config: CapacityConfig


class LimitCorrected(Event, tag="limit_corrected", frozen=True):
    """A window's effective limit moved, with its evidence (a limit hit, or a quiet window)."""

    correction: LimitCorrection


class ResilienceConfigured(Event, tag="resilience_configured", frozen=True):
    """Retry policy, breaker policy and failure rules from here on (journaled on change)."""

    config: ResilienceConfig


class BreakerChanged(Event, tag="breaker_changed", frozen=True):
    key: str
    """backend/family (claude/opus) or a dependency (store, notifier)."""
    state: BreakerState
    reason: str


class CapacityWarned(Event, tag="capacity_warned", frozen=True):
    warning: CapacityWarning


class TaskCancelRequested(Event, tag="task_cancel_requested", frozen=True):
    task_id: TaskId
    reason: str = "cancelled by user"


class TaskRetryRequested(Event, tag="task_retry_requested", frozen=True):
    task_id: TaskId
    feedback: str | None = None
    """What the next attempt should know (the lead's triage); added to its prompt."""
    by: str = "user"
    """user | lead."""


class TaskSplit(Event, tag="task_split", frozen=True):
    """The lead split a task: its subtasks are submitted in the same batch (before this
    event); the task itself is done when they all are."""

    task_id: TaskId
    children: list[TaskId]


class LeadConsulted(Event, tag="lead_consulted", frozen=True):
    """The lead agent answered one question (its usage is metered like any agent's)."""

    consult_id: str
    purpose: str
    """triage | split | answer."""
    task_id: TaskId | None = None
    model: str | None = None
    usage: Usage | None = None
    decision: str = ""
    context_utilisation: float = 0.0
    """The lead's context, as a fraction of its window, when it was asked."""


class TaskWoken(Event, tag="task_woken", frozen=True):
    """A waiting task's back-off is over."""

    task_id: TaskId


class RolledBack(Event, tag="rolled_back", frozen=True):
    """The state becomes the snapshot's (attempt history is kept; see ``rollback``)."""

    version: int
    snapshot: SnapshotData


class StoreOutage(Event, tag="store_outage", frozen=True):
    """The journal could not be written from ``started_at`` until ``at``. Journaled once
    the store is back, after the events buffered meanwhile (the same batch)."""

    started_at: float
    buffered: int
    """Events folded during the outage and journaled late, just before this one."""
    errors: int
    """Failed tries to write the journal."""
    last_error: str


class SlowOperation(Event, tag="slow_operation", frozen=True):
    """An orchestrator operation took longer than its threshold: the start of a slow
    incident, journaled once however many slow spans it lasts."""

    operation: str
    seconds: float
    threshold_s: float


class SlowOperationCleared(Event, tag="slow_operation_cleared", frozen=True):
    """The incident ``SlowOperation`` opened is over: no slow span for a while."""

    operation: str
    slow_spans: int
    """Slow spans of this operation during the incident."""
    worst_s: float


class OrchestratorStarted(Event, tag="orchestrator_started", frozen=True):
    instance: str
    pid: int
    previous_clean: bool


class OrchestratorStopped(Event, tag="orchestrator_stopped", frozen=True):
    instance: str
    left_running: tuple[AttemptId, ...] = ()
    """Attempts left to run on under their supervisors (``--leave-agents-running``):
    the next orchestrator adopts them."""


AnyEvent = (
    BacklogSubmitted
    | AttemptDispatched
    | WorkspacePrepared
    | AgentProcessStarted
    | AgentSessionStarted
    | AttemptAdopted
    | AttemptStopRequested
    | TurnUsageReported
    | RateLimitObserved
    | AttemptFinished
    | TaskCancelRequested
    | TaskRetryRequested
    | TaskWoken
    | TaskDeferred
    | CapacityConfigured
    | LimitCorrected
    | CapacityWarned
    | ResilienceConfigured
    | LeadConsulted
    | TaskSplit
    | BreakerChanged
    | OrchestratorStarted
    | OrchestratorStopped
    | RolledBack
    | StoreOutage
    | SlowOperation
    | SlowOperationCleared
)
