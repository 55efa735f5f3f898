"""What a rollback to a snapshot changes, before it is done. Pure.

``tc snapshot rollback --dry-run`` prints this plan; the real rollback first stops
the agents it lists, then journals ``RolledBack``.
"""

from __future__ import annotations

import msgspec

from trafficcontrol.domain.model import AttemptId, TaskId, TaskState
from trafficcontrol.domain.records import SnapshotData
from trafficcontrol.domain.state import State


class TaskChange(msgspec.Struct, frozen=True):
    task_id: TaskId
    before: TaskState | None
    """None: the task is not in the current state (it comes back)."""
    after: TaskState | None
    """None: the task leaves the state (submitted after the snapshot)."""


class RollbackPlan(msgspec.Struct, frozen=True):
    version: int
    snapshot_seq: int
    changes: list[TaskChange]
    stops: list[AttemptId]
    """Running attempts to stop first: their task's state or live attempt changes."""


def plan_rollback(state: State, data: SnapshotData, version: int) -> RollbackPlan:
    snapshot_tasks = {t.spec.id: t for t in data.tasks}
    stops: list[AttemptId] = []
    for attempt_id, attempt in state.running.items():
        snap = snapshot_tasks.get(attempt.task_id)
        keeps_running = (
            snap is not None
            and snap.state is TaskState.RUNNING
            and bool(snap.attempts)
            and snap.attempts[-1] == attempt_id
        )
        if not keeps_running:
            stops.append(attempt_id)
    changes: list[TaskChange] = []
    for task_id, snap in snapshot_tasks.items():
        after = snap.state
        if after is TaskState.RUNNING:
            live = state.running.get(snap.attempts[-1]) if snap.attempts else None
            if live is None:
                after = TaskState.READY
        current = state.tasks.get(task_id)
        before = current.state if current is not None else None
        if before is not after:
            changes.append(TaskChange(task_id, before, after))
    for task_id, record in state.tasks.items():
        if task_id not in snapshot_tasks:
            changes.append(TaskChange(task_id, record.state, None))
    return RollbackPlan(
        version=version, snapshot_seq=data.seq, changes=changes, stops=sorted(stops)
    )


def describe_rollback(plan: RollbackPlan) -> list[str]:
    """One line per change, for people."""
    lines = [f"stop attempt {a}" for a in plan.stops]
    for change in plan.changes:
        before = change.before.value if change.before else "(absent)"
        after = change.after.value if change.after else "(removed)"
        lines.append(f"task {change.task_id}: {before} -> {after}")
    return lines or ["no task changes"]
