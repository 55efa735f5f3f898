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

from collections.abc import Iterator

import msgspec

from trafficcontrol.domain.heaps import iter_sorted
from trafficcontrol.domain.interrupts import resumable
from trafficcontrol.domain.locks import TentativeLocks
from trafficcontrol.domain.model import AttemptId, ProjectId, StopReason, TaskId, TaskState
from trafficcontrol.domain.state import State, model_key


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


class Dispatch(msgspec.Struct, frozen=True):
    task_id: TaskId
    attempt_id: AttemptId
    attempt_no: int
    backend: str
    model: str | None
    resources: tuple[str, ...]
    deadline: float | None
    resume_of: AttemptId | None = None


class StopAttempt(msgspec.Struct, frozen=True):
    attempt_id: AttemptId
    reason: StopReason


class WakeTask(msgspec.Struct, frozen=True):
    task_id: TaskId


Command = Dispatch | StopAttempt | WakeTask


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


def _dispatches(state: State, now: float, config: SchedulerConfig) -> list[Command]:
    free = config.max_agents - len(state.running)
    if free <= 0 or not state.counts[TaskState.READY]:
        return []
    out: list[Command] = []
    locks = TentativeLocks(state.locks)
    by_project: dict[ProjectId, int] = {}
    by_model: dict[str, int] = {}
    seen: set[TaskId] = set()
    for task_id in _candidates(state, now, config):
        if task_id in seen:
            continue
        seen.add(task_id)
        record = state.tasks[task_id]
        spec = record.spec
        project = state.projects[spec.project]
        project_limit = project.max_concurrent or config.per_project
        if project_limit is not None:
            running = state.running_by_project[project.id] + by_project.get(project.id, 0)
            if running >= project_limit:
                continue
        model = spec.model or project.model
        key = model_key(model)
        model_limit = config.per_model.get(key)
        if (
            model_limit is not None
            and state.running_by_model[key] + by_model.get(key, 0) >= model_limit
        ):
            continue
        resources = task_resources(state, task_id)
        if not locks.try_take(resources):
            continue
        by_project[project.id] = by_project.get(project.id, 0) + 1
        by_model[key] = by_model.get(key, 0) + 1
        no = len(record.attempts) + 1
        timeout = spec.timeout_s if spec.timeout_s is not None else project.timeout_s
        resumed = resumable(state, task_id)
        out.append(
            Dispatch(
                task_id=task_id,
                attempt_id=attempt_id_for(task_id, no),
                attempt_no=no,
                backend=resumed.backend if resumed else spec.agent or project.agent,
                model=model,
                resources=resources,
                deadline=None if timeout is None else now + timeout,
                resume_of=resumed.id if resumed else None,
            )
        )
        free -= 1
        if free == 0:
            break
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

    commands.extend(_dispatches(state, now, config))

    if state.aging and state.counts[TaskState.READY]:
        promote_at = state.aging[0][0] + config.starvation_after_s
        if promote_at > now:
            next_wakeup = promote_at if next_wakeup is None else min(next_wakeup, promote_at)
    return Decision(commands=commands, next_wakeup=next_wakeup)
