"""Validation of a submission against the current state. Pure.

A submission is accepted whole or refused whole; this module lists every problem
so the user fixes them in one go. Path checks and file syntax belong to the edge
that read the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from trafficcontrol.domain.model import ProjectId, ProjectSpec, TaskId, TaskSpec, lock_name
from trafficcontrol.domain.state import State


def find_cycle(graph: Mapping[TaskId, Iterable[TaskId]]) -> list[TaskId] | None:
    """A dependency cycle as a path that ends where it starts, or None. Iterative DFS."""
    white, grey, black = 0, 1, 2
    colour: dict[TaskId, int] = dict.fromkeys(graph, white)
    for root in graph:
        if colour[root] != white:
            continue
        path: list[TaskId] = [root]
        stack = [iter(graph[root])]
        colour[root] = grey
        while stack:
            advanced = False
            for dep in stack[-1]:
                if dep not in colour:
                    continue  # a task already in the state: it cannot depend on new ones
                if colour[dep] == grey:
                    return [*path[path.index(dep) :], dep]
                if colour[dep] == white:
                    colour[dep] = grey
                    path.append(dep)
                    stack.append(iter(graph[dep]))
                    advanced = True
                    break
            if not advanced:
                colour[path.pop()] = black
                stack.pop()
    return None


def validate_submission(
    state: State, projects: list[ProjectSpec], tasks: list[TaskSpec]
) -> tuple[list[str], list[ProjectSpec], list[TaskSpec]]:
    """Problems found, plus the projects and tasks that are new (resubmission is a no-op)."""
    problems: list[str] = []
    new_projects: list[ProjectSpec] = []
    seen_projects: dict[ProjectId, ProjectSpec] = {}
    for project in projects:
        if project.id in seen_projects:
            problems.append(f"project {project.id!r} is defined twice")
            continue
        seen_projects[project.id] = project
        known = state.projects.get(project.id)
        if known is None:
            new_projects.append(project)
        elif known != project:
            problems.append(
                f"project {project.id!r} already exists with a different definition"
                f" (path {known.path})"
            )
        if project.max_concurrent is not None and project.max_concurrent < 1:
            problems.append(f"project {project.id!r}: max_concurrent must be at least 1")
        if project.max_attempts < 1:
            problems.append(f"project {project.id!r}: max_attempts must be at least 1")

    new_tasks: list[TaskSpec] = []
    seen_tasks: dict[TaskId, TaskSpec] = {}
    for task in tasks:
        where = f"task {task.id!r}"
        if task.id in seen_tasks:
            problems.append(f"{where} is defined twice")
            continue
        seen_tasks[task.id] = task
        known_task = state.tasks.get(task.id)
        if known_task is not None:
            if known_task.spec != task:
                problems.append(f"{where} already exists with a different definition")
            continue
        new_tasks.append(task)
        if not task.id or any(c.isspace() for c in task.id) or "#" in task.id:
            problems.append(f"{where}: ids must be non-empty, without spaces or '#'")
        if task.project not in seen_projects and task.project not in state.projects:
            problems.append(f"{where}: unknown project {task.project!r}")
        modes: dict[str, bool] = {}
        for resource in task.resources:
            name, shared = lock_name(resource)
            if not name or any(c.isspace() for c in name):
                problems.append(f"{where}: bad resource name {resource!r}")
            elif modes.setdefault(name, shared) != shared:
                problems.append(f"{where}: resource {name!r} is named both exclusive and shared")
        if task.max_attempts is not None and task.max_attempts < 1:
            problems.append(f"{where}: max_attempts must be at least 1")
        if task.timeout_s is not None and task.timeout_s <= 0:
            problems.append(f"{where}: timeout must be positive")

    new_ids = {t.id for t in new_tasks}
    for task in new_tasks:
        for dep in task.depends_on:
            if dep not in new_ids and dep not in state.tasks:
                problems.append(f"task {task.id!r} depends on unknown task {dep!r}")
    cycle = find_cycle({t.id: t.depends_on for t in new_tasks})
    if cycle is not None:
        problems.append("dependency cycle: " + " -> ".join(cycle))
    return problems, new_projects, new_tasks
