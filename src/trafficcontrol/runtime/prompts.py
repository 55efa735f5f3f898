"""The prompt an attempt starts with.

Design note. A fresh attempt gets the task's prompt, plus the lead's note and, when the
work itself failed last time (class task), that failure, so it is not repeated; a
resumed attempt gets the bare prompt (its session already holds the rest); a workflow
step gets its step's prompt (``domain.workflows.first_prompt``). A rotated session's
handoff is added by the pool (``domain.rotation.with_handoff``) once it has one. These
are pure functions of the state, apart from the pool so that the pool only runs agents
and the prompts can be read and tested on their own.
"""

from __future__ import annotations

from trafficcontrol.domain.failures import FailureClass
from trafficcontrol.domain.model import Outcome, TaskId
from trafficcontrol.domain.state import State
from trafficcontrol.domain.workflows import StepSpec, first_prompt


def step_of(state: State, task_id: TaskId, step: str | None) -> StepSpec | None:
    run = state.tasks[task_id].workflow_run
    if step is None or run is None:
        return None
    return state.workflows[run.workflow].step(step)


def with_feedback(state: State, task_id: TaskId) -> str:
    """The task's prompt, plus what went wrong last time when the work itself failed
    (class task): the next attempt should not repeat it."""
    record = state.tasks[task_id]
    prompt = record.spec.prompt
    if record.feedback:
        prompt = f"{prompt}\n\nBefore this attempt, the lead noted: {record.feedback}"
    previous = [state.attempts[a] for a in record.attempts[:-1]]
    if not previous:
        return prompt
    last = previous[-1]
    if last.outcome is not Outcome.FAILED or last.failure_class is not FailureClass.TASK:
        return prompt
    error = (last.error or "it did not succeed")[:2000]
    return (
        f"{prompt}\n\nA previous attempt at this task (attempt {last.no}) failed: {error}\n"
        "Take that into account."
    )


def attempt_prompt(state: State, task_id: TaskId, step: StepSpec | None, *, resumed: bool) -> str:
    """The prompt of an attempt at ``task_id`` (``step``: its workflow step, if any)."""
    spec = state.tasks[task_id].spec
    prompt = spec.prompt if resumed else with_feedback(state, task_id)
    if step is not None:
        run = state.tasks[task_id].workflow_run
        assert run is not None
        prompt = first_prompt(state.workflows[run.workflow], run, spec.title, spec.prompt, step)
    return prompt
