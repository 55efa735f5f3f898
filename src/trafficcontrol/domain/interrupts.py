"""What an interrupted attempt leads to: restart, resume, continue or fail. Pure.

An attempt is interrupted when the orchestrator stops it on shutdown or dies while
it runs (the next start journals it as interrupted). Resuming hands the interrupted
attempt's worktree to the next attempt of the same task, with its session. A session
rotated on purpose (``StopReason.ROTATE``, ``domain.rotation``) is never resumed: the
next attempt *continues* it — same worktree, fresh session, the handoff in its prompt.
Those are the only cases where a worktree passes from one attempt to another, on
purpose, to keep the work done.
"""

from __future__ import annotations

from trafficcontrol.domain.failures import FailureClass
from trafficcontrol.domain.model import (
    AgentSettings,
    AttemptId,
    OnInterrupt,
    Outcome,
    StopReason,
    TaskId,
)
from trafficcontrol.domain.records import AttemptRecord
from trafficcontrol.domain.state import State, interrupt_policy

_PROVIDER_TROUBLE = (FailureClass.TRANSIENT, FailureClass.INFRASTRUCTURE)


def settings_of(state: State, task_id: TaskId) -> AgentSettings:
    """The task's agent settings over its project's."""
    spec = state.tasks[task_id].spec
    project = state.projects[spec.project]
    return project.settings if spec.settings is None else spec.settings.over(project.settings)


def resumable(state: State, task_id: TaskId) -> AttemptRecord | None:
    """The interrupted attempt the task's next attempt should continue, if any."""
    record = state.tasks[task_id]
    if not record.attempts:
        return None
    last = state.attempts[record.attempts[-1]]
    if last.workdir is None:
        return None
    if last.stop_reason is StopReason.ROTATE and last.outcome is Outcome.INTERRUPTED:
        return None  # its history is what had to go: a fresh session continues it
    if last.outcome is Outcome.FAILED and last.failure_class in _PROVIDER_TROUBLE:
        # The provider failed, not the work: continue the same session where it stopped.
        return last if last.backend == "claude" and last.session_id is not None else None
    if last.outcome is not Outcome.INTERRUPTED:
        return None
    if interrupt_policy(state, task_id, last.backend) is not OnInterrupt.RESUME:
        return None
    if last.backend == "claude" and last.session_id is not None:
        return last
    if last.backend == "command" and settings_of(state, task_id).resume_command:
        return last
    return None


def continues(state: State, attempt_id: AttemptId) -> AttemptRecord | None:
    """The rotated attempt whose worktree and handoff ``attempt_id`` carries on in a fresh
    session: the task's attempt just before it, when that one ended interrupted after a
    rotation stop (crash recovery included) in a worktree."""
    attempt = state.attempts[attempt_id]
    if attempt.resume_of is not None:
        return None  # a resumed session already has its history
    attempts = state.tasks[attempt.task_id].attempts
    at = attempts.index(attempt_id)
    if at == 0:
        return None
    previous = state.attempts[attempts[at - 1]]
    rotated = previous.stop_reason is StopReason.ROTATE
    if rotated and previous.outcome is Outcome.INTERRUPTED and previous.workdir is not None:
        return previous
    return None
