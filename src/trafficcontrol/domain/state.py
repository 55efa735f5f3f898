"""The folded state and ``apply``.

Design note. ``apply(state, event)`` is deterministic and does no I/O; for O(log n)
cost per event it updates the state in place and returns it (a copy-on-write fold
would cost O(tasks) per event). Indices kept incrementally:

- ``ready``: a heap of (priority rank, -score, ready order, task id), with lazy
  deletion: an entry is live only while its task is ready with that order number.
  ``aging`` is the same set in FIFO order, so ``decide`` can promote a task that has
  waited too long (starvation freedom) in O(1).
- ``dependents``: task -> tasks that wait on it; ``unfinished_deps`` counts down.
- ``waiting``: a heap of back-off deadlines; ``deadlines``: a heap of attempt timeouts.
- ``locks``, ``running_by_project``, ``running_by_model``: what limits read.

Invariants: a task is in exactly one state; a task is running iff it has exactly
one live attempt; counts by state always sum to the number of tasks.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque

import msgspec

from trafficcontrol.domain.breakers import key_for
from trafficcontrol.domain.capacity.costs import SizeBucket, size_bucket
from trafficcontrol.domain.capacity.families import model_family
from trafficcontrol.domain.capacity.tracker import DEFAULT_STEP, Capacity, remainder
from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AgentSessionStarted,
    AnyEvent,
    AttemptAdopted,
    AttemptDispatched,
    AttemptFinished,
    AttemptStopRequested,
    BacklogSubmitted,
    BreakerChanged,
    CapacityConfigured,
    CapacityWarned,
    LeadConsulted,
    LimitCorrected,
    OrchestratorStarted,
    OrchestratorStopped,
    RateLimitObserved,
    ResilienceConfigured,
    RolledBack,
    SlowOperation,
    SlowOperationCleared,
    StoreOutage,
    TaskCancelRequested,
    TaskDeferred,
    TaskRetryRequested,
    TaskSplit,
    TaskWoken,
    TurnUsageReported,
    WorkspacePrepared,
)
from trafficcontrol.domain.failures import FailureClass
from trafficcontrol.domain.locks import LockTable
from trafficcontrol.domain.model import (
    AttemptId,
    OnInterrupt,
    Outcome,
    ProjectId,
    ProjectSpec,
    StopReason,
    TaskId,
    TaskSpec,
    TaskState,
)
from trafficcontrol.domain.records import AttemptRecord, TaskRecord
from trafficcontrol.domain.resilience import SLOW_KEY, Resilience
from trafficcontrol.domain.retries import full_jitter_delay, task_delay
from trafficcontrol.domain.workflows import StepOutcome, WorkflowRun, WorkflowSpec, advance
from trafficcontrol.domain.workflows import start as start_workflow

ReadyEntry = tuple[int, float, int, TaskId]


class State:
    """Everything the orchestrator knows, folded from the journal."""

    def __init__(self) -> None:
        self.seq = 0
        """Sequence number of the last event applied."""
        self.projects: dict[ProjectId, ProjectSpec] = {}
        self.tasks: dict[TaskId, TaskRecord] = {}
        self.attempts: dict[AttemptId, AttemptRecord] = {}
        self.dependents: dict[TaskId, list[TaskId]] = {}
        self.counts: Counter[TaskState] = Counter()
        self.ready: list[ReadyEntry] = []
        self.aging: deque[tuple[float, int, TaskId]] = deque()
        self.waiting: list[tuple[float, TaskId]] = []
        self.deadlines: list[tuple[float, AttemptId]] = []
        self.running: dict[AttemptId, AttemptRecord] = {}
        self.running_by_project: Counter[ProjectId] = Counter()
        self.running_by_model: Counter[str] = Counter()
        self.stops_wanted: set[AttemptId] = set()
        """Running attempts of cancelled tasks whose stop is not yet journaled."""
        self.locks = LockTable()
        self.next_ready_order = 0
        self.instance: str | None = None
        self.running_orchestrator = False
        """True between an OrchestratorStarted and its OrchestratorStopped."""
        self.rate_limits: dict[str, RateLimitObserved] = {}
        """The newest provider report per limit window."""
        self.capacity = Capacity()
        """Usage ledger, reservations, learned limits and forecasts (``domain.capacity``)."""
        self.resilience = Resilience()
        """Retry policy, circuit breakers, recent errors and incidents."""
        self.workflows: dict[str, WorkflowSpec] = {}
        """Workflow definitions by name (journaled with the tasks that run them)."""

    # -- queries ----------------------------------------------------------------
    def live_attempt(self, task_id: TaskId) -> AttemptRecord | None:
        record = self.tasks[task_id]
        if record.state is TaskState.RUNNING and record.attempts:
            return self.attempts[record.attempts[-1]]
        return None

    def is_ready_entry(self, order: int, task_id: TaskId) -> bool:
        record = self.tasks.get(task_id)
        return (
            record is not None and record.state is TaskState.READY and record.ready_order == order
        )

    def unfinished(self) -> int:
        return sum(n for s, n in self.counts.items() if not s.terminal)


def model_key(model: str | None) -> str:
    return model or "default"


def copy_record(record: TaskRecord) -> TaskRecord:
    """A copy that shares nothing mutable with ``record`` (which a snapshot or event holds)."""
    run = record.workflow_run
    return msgspec.structs.replace(
        record,
        attempts=list(record.attempts),
        workflow_run=None if run is None else copy_run(run),
    )


def copy_run(run: WorkflowRun) -> WorkflowRun:
    """A deep copy of ``run`` (its loop counts and handoffs change in place)."""
    return msgspec.convert(msgspec.to_builtins(run), WorkflowRun)


def task_size(spec: TaskSpec) -> SizeBucket:
    return size_bucket(len(spec.prompt))


def breaker_key(attempt: AttemptRecord) -> str:
    return key_for(attempt.backend, model_family(attempt.model).value)


def rebuild_indices(state: State) -> None:
    """Derive every index of ``state`` from its task and attempt records."""
    state.counts.clear()
    state.dependents.clear()
    state.ready.clear()
    state.aging.clear()
    state.waiting.clear()
    state.deadlines.clear()
    state.running.clear()
    state.running_by_project.clear()
    state.running_by_model.clear()
    state.stops_wanted.clear()
    state.locks.exclusive.clear()
    state.locks.shared.clear()
    aging = []
    for record in state.tasks.values():
        spec = record.spec
        state.counts[record.state] += 1
        for dep in spec.depends_on:
            state.dependents.setdefault(dep, []).append(spec.id)
        if record.state is TaskState.READY:
            entry = (spec.priority.rank, -spec.score, record.ready_order, spec.id)
            state.ready.append(entry)
            aging.append((record.ready_since or 0.0, record.ready_order, spec.id))
        elif record.state is TaskState.WAITING and record.retry_at is not None:
            state.waiting.append((record.retry_at, spec.id))
    for record in state.tasks.values():
        # After every depends_on link, as the fold adds them: a split comes after its
        # subtasks' submission, and the order of dependents is the order they get ready.
        for child in record.split_into or ():
            state.dependents.setdefault(child, []).append(record.spec.id)
    heapq.heapify(state.ready)
    heapq.heapify(state.waiting)
    aging.sort(key=lambda item: (item[1], item[0]))
    state.aging.extend(aging)
    for attempt in state.attempts.values():
        if attempt.outcome is not None:
            continue
        task = state.tasks[attempt.task_id]
        if task.state is not TaskState.RUNNING or task.attempts[-1] != attempt.id:
            continue  # not live: a rollback's shell stops such attempts before it
        state.running[attempt.id] = attempt
        state.running_by_project[task.spec.project] += 1
        state.running_by_model[model_key(attempt.model)] += 1
        state.locks.acquire(attempt.id, attempt.resources)
        if attempt.deadline is not None:
            state.deadlines.append((attempt.deadline, attempt.id))
        if task.cancel_requested and attempt.stop_reason is None:
            state.stops_wanted.add(attempt.id)
    heapq.heapify(state.deadlines)
    state.capacity.reset_running()
    _resume_holds(state)


def _resume_holds(state: State) -> None:
    """Rebuild the running attempts' capacity holds from their records."""
    for attempt in state.running.values():
        state.capacity.resume_running(
            attempt.id,
            attempt.model,
            attempt.expected_units,
            attempt.started_at,
            size=task_size(state.tasks[attempt.task_id].spec),
            step=attempt.step or DEFAULT_STEP,
        )


# -- transitions ----------------------------------------------------------------
def _set_state(state: State, record: TaskRecord, new: TaskState) -> None:
    state.counts[record.state] -= 1
    state.counts[new] += 1
    record.state = new


def _make_ready(state: State, record: TaskRecord, at: float) -> None:
    _set_state(state, record, TaskState.READY)
    order = state.next_ready_order
    state.next_ready_order += 1
    record.ready_order = order
    record.ready_since = at
    record.wait_reason = None
    spec = record.spec
    heapq.heappush(state.ready, (spec.priority.rank, -spec.score, order, spec.id))
    state.aging.append((at, order, spec.id))


def _drop_stale_heads(state: State) -> None:
    ready = state.ready
    while ready and not state.is_ready_entry(ready[0][2], ready[0][3]):
        heapq.heappop(ready)
    aging = state.aging
    while aging and not state.is_ready_entry(aging[0][1], aging[0][2]):
        aging.popleft()
    waiting = state.waiting
    while waiting and state.tasks[waiting[0][1]].retry_at != waiting[0][0]:
        heapq.heappop(waiting)


def _apply_backlog(state: State, event: BacklogSubmitted) -> None:
    for workflow in event.workflows:
        state.workflows[workflow.name] = workflow
    for project in event.projects:
        state.projects[project.id] = project
    for spec in event.tasks:
        if spec.id in state.tasks:
            continue  # resubmission of an identical task (validated at the edge)
        unfinished = 0
        for dep in spec.depends_on:
            state.dependents.setdefault(dep, []).append(spec.id)
            if state.tasks[dep].state is not TaskState.DONE:
                unfinished += 1
        record = TaskRecord(
            spec=spec, state=TaskState.PENDING, unfinished_deps=unfinished, submitted_at=event.at
        )
        if spec.workflow is not None:
            record.workflow_run = start_workflow(state.workflows[spec.workflow])
        state.tasks[spec.id] = record
        state.counts[TaskState.PENDING] += 1
        if unfinished == 0:
            _make_ready(state, record, event.at)


def _apply_dispatched(state: State, event: AttemptDispatched) -> None:
    record = state.tasks[event.task_id]
    attempt = AttemptRecord(
        id=event.attempt_id,
        task_id=event.task_id,
        no=event.attempt_no,
        backend=event.backend,
        model=event.model,
        resources=event.resources,
        started_at=event.at,
        deadline=event.deadline,
        log_path=event.log_path,
        resume_of=event.resume_of,
        expected_units=event.expected_units,
        route=event.route,
        step=event.step,
    )
    state.attempts[attempt.id] = attempt
    record.attempts.append(attempt.id)
    _set_state(state, record, TaskState.RUNNING)
    record.ready_order = -1
    record.retry_at = None
    state.running[attempt.id] = attempt
    state.running_by_project[record.spec.project] += 1
    state.running_by_model[model_key(attempt.model)] += 1
    state.locks.acquire(attempt.id, attempt.resources)
    if attempt.deadline is not None:
        heapq.heappush(state.deadlines, (attempt.deadline, attempt.id))
    state.capacity.dispatched(
        attempt.id,
        attempt.model,
        attempt.expected_units,
        event.at,
        size=task_size(record.spec),
        step=attempt.step or DEFAULT_STEP,
    )
    state.resilience.dispatched(attempt.id, breaker_key(attempt))
    _drop_stale_heads(state)


def _finish_task(state: State, record: TaskRecord, new: TaskState, at: float) -> None:
    _set_state(state, record, new)
    record.finished_at = at
    record.cancel_requested = False
    if new is TaskState.DONE:
        for dep_id in state.dependents.get(record.spec.id, ()):
            dependent = state.tasks[dep_id]
            dependent.unfinished_deps -= 1
            if dependent.unfinished_deps == 0 and dependent.state is TaskState.PENDING:
                if dependent.split_into:
                    _finish_task(state, dependent, TaskState.DONE, at)  # its subtasks did it
                else:
                    _make_ready(state, dependent, at)


def _apply_finished(state: State, event: AttemptFinished) -> None:
    attempt = state.attempts[event.attempt_id]
    if attempt.outcome is not None:
        return  # a second report of the same end (validated at the edge; kept idempotent)
    attempt.ended_at = event.at
    attempt.outcome = event.outcome
    attempt.exit_code = event.exit_code
    attempt.error = event.error
    attempt.usage = event.usage
    attempt.simulated = event.simulated
    if event.session_id is not None:
        attempt.session_id = event.session_id
    attempt.limit_hit = event.limit_hit
    attempt.failure_class = event.failure_class
    attempt.failure_rule = event.failure_rule
    attempt.handoff = event.handoff
    record = state.tasks[attempt.task_id]
    _meter_finished(state, attempt, record, event)
    state.resilience.finished(
        attempt.id,
        breaker_key(attempt),
        event.at,
        event.failure_class,
        succeeded=event.outcome is Outcome.SUCCEEDED,
        rule=event.failure_rule,
        message=event.error or "",
    )
    state.running.pop(attempt.id, None)
    state.stops_wanted.discard(attempt.id)
    state.running_by_project[record.spec.project] -= 1
    state.running_by_model[model_key(attempt.model)] -= 1
    state.locks.release(attempt.id, attempt.resources)
    deadlines = state.deadlines
    while deadlines and deadlines[0][1] not in state.running:
        heapq.heappop(deadlines)
    if event.error:
        record.last_error = event.error
    outcome = event.outcome
    attempt.step_outcome = event.step_outcome
    if outcome is Outcome.SUCCEEDED and record.workflow_run is not None:
        _advance_workflow(state, record, event)
    elif outcome is Outcome.SUCCEEDED:
        _finish_task(state, record, TaskState.DONE, event.at)
    elif outcome is Outcome.CANCELLED or record.cancel_requested:
        _finish_task(state, record, TaskState.CANCELLED, event.at)
    elif event.limit_hit is not None or event.failure_class is FailureClass.LIMIT:
        _wait(state, record, _limit_reset(event), _limit_reason(event))
    elif event.failure_class is FailureClass.PERMANENT:
        record.last_error = f"permanent ({event.failure_rule}): {event.error}"
        _finish_task(state, record, TaskState.FAILED, event.at)
    elif event.failure_class in (FailureClass.TRANSIENT, FailureClass.INFRASTRUCTURE):
        _retry_transient(state, record, event)
    elif outcome is Outcome.INTERRUPTED:
        on_interrupt = interrupt_policy(state, record.spec.id, attempt.backend)
        # A rotated session was stopped on purpose: it is always continued.
        if on_interrupt is OnInterrupt.FAIL and attempt.stop_reason is not StopReason.ROTATE:
            record.last_error = f"interrupted ({event.error}); on_interrupt = fail"
            _finish_task(state, record, TaskState.FAILED, event.at)
        else:
            _make_ready(state, record, event.at)
    else:
        record.failures += 1
        limit = max_attempts(state, record.spec)
        if record.failures >= limit:
            _finish_task(state, record, TaskState.FAILED, event.at)
        else:
            policy = state.resilience.config.retry
            delay = task_delay(record.spec.retry_backoff_s, record.failures, policy.cap_s)
            _wait(state, record, event.at + delay, f"retry after failure {record.failures}")


def _retry_transient(state: State, record: TaskRecord, event: AttemptFinished) -> None:
    """Back off with full jitter, honouring retry-after, within the attempt and time budgets."""
    policy = state.resilience.config.retry
    record.transient_failures += 1
    if record.first_transient_at is None:
        record.first_transient_at = event.at
    n = record.transient_failures
    unknown = event.failure_rule == "unknown"
    allowed = policy.unknown_attempts if unknown else policy.transient_attempts
    retry_after = event.failure.retry_after_s if event.failure is not None else None
    key = f"{record.spec.id}:{n}"
    delay = full_jitter_delay(record.spec.retry_backoff_s, n, policy.cap_s, key, retry_after)
    kind = event.failure_class.value if event.failure_class else "transient"
    if n > allowed or event.at + delay > record.first_transient_at + policy.budget_s:
        record.last_error = (
            f"gave up after {n} {kind} failures ({event.failure_rule}): {event.error}"
        )
        _finish_task(state, record, TaskState.FAILED, event.at)
        return
    _wait(state, record, event.at + delay, f"{kind} ({event.failure_rule}): retry {n}/{allowed}")


def _advance_workflow(state: State, record: TaskRecord, event: AttemptFinished) -> None:
    """A step attempt succeeded: the next step, a loop back, a re-ask, or the end."""
    run = record.workflow_run
    assert run is not None
    spec = state.workflows[run.workflow]
    verdict = advance(spec, run, event.step_outcome or StepOutcome(error="no output"))
    if verdict.kind == "done":
        _finish_task(state, record, TaskState.DONE, event.at)
    elif verdict.kind == "exhausted":
        record.last_error = f"workflow {spec.name}: {verdict.detail}"
        _finish_task(state, record, TaskState.FAILED, event.at)
    elif verdict.kind == "invalid":
        # The step's output was invalid twice: the step failed (class task).
        record.failures += 1
        record.last_error = f"step {verdict.step}: invalid output: {verdict.detail}"
        if record.failures >= max_attempts(state, record.spec):
            _finish_task(state, record, TaskState.FAILED, event.at)
        else:
            _make_ready(state, record, event.at)
    else:  # next, loop, reask: the task runs again, on the step the run now points at
        _make_ready(state, record, event.at)


LIMIT_WAIT_FALLBACK_S = 300.0
"""How long a task waits after a limit hit whose reset time nobody said."""


def _limit_reset(event: AttemptFinished) -> float:
    hit = event.limit_hit
    if hit is not None and hit.resets_at is not None and hit.resets_at > event.at:
        return hit.resets_at
    retry_after = hit.retry_after_s if hit is not None else None
    if retry_after is None and event.failure is not None:
        retry_after = event.failure.retry_after_s
    if retry_after is not None and retry_after > 0:
        return event.at + retry_after
    return event.at + LIMIT_WAIT_FALLBACK_S


def _limit_reason(event: AttemptFinished) -> str:
    window = event.limit_hit.window if event.limit_hit is not None else None
    return f"capacity: provider limit reached ({window or 'window not said'})"


def _wait(state: State, record: TaskRecord, until: float, reason: str) -> None:
    _set_state(state, record, TaskState.WAITING)
    record.retry_at = until
    record.wait_reason = reason
    heapq.heappush(state.waiting, (until, record.spec.id))


def _meter_finished(
    state: State, attempt: AttemptRecord, record: TaskRecord, event: AttemptFinished
) -> None:
    """The usage the turns did not report, the limit hit's evidence, the hold's release."""
    capacity = state.capacity
    project, agent = record.spec.project, attempt.backend
    if event.usage is not None:
        extra = remainder(event.usage, attempt.turn_usage)
        if extra is not None:
            capacity.usage(event.at, attempt.id, attempt.model, extra, project=project, agent=agent)
    elif attempt.turns == 0 and attempt.session_id is not None:
        capacity.usage(event.at, attempt.id, attempt.model, None, project=project, agent=agent)
    if event.limit_hit is not None:
        capacity.limit_hit(attempt.id, attempt.model, event.limit_hit, event.at)
    learn = event.outcome in (Outcome.SUCCEEDED, Outcome.FAILED) and event.limit_hit is None
    capacity.finished(attempt.id, learn=learn)


def _apply_split(state: State, event: TaskSplit) -> None:
    """The task waits for its subtasks (submitted just before) instead of an agent."""
    record = state.tasks[event.task_id]
    if record.split_into is not None or record.state is not TaskState.READY:
        return
    record.split_into = list(event.children)
    if not event.children:
        return  # the lead did not split it: it runs as one task
    unfinished = 0
    for child in event.children:
        state.dependents.setdefault(child, []).append(record.spec.id)
        if state.tasks[child].state is not TaskState.DONE:
            unfinished += 1
    record.unfinished_deps += unfinished
    _set_state(state, record, TaskState.PENDING)
    record.ready_order = -1
    _drop_stale_heads(state)
    if unfinished == 0:
        _finish_task(state, record, TaskState.DONE, event.at)


def _apply_deferred(state: State, event: TaskDeferred) -> None:
    record = state.tasks[event.task_id]
    if record.state is not TaskState.READY:
        return
    _wait(state, record, event.until, event.reason)
    _drop_stale_heads(state)


def _apply_capacity_config(state: State, event: CapacityConfigured) -> None:
    saved = msgspec.structs.replace(state.capacity.snapshot(), config=event.config)
    state.capacity = Capacity.restore(saved)
    _resume_holds(state)


def interrupt_policy(state: State, task_id: TaskId, backend: str) -> OnInterrupt:
    """The task's on_interrupt, else its project's, else resume for claude (its session
    survives) and restart for the other backends."""
    spec = state.tasks[task_id].spec
    policy = spec.on_interrupt or state.projects[spec.project].on_interrupt
    if policy is not None:
        return policy
    return OnInterrupt.RESUME if backend == "claude" else OnInterrupt.RESTART


def max_attempts(state: State, spec: TaskSpec) -> int:
    if spec.max_attempts is not None:
        return spec.max_attempts
    return state.projects[spec.project].max_attempts


def _apply_cancel(state: State, event: TaskCancelRequested) -> None:
    record = state.tasks[event.task_id]
    if record.state.terminal:
        return
    if record.state is TaskState.RUNNING:
        record.cancel_requested = True
        record.last_error = event.reason
        attempt = state.live_attempt(event.task_id)
        if attempt is not None and attempt.stop_reason is None:
            state.stops_wanted.add(attempt.id)
        return
    record.last_error = event.reason
    record.retry_at = None
    _finish_task(state, record, TaskState.CANCELLED, event.at)
    _drop_stale_heads(state)


def _apply_retry(state: State, event: TaskRetryRequested) -> None:
    record = state.tasks[event.task_id]
    if record.state not in (TaskState.FAILED, TaskState.CANCELLED):
        return
    record.failures = 0
    record.feedback = event.feedback
    if record.workflow_run is not None:
        record.workflow_run.loops.clear()
        record.workflow_run.reask = None
    record.transient_failures = 0
    record.first_transient_at = None
    record.finished_at = None
    record.last_error = None
    if record.unfinished_deps == 0:
        _make_ready(state, record, event.at)
    else:
        _set_state(state, record, TaskState.PENDING)


def _apply_woken(state: State, event: TaskWoken) -> None:
    record = state.tasks[event.task_id]
    if record.state is TaskState.WAITING:
        record.retry_at = None
        _make_ready(state, record, event.at)
    _drop_stale_heads(state)


def _apply_stop(state: State, event: AttemptStopRequested) -> None:
    attempt = state.attempts[event.attempt_id]
    if attempt.outcome is None and attempt.stop_reason is None:
        attempt.stop_reason = event.reason
    state.stops_wanted.discard(attempt.id)


def _apply_rollback(state: State, event: RolledBack) -> None:
    """Tasks and projects become the snapshot's; attempt history is kept.

    The shell stopped first every agent whose task this changes. A task that was
    running in the snapshot but whose attempt has ended since is ready again (that
    attempt's outcome stays in its history); tasks submitted after the snapshot leave
    the state (the journal keeps them). Attempt numbers continue where they were, so
    an attempt id is never reused.
    """
    data = event.snapshot
    current_tasks = state.tasks
    tasks: dict[TaskId, TaskRecord] = {}
    for snap in data.tasks:
        record = copy_record(snap)
        now_record = current_tasks.get(record.spec.id)
        if now_record is not None:
            record.attempts = list(now_record.attempts)
        if record.state is TaskState.RUNNING:
            live = state.attempts.get(snap.attempts[-1]) if snap.attempts else None
            if live is None or live.outcome is not None:
                record.state = TaskState.READY
                record.ready_order = state.next_ready_order
                record.ready_since = event.at
                state.next_ready_order += 1
        tasks[record.spec.id] = record
    state.tasks = tasks
    state.projects = {p.id: p for p in data.projects}
    state.attempts = {a: r for a, r in state.attempts.items() if r.task_id in tasks}
    state.next_ready_order = max(state.next_ready_order, data.next_ready_order)
    rebuild_indices(state)


def _count_report(attempt: AttemptRecord, report_no: int | None) -> None:
    if report_no is not None and report_no > attempt.reports:
        attempt.reports = report_no


def apply(state: State, event: AnyEvent) -> State:
    """Fold one event into the state (in place) and return it."""
    match event:
        case AttemptDispatched():
            _apply_dispatched(state, event)
        case AttemptFinished():
            _apply_finished(state, event)
        case BacklogSubmitted():
            _apply_backlog(state, event)
        case AttemptAdopted():
            state.attempts[event.attempt_id].adoptions += 1
        case AgentSessionStarted():
            attempt = state.attempts[event.attempt_id]
            attempt.session_id = event.session_id
            _count_report(attempt, event.report_no)
        case AgentProcessStarted():
            attempt = state.attempts[event.attempt_id]
            attempt.pid, attempt.pgid = event.pid, event.pgid
            attempt.create_time = event.create_time
        case WorkspacePrepared():
            attempt = state.attempts[event.attempt_id]
            attempt.workdir, attempt.branch = event.path, event.branch
            attempt.base_commit = event.base_commit
        case AttemptStopRequested():
            _apply_stop(state, event)
        case RateLimitObserved():
            if (observer := state.attempts.get(event.attempt_id)) is not None:
                _count_report(observer, event.report_no)
            state.rate_limits[event.window] = event
            state.capacity.observe_signal(
                event.window, event.utilization, event.resets_at, event.at
            )
        case TurnUsageReported():
            attempt = state.attempts[event.attempt_id]
            _count_report(attempt, event.report_no)
            attempt.turns += 1
            attempt.turn_usage = (
                event.usage if attempt.turn_usage is None else attempt.turn_usage + event.usage
            )
            # What the model saw on this turn: the session's context (domain.rotation).
            seen = event.usage.input_tokens + event.usage.cache_read_tokens
            seen += event.usage.cache_creation_tokens
            attempt.context_tokens = seen
            attempt.context_peak = max(attempt.context_peak, seen)
            if attempt.context_start is None:
                attempt.context_start = seen
            state.capacity.usage(
                event.at,
                attempt.id,
                event.model or attempt.model,
                event.usage,
                project=state.tasks[attempt.task_id].spec.project,
                agent=attempt.backend,
            )
            state.resilience.answered(attempt.id, breaker_key(attempt), event.at)
        case TaskDeferred():
            _apply_deferred(state, event)
        case TaskSplit():
            _apply_split(state, event)
        case LimitCorrected():
            state.capacity.correct(event.correction)
        case CapacityWarned():
            state.capacity.warned(event.warning)
        case CapacityConfigured():
            _apply_capacity_config(state, event)
        case LeadConsulted():
            state.capacity.usage(
                event.at,
                f"lead:{event.consult_id}",
                event.model,
                event.usage,
                agent="lead",
            )
            triaged = state.tasks.get(event.task_id) if event.task_id is not None else None
            if event.purpose == "triage" and triaged is not None:
                triaged.triaged += 1  # asked once per failure, whatever the answer
        case ResilienceConfigured():
            saved = msgspec.structs.replace(state.resilience.snapshot(), config=event.config)
            state.resilience = Resilience.restore(saved)
        case BreakerChanged():
            state.resilience.change(event.key, event.state, event.reason, event.at)
        case TaskCancelRequested():
            _apply_cancel(state, event)
        case TaskRetryRequested():
            _apply_retry(state, event)
        case TaskWoken():
            _apply_woken(state, event)
        case OrchestratorStarted():
            state.instance = event.instance
            state.running_orchestrator = True
            state.resilience.close_slow(event.at)
        case SlowOperation():
            state.resilience.slow_opened(
                SLOW_KEY + event.operation,
                event.at,
                f"{event.operation} took {event.seconds:.3f} s"
                f" (slow after {event.threshold_s:g} s)",
            )
        case SlowOperationCleared():
            state.resilience.slow_closed(
                SLOW_KEY + event.operation,
                event.at,
                f"{event.operation}: {event.slow_spans} slow spans, worst {event.worst_s:.3f} s",
            )
        case OrchestratorStopped():
            state.running_orchestrator = False
            state.resilience.close_slow(event.at)
        case RolledBack():
            _apply_rollback(state, event)
        case StoreOutage():
            reason = f"journal unavailable ({event.errors} failed writes): {event.last_error}"
            state.resilience.outage("store", event.started_at, event.at, reason)
    state.seq += 1
    return state


def fold(events: list[AnyEvent], state: State | None = None) -> State:
    state = state if state is not None else State()
    for event in events:
        apply(state, event)
    return state
