"""Invariants of a run, checked event by event against a journal. Pure.

Design note. ``InvariantChecker`` keeps its own shadow of the run — submitted tasks,
open attempts, the locks and slots they hold, tasks that succeeded — built from the
events alone, and never from the indices ``apply`` maintains (``state.locks``,
``state.running_by_*``), so a bug in ``apply`` or ``decide`` cannot hide itself by
agreeing with its own bookkeeping. It is fed every event in journal order
(``on_event`` before the fold, ``on_state`` after it) and collects violations as
sentences that name the task, the attempt and the event's sequence number:

- no task lost: every submitted task stays in the state, consistent with the shadow
  (running iff it has an open attempt, done iff an attempt succeeded); at the end of
  a settled run each is terminal or pending behind a failed or cancelled dependency;
- none done twice: at most one succeeded attempt per task, and no dispatch of a task
  that is done or already running;
- dependencies respected: a task is dispatched only after all its dependencies
  succeeded;
- locks never double-held: an exclusive name has one holder and no shared ones;
- concurrency limits respected: global, per project (``max_concurrent`` or the
  config's default) and per model;
- every attempt has exactly one outcome: no end for an unknown or already ended
  attempt, none open when an orchestrator starts (recovery interrupts them), stops
  cleanly, or when a settled run ends; a resumed attempt continues an interrupted
  one of the same task.

A rollback (``RolledBack``) replaces tasks by a snapshot's on purpose: the shadow
adopts the rolled-back state, and only an attempt dropped without an outcome is a
violation.

``check_no_deadlock`` is the liveness half, for the simulator: after ``decide``, if a
ready task could run (free slot, free locks, limits allow) the decision must
dispatch something. Each check costs O(1) per event apart from the resources of the
attempt at hand; the whole-state checks run once, in ``finish``. Rejected
alternative: re-deriving everything from the state after each event, which is
O(tasks) per event and would make ``tc verify`` quadratic on long journals.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable

from trafficcontrol.domain.decide import (
    Decision,
    DeferTask,
    Dispatch,
    SchedulerConfig,
    route_for,
    task_resources,
)
from trafficcontrol.domain.events import (
    AnyEvent,
    AttemptAdopted,
    AttemptDispatched,
    AttemptFinished,
    BacklogSubmitted,
    OrchestratorStarted,
    OrchestratorStopped,
    RolledBack,
    TaskRetryRequested,
    TaskSplit,
)
from trafficcontrol.domain.interrupts import resumable
from trafficcontrol.domain.model import (
    AttemptId,
    Outcome,
    ProjectId,
    ProjectSpec,
    TaskId,
    TaskSpec,
    TaskState,
    lock_name,
)
from trafficcontrol.domain.state import State, apply, copy_run, model_key
from trafficcontrol.domain.workflows import StepOutcome, WorkflowRun, WorkflowSpec, advance
from trafficcontrol.domain.workflows import start as start_workflow

_BLOCKING = (TaskState.FAILED, TaskState.CANCELLED, TaskState.PENDING)


class InvariantChecker:
    """Feed it every event of a journal in order; read ``violations``."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.violations: list[str] = []
        self.seq = 0
        """Sequence number of the last event seen (the journal's numbering, from 1)."""
        self._projects: dict[ProjectId, ProjectSpec] = {}
        self._tasks: dict[TaskId, TaskSpec] = {}
        self._open: dict[AttemptId, AttemptDispatched] = {}
        self._open_by_task: dict[TaskId, AttemptId] = {}
        self._ended: dict[AttemptId, tuple[TaskId, Outcome]] = {}
        self._succeeded: dict[TaskId, AttemptId] = {}
        self._workflows: dict[str, WorkflowSpec] = {}
        self._runs: dict[TaskId, WorkflowRun] = {}
        """Shadow workflow runs: a succeeded step attempt finishes its task only when it
        completes the workflow (computed here from the events, not read from the state)."""
        self._split: dict[TaskId, list[TaskId]] = {}
        self._exclusive: dict[str, AttemptId] = {}
        self._shared: dict[str, list[AttemptId]] = {}
        self._by_project: Counter[ProjectId] = Counter()
        self._by_model: Counter[str] = Counter()
        self._touched: TaskId | None = None
        self._rolled_back = False
        self._adopted: set[AttemptId] = set()
        """Attempts adopted since the last orchestrator start (they may stay open)."""

    # -- feeding ---------------------------------------------------------------------
    def on_event(self, event: AnyEvent) -> bool:
        """Check ``event`` against the run so far, before it is folded.

        Returns False when the event names an attempt or task nobody created, so
        folding it would fail; the caller should stop there.
        """
        self.seq += 1
        self._touched = None
        match event:
            case BacklogSubmitted():
                self._submitted(event)
            case AttemptDispatched():
                return self._dispatched(event)
            case AttemptFinished():
                return self._finished(event)
            case AttemptAdopted():
                if event.attempt_id not in self._open:
                    self._report(f"attempt {event.attempt_id} adopted but not running")
                self._adopted.add(event.attempt_id)
                return self._known_reference(event)
            case OrchestratorStarted():
                # Adopted attempts run on under the new orchestrator: nothing else may.
                self._no_open("an orchestrator started", allowed=self._adopted)
                self._adopted = set()
            case OrchestratorStopped():
                self._no_open("the orchestrator stopped", allowed=set(event.left_running))
            case RolledBack():
                self._rolled_back = True
            case TaskSplit():
                self._split[event.task_id] = list(event.children)
                return self._known_reference(event)
            case TaskRetryRequested():
                run = self._runs.get(event.task_id)
                if run is not None:
                    run.loops.clear()
                    run.reask = None
                return self._known_reference(event)
            case _:
                return self._known_reference(event)
        return True

    def on_state(self, state: State) -> None:
        """Cross-check the state folded up to the last event with the shadow."""
        if self._rolled_back:
            self._rolled_back = False
            self._adopt_rollback(state)
        if len(state.tasks) != len(self._tasks):
            lost = sorted(t for t in self._tasks if t not in state.tasks)
            self._report(f"tasks lost from the state: {', '.join(lost) or '?'}")
        if sum(state.counts.values()) != len(state.tasks):
            self._report("task counts by state do not add up to the number of tasks")
        if len(state.running) != len(self._open):
            extra = sorted(set(state.running) ^ set(self._open))
            self._report(f"the state's running attempts differ from the journal's: {extra}")
        task_id = self._touched
        if task_id is None:
            return
        record = state.tasks.get(task_id)
        if record is None:
            self._report(f"task {task_id} is lost from the state")
            return
        open_attempt = self._open_by_task.get(task_id)
        if (record.state is TaskState.RUNNING) != (open_attempt is not None):
            self._report(f"task {task_id} is {record.state} but its open attempt is {open_attempt}")
        split = bool(record.split_into)  # done by its subtasks, not by an attempt
        if not split and (record.state is TaskState.DONE) != (task_id in self._succeeded):
            self._report(
                f"task {task_id} is {record.state}, succeeded attempt:"
                f" {self._succeeded.get(task_id)}"
            )

    def observe(self, event: AnyEvent, state: State) -> bool:
        """Check ``event``, fold it into ``state``, cross-check; False if it cannot fold."""
        if not self.on_event(event):
            return False
        try:
            apply(state, event)
        # A journal that cannot be folded is a violation whatever the fold raised.
        except Exception as exc:
            self._report(f"{event_type(event)} cannot be folded: {exc!r}")
            return False
        self.on_state(state)
        return True

    def finish(self, state: State, *, settled: bool) -> list[str]:
        """Whole-state checks at the end; ``settled``: the run claims to be finished."""
        for task_id in self._tasks:
            if task_id not in state.tasks:
                self._report(f"task {task_id} is lost from the state", at_end=True)
        if settled:
            self._no_open("the run ended", at_end=True)
            for task_id, record in state.tasks.items():
                if record.state.terminal:
                    continue
                if record.state is TaskState.PENDING and any(
                    state.tasks[d].state in _BLOCKING for d in record.spec.depends_on
                ):
                    continue  # behind a failed or cancelled task (chains end at one)
                self._report(
                    f"task {task_id} is lost: the run ended with it {record.state}", at_end=True
                )
        return self.violations

    # -- the checks -------------------------------------------------------------------
    def _submitted(self, event: BacklogSubmitted) -> None:
        for workflow in event.workflows:
            self._workflows[workflow.name] = workflow
        for project in event.projects:
            self._projects[project.id] = project
        for spec in event.tasks:
            if spec.id in self._tasks:
                continue
            self._tasks[spec.id] = spec
            if spec.workflow is not None and spec.workflow in self._workflows:
                self._runs[spec.id] = start_workflow(self._workflows[spec.workflow])

    def _dispatched(self, event: AttemptDispatched) -> bool:
        attempt_id, task_id = event.attempt_id, event.task_id
        spec = self._tasks.get(task_id)
        if spec is None:
            self._report(f"attempt {attempt_id} was dispatched for unknown task {task_id}")
            return False
        self._touched = task_id
        if attempt_id in self._open or attempt_id in self._ended:
            self._report(f"attempt {attempt_id} was dispatched twice")
            return False
        if task_id in self._succeeded:
            self._report(
                f"task {task_id} was dispatched again ({attempt_id}) after attempt"
                f" {self._succeeded[task_id]} succeeded"
            )
        running = self._open_by_task.get(task_id)
        if running is not None:
            self._report(f"task {task_id} runs twice: {running} and {attempt_id}")
        for dep in spec.depends_on:
            if not self._done(dep):
                self._report(
                    f"task {task_id} was dispatched ({attempt_id}) before its dependency"
                    f" {dep} was done"
                )
        if event.resume_of is not None:
            resumed = self._ended.get(event.resume_of)
            if resumed != (task_id, Outcome.INTERRUPTED):
                self._report(
                    f"attempt {attempt_id} resumes {event.resume_of}, which is not an"
                    f" interrupted attempt of task {task_id}"
                )
        missing = [r for r in spec.resources if r not in event.resources]
        if missing:
            self._report(f"attempt {attempt_id} runs without its resources {missing}")
        self._take_locks(attempt_id, event.resources)
        self._take_slot(event, spec)
        self._open[attempt_id] = event
        self._open_by_task[task_id] = attempt_id
        return True

    def _take_locks(self, attempt_id: AttemptId, resources: Iterable[str]) -> None:
        for resource in dict.fromkeys(resources):
            name, shared = lock_name(resource)
            holder = self._exclusive.get(name)
            if holder is not None:
                self._report(
                    f"lock {name!r} is double-held: {attempt_id} took it while {holder}"
                    " holds it exclusively"
                )
            if shared:
                self._shared.setdefault(name, []).append(attempt_id)
                continue
            if self._shared.get(name):
                self._report(
                    f"lock {name!r} is double-held: {attempt_id} took it exclusively while"
                    f" {', '.join(self._shared[name])} share it"
                )
            self._exclusive.setdefault(name, attempt_id)

    def _take_slot(self, event: AttemptDispatched, spec: TaskSpec) -> None:
        config = self.config
        attempt_id = event.attempt_id
        if len(self._open) + 1 > config.max_agents:
            self._report(
                f"attempt {attempt_id} exceeds the global limit of {config.max_agents} agents"
            )
        project = self._projects.get(spec.project)
        project_limit = (project.max_concurrent if project else None) or config.per_project
        self._by_project[spec.project] += 1
        if project_limit is not None and self._by_project[spec.project] > project_limit:
            self._report(
                f"attempt {attempt_id} exceeds project {spec.project}'s limit of"
                f" {project_limit} agents"
            )
        key = model_key(event.model)
        self._by_model[key] += 1
        model_limit = config.per_model.get(key)
        if model_limit is not None and self._by_model[key] > model_limit:
            self._report(
                f"attempt {attempt_id} exceeds model {key}'s limit of {model_limit} agents"
            )

    def _finished(self, event: AttemptFinished) -> bool:
        attempt_id = event.attempt_id
        if attempt_id in self._ended:
            self._report(f"attempt {attempt_id} has a second outcome ({event.outcome})")
            return True  # apply ignores a second end, so folding on is safe
        dispatched = self._open.pop(attempt_id, None)
        if dispatched is None:
            self._report(
                f"an outcome ({event.outcome}) was journaled for unknown attempt {attempt_id}"
            )
            return False
        self._ended[attempt_id] = (dispatched.task_id, event.outcome)
        task_id = dispatched.task_id
        self._touched = task_id
        del self._open_by_task[task_id]
        for resource in dict.fromkeys(dispatched.resources):
            name, shared = lock_name(resource)
            if shared:
                holders = self._shared[name]
                holders.remove(attempt_id)
                if not holders:
                    del self._shared[name]
            elif self._exclusive.get(name) == attempt_id:
                del self._exclusive[name]
        self._by_project[self._tasks[task_id].project] -= 1
        self._by_model[model_key(dispatched.model)] -= 1
        run = self._runs.get(task_id)
        if event.outcome is Outcome.SUCCEEDED and run is not None:
            outcome = event.step_outcome or StepOutcome(error="no output")
            if advance(self._workflows[run.workflow], run, outcome).kind != "done":
                return True  # a step of the workflow, not the end of the task
        if event.outcome is Outcome.SUCCEEDED:
            first = self._succeeded.get(task_id)
            if first is not None:
                self._report(f"task {task_id} was done twice: by {first} and by {attempt_id}")
            else:
                self._succeeded[task_id] = attempt_id
        return True

    def _done(self, task_id: TaskId) -> bool:
        """Succeeded, or split and every subtask done."""
        if task_id in self._succeeded:
            return True
        children = self._split.get(task_id)
        return children is not None and all(self._done(c) for c in children)

    def _known_reference(self, event: AnyEvent) -> bool:
        """Events that name an attempt or a task must name one that exists."""
        attempt_id: AttemptId | None = getattr(event, "attempt_id", None)
        if (
            attempt_id is not None
            and attempt_id not in self._open
            and attempt_id not in self._ended
        ):
            self._report(f"{event_type(event)} names unknown attempt {attempt_id}")
            return False
        task_id: TaskId | None = getattr(event, "task_id", None)
        if task_id is not None:
            if task_id not in self._tasks:
                self._report(f"{event_type(event)} names unknown task {task_id}")
                return False
            self._touched = task_id
        return True

    def _adopt_rollback(self, state: State) -> None:
        """A rollback replaces tasks and projects by a snapshot's: so does the shadow.

        Tasks submitted after the snapshot leave the state by design (the journal
        keeps them); an attempt may only leave the running set with an outcome, so
        the shell must have stopped every attempt the rollback affects.
        """
        for attempt_id in self._open:
            if attempt_id not in state.running:
                self._report(f"the rollback dropped attempt {attempt_id} without an outcome")
        kept = {a: e for a, e in self._open.items() if a in state.running}
        self._projects = dict(state.projects)
        self._tasks = {t: r.spec for t, r in state.tasks.items()}
        self._workflows = dict(state.workflows)
        self._split = {t: list(r.split_into) for t, r in state.tasks.items() if r.split_into}
        self._runs = {
            t: copy_run(r.workflow_run)
            for t, r in state.tasks.items()
            if r.workflow_run is not None
        }
        self._succeeded = {
            t: r.attempts[-1] if r.attempts else AttemptId("?")
            for t, r in state.tasks.items()
            if r.state is TaskState.DONE
        }
        self._open, self._open_by_task = {}, {}
        self._exclusive, self._shared = {}, {}
        self._by_project, self._by_model = Counter(), Counter()
        for attempt_id, event in kept.items():
            self._take_locks(attempt_id, event.resources)
            self._take_slot(event, self._tasks[event.task_id])
            self._open[attempt_id] = event
            self._open_by_task[event.task_id] = attempt_id

    def _no_open(
        self, when: str, *, at_end: bool = False, allowed: Collection[AttemptId] = ()
    ) -> None:
        open_ = [a for a in self._open if a not in allowed]
        if open_:
            names = ", ".join(sorted(open_))
            self._report(f"{when} with attempts that have no outcome: {names}", at_end=at_end)

    def _report(self, message: str, *, at_end: bool = False) -> None:
        where = "at the end" if at_end else f"at seq {self.seq}"
        self.violations.append(f"{where}: {message}")


def event_type(event: AnyEvent) -> str:
    return str(event.__struct_config__.tag)


def check_no_deadlock(
    state: State, decision: Decision, config: SchedulerConfig, now: float = 0.0
) -> list[str]:
    """A violation when a ready task could run and ``decision`` dispatches nothing.

    Locks and slots are counted from the running attempts, not from the state's lock
    table or counters. Reads the ready heap (live entries) to stay O(ready).
    """
    if any(isinstance(c, Dispatch | DeferTask) for c in decision.commands):
        return []
    if state.capacity.limited and state.running:
        return []  # capacity held by running attempts may be what keeps ready work back
    if state.resilience.degraded():
        return []  # an open breaker keeps work back until its probe interval passes
    if len(state.running) >= config.max_agents or not state.counts[TaskState.READY]:
        return []
    exclusive: set[str] = set()
    shared: set[str] = set()
    by_project: Counter[ProjectId] = Counter()
    by_model: Counter[str] = Counter()
    for attempt in state.running.values():
        by_project[state.tasks[attempt.task_id].spec.project] += 1
        by_model[model_key(attempt.model)] += 1
        for resource in attempt.resources:
            name, is_shared = lock_name(resource)
            (shared if is_shared else exclusive).add(name)
    for _rank, _score, order, task_id in sorted(state.ready):
        if not state.is_ready_entry(order, task_id):
            continue
        spec = state.tasks[task_id].spec
        if spec.split and config.lead_splits:
            continue  # waits for the lead, not for a slot
        project = state.projects[spec.project]
        limit = project.max_concurrent or config.per_project
        if limit is not None and by_project[project.id] >= limit:
            continue
        resumed = resumable(state, task_id)
        backend = resumed.backend if resumed else spec.agent or project.agent
        key = model_key(route_for(state, task_id, backend, resumed, now, config).model)
        model_limit = config.per_model.get(key)
        if model_limit is not None and by_model[key] >= model_limit:
            continue
        blocked = False
        for resource in task_resources(state, task_id):
            name, is_shared = lock_name(resource)
            if name in exclusive or (not is_shared and name in shared):
                blocked = True
                break
        if not blocked:
            return [
                f"at seq {state.seq}: no progress: task {task_id} is ready, its locks are free,"
                f" {len(state.running)}/{config.max_agents} agents run and its limits allow it,"
                " but decide dispatched nothing"
            ]
    return []


def verify_journal(
    events: Iterable[AnyEvent], config: SchedulerConfig, *, settled: bool = False
) -> list[str]:
    """Every invariant violation in a journal (events in order from seq 1); [] when sound.

    ``settled``: the run is over, so no attempt may be open and no task stranded.
    """
    checker = InvariantChecker(config)
    state = State()
    for event in events:
        if not checker.observe(event, state):
            checker.violations.append(f"at seq {checker.seq}: stopped checking here")
            return checker.violations
    return checker.finish(state, settled=settled)
