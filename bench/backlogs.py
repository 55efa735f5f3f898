"""Builders the simulated benchmarks share: a weighted pick and the virtual project's tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from trafficcontrol.domain.model import (
    AgentSettings,
    ProjectId,
    ProjectSpec,
    SimSettings,
    TaskId,
    TaskSpec,
)
from trafficcontrol.domain.requests import SubmitRequest

T = TypeVar("T")

PROJECT_ID = ProjectId("p")


def pick(roll: float, choices: Sequence[tuple[T, float]], default: T) -> T:
    """The choice whose share ``roll`` (in [0, 1)) falls in; ``default`` past their sum."""
    for value, share in choices:
        if roll < share:
            return value
        roll -= share
    return default


def sim_task(i: int, prompt: str, sim: SimSettings, **fields: Any) -> TaskSpec:
    """Task ``t{i:04}`` of the virtual project, run by a simulated agent."""
    return TaskSpec(
        id=TaskId(f"t{i:04}"),
        project=PROJECT_ID,
        title=f"task {i}",
        prompt=prompt,
        settings=AgentSettings(sim=sim),
        **fields,
    )


def sim_backlog(tasks: list[TaskSpec], *, model: str | None = None, **fields: Any) -> SubmitRequest:
    """``tasks`` with the virtual git project (simulated agents) they belong to."""
    project = ProjectSpec(id=PROJECT_ID, path="/virtual/p", is_git=True, agent="sim", model=model)
    return SubmitRequest(source="bench", projects=[project], tasks=tasks, **fields)
