"""``decide(state, now, config)``: what the shell should do next. Pure.

Design note. The scheduler reads the ready set in order — first any task that has
been ready longer than ``starvation_after_s`` (oldest first), then the heap by
(priority, -score, FIFO) — and dispatches each task whose locks are free and whose
project and model are under their limits, until the global limit is reached. Tasks
it skips stay where they are for the next pass. When every agent slot is taken it
returns at once, so the cost of a pass is O(k log n) for the k tasks it reads and
O(1) when the pool is full. Rejected alternative: strict priority alone, which
starves low priorities under a steady stream of urgent work.

Commands are intents: the shell journals each one (``AttemptDispatched``,
``AttemptStopRequested``, ``TaskWoken``) before acting on it, and the fold of that
event is what keeps ``decide`` from issuing it again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import msgspec

from trafficcontrol.domain.breakers import BreakerState, key_for
from trafficcontrol.domain.capacity.enforce import Refusal, RefusalReason
from trafficcontrol.domain.capacity.families import ModelFamily, model_family
from trafficcontrol.domain.capacity.limits import LimitCorrection
from trafficcontrol.domain.capacity.routing import Route, RoutingPolicy, route, shift_down
from trafficcontrol.domain.capacity.warnings import CapacityWarning
from trafficcontrol.domain.capacity.windows import Window, windows_for
from trafficcontrol.domain.heaps import iter_sorted
from trafficcontrol.domain.interrupts import resumable
from trafficcontrol.domain.locks import TentativeLocks
from trafficcontrol.domain.model import (
    AttemptId,
    ProjectId,
    StopReason,
    TaskId,
    TaskState,
    base_backend,
)
from trafficcontrol.domain.records import AttemptRecord
from trafficcontrol.domain.rotation import RotationConfig, rotation_stops
from trafficcontrol.domain.state import State, model_key, task_size
from trafficcontrol.domain.workflows import ROUTE


class SchedulerConfig(msgspec.Struct, frozen=True, kw_only=True):
    max_agents: int = 10
    """Agents running at once, over all projects and models."""
    per_model: dict[str, int] = msgspec.field(default_factory=dict)
    """At most this many agents at once per model name ("default" for unset models)."""
    per_project: int | None = None
    """Default limit per project when the project sets none."""
    starvation_after_s: float = 3600.0
    """A task ready for this long goes before higher priorities."""
    default_backend: str = "sim"
    routing: RoutingPolicy = msgspec.field(default_factory=RoutingPolicy)
    routed_backends: tuple[str, ...] = ("claude", "api", "sim")
    """Backends that take a model name; others get a model only when a task pins one."""
    capacity_scan: int = 256
    """Ready tasks one pass may find refused by capacity before it stops looking."""
    lead_splits: bool = False
    """A lead agent runs: tasks marked ``split`` wait for it instead of an agent."""
    rotation: RotationConfig = msgspec.field(default_factory=RotationConfig)
    """When a worker's session is rotated (``domain.rotation``)."""


class Dispatch(msgspec.Struct, frozen=True):
    task_id: TaskId
    attempt_id: AttemptId
    attempt_no: int
    backend: str
    model: str | None
    resources: tuple[str, ...]
    deadline: float | None
    resume_of: AttemptId | None = None
    expected_units: float | None = None
    route: str | None = None
    step: str | None = None


class DeferTask(msgspec.Struct, frozen=True):
    """Journal that a ready task waits for capacity until ``until``."""

    task_id: TaskId
    until: float
    reason: str


class CorrectLimit(msgspec.Struct, frozen=True):
    correction: LimitCorrection


class Warn(msgspec.Struct, frozen=True):
    warning: CapacityWarning


class ChangeBreaker(msgspec.Struct, frozen=True):
    key: str
    state: BreakerState
    reason: str


class StopAttempt(msgspec.Struct, frozen=True):
    attempt_id: AttemptId
    reason: StopReason


class WakeTask(msgspec.Struct, frozen=True):
    task_id: TaskId


Command = Dispatch | StopAttempt | WakeTask | DeferTask | CorrectLimit | Warn | ChangeBreaker


class Decision(msgspec.Struct, frozen=True):
    commands: list[Command]
    next_wakeup: float | None
    """Call ``decide`` again at this time even if no event arrives."""


def attempt_id_for(task_id: TaskId, attempt_no: int) -> AttemptId:
    return AttemptId(f"{task_id}#{attempt_no}")


def _candidates(state: State, now: float, config: SchedulerConfig) -> Iterator[TaskId]:
    starving_before = now - config.starvation_after_s
    for ready_at, order, task_id in state.aging:
        if ready_at > starving_before:
            break
        if state.is_ready_entry(order, task_id):
            yield task_id
    for _rank, _score, order, task_id in iter_sorted(state.ready):
        if state.is_ready_entry(order, task_id):
            yield task_id


def task_resources(state: State, task_id: TaskId) -> tuple[str, ...]:
    """The task's resources plus the implicit lock on a project that runs in place."""
    spec = state.tasks[task_id].spec
    project = state.projects[spec.project]
    if not project.is_git and project.lock_in_place:
        return (*spec.resources, f"project:{project.id}")
    return spec.resources


def route_for(
    state: State,
    task_id: TaskId,
    backend: str,
    resumed: AttemptRecord | None,
    now: float,
    config: SchedulerConfig,
) -> Route:
    """The model of the task's next attempt and why (see ``capacity.routing``)."""
    record = state.tasks[task_id]
    spec = record.spec
    project = state.projects[spec.project]
    capacity = state.capacity
    pinned, pinned_by = spec.model, "task"
    if pinned is None and project.model is not None:
        pinned, pinned_by = project.model, f"project {project.id}"
    if resumed is not None:
        pinned, pinned_by = resumed.model, f"the interrupted attempt {resumed.id} (same session)"
        if pinned is None:
            return Route(family=model_family(None), model=None, reason="resumed", firm=True)
    elif pinned is None and base_backend(backend) not in config.routed_backends:
        return Route(family=model_family(None), model=None, reason=f"{backend} default", firm=True)
    ratio = config.routing.scarce_ratio
    step_tier: tuple[str, ModelFamily] | None = None
    run = record.workflow_run
    if run is not None:
        tier = state.workflows[run.workflow].step(run.step).tier
        if tier != ROUTE:
            step_tier = (run.step, ModelFamily(tier))
    return route(
        pinned=pinned,
        pinned_by=pinned_by,
        difficulty=spec.difficulty,
        size=task_size(spec),
        failures=record.failures,
        policy=config.routing,
        scarce=lambda family: capacity.limited and capacity.scarce(family, now, ratio),
        step_tier=step_tier,
    )


def _refusal_words(refusal: Refusal) -> str:
    where = refusal.window.label if refusal.window is not None else "its family"
    return {
        RefusalReason.WINDOW_FULL: f"{where} window full",
        RefusalReason.RESERVED: f"{where} held by running attempts",
        RefusalReason.TOO_LARGE: f"too large for {where}",
        RefusalReason.CONCURRENCY: "at its concurrency cap",
        RefusalReason.RATE: "at its per-minute API limit",
    }[refusal.reason]


class _Pending:
    """Capacity held by the dispatches of this pass (not folded yet)."""

    def __init__(self) -> None:
        self.units: dict[Window, float] = {}
        self.active: Counter[ModelFamily] = Counter()

    def add(self, family: ModelFamily, units: float | None) -> None:
        self.active[family] += 1
        if units:
            for window in windows_for(family):
                self.units[window] = self.units.get(window, 0.0) + units


def _admitted(
    state: State,
    task_id: TaskId,
    chosen: Route,
    now: float,
    config: SchedulerConfig,
    pending: _Pending,
) -> tuple[Route, float | None, Refusal | None]:
    """The route after capacity (shifted down when refused), its expected units, or why not."""
    capacity = state.capacity
    if not capacity.limited:
        return chosen, None, None
    size = task_size(state.tasks[task_id].spec)
    while True:
        expected = capacity.expected(chosen.family, size).high_units
        refusal = capacity.admit(chosen.family, expected, now, pending.units, pending.active)
        if refusal is None:
            return chosen, expected, None
        if refusal.reason is RefusalReason.RESERVED:
            return chosen, expected, refusal  # room frees when a holder ends: wait for it
        if refusal.window is not None and refusal.window.family is None:
            # A shared window is full for every family alike: a cheaper model would only
            # squeeze in work it is not meant for; wait for the reset instead.
            return chosen, expected, refusal
        cheaper = shift_down(chosen, config.routing, _refusal_words(refusal))
        if cheaper is None:
            return chosen, expected, refusal
        chosen = cheaper


def _dispatches(state: State, now: float, config: SchedulerConfig) -> list[Command]:
    free = config.max_agents - len(state.running)
    if free <= 0 or not state.counts[TaskState.READY]:
        return []
    out: list[Command] = []
    locks = TentativeLocks(state.locks)
    by_project: dict[ProjectId, int] = {}
    by_model: dict[str, int] = {}
    pending = _Pending()
    probing: set[str] = set()
    refused = 0
    seen: set[TaskId] = set()
    for task_id in _candidates(state, now, config):
        if task_id in seen:
            continue
        seen.add(task_id)
        record = state.tasks[task_id]
        spec = record.spec
        if spec.split and config.lead_splits and record.split_into is None:
            continue  # the lead splits it
        project = state.projects[spec.project]
        project_limit = project.max_concurrent or config.per_project
        if project_limit is not None:
            running = state.running_by_project[project.id] + by_project.get(project.id, 0)
            if running >= project_limit:
                continue
        resumed = resumable(state, task_id)
        backend = resumed.backend if resumed else spec.agent or project.agent
        chosen = route_for(state, task_id, backend, resumed, now, config)
        key = model_key(chosen.model)
        model_limit = config.per_model.get(key)
        if (
            model_limit is not None
            and state.running_by_model[key] + by_model.get(key, 0) >= model_limit
        ):
            continue
        resources = task_resources(state, task_id)
        if not locks.can_take(resources):
            continue
        breaker = _breaker_route(state, backend, chosen, config, probing)
        if breaker is None:
            continue  # its backend and model are broken and it may not go elsewhere: wait
        chosen = breaker
        chosen, expected, refusal = _admitted(state, task_id, chosen, now, config, pending)
        if refusal is not None:
            waits = (RefusalReason.WINDOW_FULL, RefusalReason.RATE)
            if refusal.reason in waits and refusal.possible_at is not None:
                reason = f"capacity: {chosen.family.value} {_refusal_words(refusal)}"
                out.append(DeferTask(task_id, refusal.possible_at, reason))
            refused += 1
            if refused >= config.capacity_scan:
                break
            continue
        locks.try_take(resources)
        if state.resilience.breakers:
            breaker_key = key_for(backend, chosen.family.value)
            if state.resilience.is_probe(breaker_key):
                probing.add(breaker_key)
        key = model_key(chosen.model)
        by_project[project.id] = by_project.get(project.id, 0) + 1
        by_model[key] = by_model.get(key, 0) + 1
        pending.add(chosen.family, expected)
        no = len(record.attempts) + 1
        timeout = spec.timeout_s if spec.timeout_s is not None else project.timeout_s
        run = record.workflow_run
        step = state.workflows[run.workflow].step(run.step) if run is not None else None
        if step is not None and step.timeout_s is not None:
            timeout = step.timeout_s
        out.append(
            Dispatch(
                task_id=task_id,
                attempt_id=attempt_id_for(task_id, no),
                attempt_no=no,
                backend=backend,
                model=chosen.model,
                resources=resources,
                deadline=None if timeout is None else now + timeout,
                resume_of=resumed.id if resumed else None,
                expected_units=expected,
                route=chosen.reason,
                step=step.name if step is not None else None,
            )
        )
        free -= 1
        if free == 0:
            break
    return out


def _breaker_route(
    state: State, backend: str, chosen: Route, config: SchedulerConfig, probing: set[str]
) -> Route | None:
    """``chosen``, or a tier down when its breaker is open; None: nowhere to go now."""
    resilience = state.resilience
    if not resilience.breakers:
        return chosen
    while True:
        key = key_for(backend, chosen.family.value)
        why = resilience.blocked(key, probing)
        if why is None:
            return chosen
        cheaper = shift_down(chosen, config.routing, why.replace(f"breaker {key} ", "breaker "))
        if cheaper is None:
            return None
        chosen = cheaper


def _resilience_commands(state: State, now: float) -> list[Command]:
    if not state.resilience.breakers:
        return []
    return [ChangeBreaker(k, new, why) for k, new, why in state.resilience.due(now)]


def _capacity_commands(state: State, now: float) -> list[Command]:
    capacity = state.capacity
    if not capacity.limited:
        return []
    out: list[Command] = [CorrectLimit(c) for c in capacity.hit_corrections()]
    out.extend(CorrectLimit(c) for c in capacity.probes(now))
    out.extend(Warn(w) for w in capacity.warnings_due(now))
    return out


def decide(state: State, now: float, config: SchedulerConfig) -> Decision:
    commands: list[Command] = []
    next_wakeup: float | None = None

    for retry_at, task_id in iter_sorted(state.waiting):
        record = state.tasks[task_id]
        if record.state is not TaskState.WAITING or record.retry_at != retry_at:
            continue
        if retry_at > now:
            next_wakeup = retry_at
            break
        commands.append(WakeTask(task_id))

    for deadline, attempt_id in iter_sorted(state.deadlines):
        attempt = state.running.get(attempt_id)
        if attempt is None or attempt.stop_reason is not None or attempt_id in state.stops_wanted:
            continue  # gone, already stopping, or stopping as cancelled below
        if deadline > now:
            next_wakeup = deadline if next_wakeup is None else min(next_wakeup, deadline)
            break
        commands.append(StopAttempt(attempt_id, StopReason.TIMEOUT))

    for attempt_id in sorted(state.stops_wanted):
        commands.append(StopAttempt(attempt_id, StopReason.CANCELLED))

    rotations = rotation_stops(state, config.rotation)
    if rotations:
        stopping = {c.attempt_id for c in commands if isinstance(c, StopAttempt)}
        for attempt_id in rotations:
            if attempt_id not in stopping:  # timed out in this pass: one stop each
                commands.append(StopAttempt(attempt_id, StopReason.ROTATE))

    commands.extend(_capacity_commands(state, now))
    commands.extend(_resilience_commands(state, now))
    commands.extend(_dispatches(state, now, config))
    breaker_at = state.resilience.next_wakeup() if state.resilience.breakers else None
    if breaker_at is not None and breaker_at > now:
        next_wakeup = breaker_at if next_wakeup is None else min(next_wakeup, breaker_at)

    if state.aging and state.counts[TaskState.READY]:
        promote_at = state.aging[0][0] + config.starvation_after_s
        if promote_at > now:
            next_wakeup = promote_at if next_wakeup is None else min(next_wakeup, promote_at)
    return Decision(commands=commands, next_wakeup=next_wakeup)
