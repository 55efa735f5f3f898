"""Submission checks: ``plan_submit``, ``validate_submission`` and ``find_cycle``."""

from __future__ import annotations

from typing import Any

import pytest

from tests.domain_driver import canonical
from trafficcontrol.domain.backlog import find_cycle, validate_submission
from trafficcontrol.domain.events import AttemptDispatched, AttemptFinished, BacklogSubmitted
from trafficcontrol.domain.model import (
    AttemptId,
    Outcome,
    ProjectId,
    ProjectSpec,
    TaskId,
    TaskSpec,
    TaskState,
)
from trafficcontrol.domain.requests import SubmitRequest, plan_submit
from trafficcontrol.domain.state import State, apply
from trafficcontrol.errors import BacklogError, TrafficControlError

API = ProjectSpec(id=ProjectId("api"), path="/virtual/api", is_git=True)


def task(task_id: str, *deps: str, **fields: Any) -> TaskSpec:
    fields.setdefault("project", API.id)
    fields.setdefault("prompt", "do it")
    return TaskSpec(
        id=TaskId(task_id), title=task_id, depends_on=tuple(TaskId(d) for d in deps), **fields
    )


def request(*tasks: TaskSpec, projects: tuple[ProjectSpec, ...] = (API,)) -> SubmitRequest:
    return SubmitRequest(source="backlog.toml", projects=list(projects), tasks=list(tasks))


def refused(state: State, req: SubmitRequest) -> list[str]:
    """The problems of a refused submission; checks the state did not move."""
    before = canonical(state)
    with pytest.raises(BacklogError) as caught:
        plan_submit(state, req, 10.0)
    assert canonical(state) == before
    assert caught.value.message == "backlog.toml: submission refused"
    assert isinstance(caught.value, TrafficControlError)
    return caught.value.problems


def accepted(state: State, req: SubmitRequest, at: float = 0.0) -> BacklogSubmitted:
    event = plan_submit(state, req, at)
    assert event is not None
    apply(state, event)
    return event


@pytest.fixture
def state() -> State:
    """A state that already holds project ``api`` and tasks ``base`` (done) and ``open``."""
    state = State()
    accepted(state, request(task("base"), task("open", "base")))
    apply(
        state,
        AttemptDispatched(
            at=1.0,
            attempt_id=AttemptId("base#1"),
            task_id=TaskId("base"),
            attempt_no=1,
            backend="sim",
            model=None,
            resources=(),
            deadline=None,
            log_path="/virtual/base#1.jsonl",
        ),
    )
    apply(state, AttemptFinished(at=2.0, attempt_id=AttemptId("base#1"), outcome=Outcome.SUCCEEDED))
    return state


# -- accepted ------------------------------------------------------------------------------
def test_a_valid_submission_becomes_one_event_with_everything_in_it() -> None:
    state = State()
    req = request(task("a"), task("b", "a"), task("c", "a", "b"))
    event = plan_submit(state, req, 5.0)
    assert event == BacklogSubmitted(
        at=5.0, source="backlog.toml", projects=[API], tasks=list(req.tasks)
    )
    assert state.tasks == {}  # planning applies nothing


def test_resubmitting_the_same_backlog_is_a_no_op(state: State) -> None:
    before = canonical(state)
    assert plan_submit(state, request(task("base"), task("open", "base")), 10.0) is None
    assert plan_submit(state, request(), 10.0) is None
    assert canonical(state) == before


def test_a_resubmission_with_new_tasks_carries_only_the_new_ones(state: State) -> None:
    event = accepted(state, request(task("base"), task("new", "base", "open")), at=10.0)
    assert event.projects == [] and [t.id for t in event.tasks] == ["new"]
    assert state.tasks[TaskId("new")].unfinished_deps == 1  # "open" is not done, "base" is
    assert state.tasks[TaskId("new")].state is TaskState.PENDING


# -- refused -------------------------------------------------------------------------------
def test_duplicate_task_id() -> None:
    assert refused(State(), request(task("a"), task("a"))) == ["task 'a' is defined twice"]


def test_duplicate_project_id() -> None:
    other = ProjectSpec(id=API.id, path="/virtual/elsewhere")
    assert refused(State(), request(task("a"), projects=(API, other))) == [
        "project 'api' is defined twice"
    ]


def test_unknown_dependency_names_the_task_and_the_missing_id() -> None:
    assert refused(State(), request(task("a"), task("b", "a", "ghost"))) == [
        "task 'b' depends on unknown task 'ghost'"
    ]


def test_a_cycle_is_named_as_a_path() -> None:
    problems = refused(State(), request(task("a", "b"), task("b", "c"), task("c", "a"), task("d")))
    assert problems == ["dependency cycle: a -> b -> c -> a"]


def test_a_self_dependency_is_a_cycle() -> None:
    assert refused(State(), request(task("a", "a"))) == ["dependency cycle: a -> a"]


def test_unknown_project() -> None:
    assert refused(State(), request(task("a", project=ProjectId("nope")))) == [
        "task 'a': unknown project 'nope'"
    ]


def test_a_project_known_to_the_state_may_be_left_out(state: State) -> None:
    event = accepted(state, request(task("later"), projects=()), at=10.0)
    assert [t.id for t in event.tasks] == ["later"]


@pytest.mark.parametrize("bad", ["has space", "a#1", "", "-leading", "x" * 129, "a/b"])
def test_bad_task_ids(bad: str) -> None:
    problems = refused(State(), request(task(bad)))
    assert f"task id {bad!r}: use letters, digits, '.', '_', '-'" in problems


def test_bad_project_id() -> None:
    bad = ProjectSpec(id=ProjectId("my project"), path="/virtual/x")
    problems = refused(State(), request(task("a", project=bad.id), projects=(bad,)))
    assert problems == ["project id 'my project': use letters, digits, '.', '_', '-'"]


def test_unknown_agent_on_a_project_and_on_a_task() -> None:
    gpt = ProjectSpec(id=ProjectId("p"), path="/virtual/p", agent="gpt")
    problems = refused(State(), request(task("a", project=gpt.id, agent="codex"), projects=(gpt,)))
    known = "one of api, claude, command, sim, each also as NAME@workers"
    assert problems == [
        f"project 'p': unknown agent 'gpt' ({known})",
        f"task 'a': unknown agent 'codex' ({known})",
    ]


def test_bad_limits_and_resources() -> None:
    problems = refused(
        State(),
        request(
            task("a", max_attempts=0, timeout_s=0.0, resources=("ok", ":shared", "two words")),
            projects=(ProjectSpec(id=API.id, path=API.path, max_concurrent=0, max_attempts=0),),
        ),
    )
    assert problems == [
        "project 'api': max_concurrent must be at least 1",
        "project 'api': max_attempts must be at least 1",
        "task 'a': bad resource name ':shared'",
        "task 'a': bad resource name 'two words'",
        "task 'a': max_attempts must be at least 1",
        "task 'a': timeout must be positive",
    ]


def test_the_same_task_id_with_another_definition_is_refused(state: State) -> None:
    changed = task("open", "base", prompt="something else")
    assert refused(state, request(changed)) == [
        "task 'open' already exists with a different definition"
    ]


def test_the_same_project_id_with_another_definition_is_refused(state: State) -> None:
    moved = ProjectSpec(id=API.id, path="/virtual/moved", is_git=True)
    assert refused(state, request(projects=(moved,))) == [
        "project 'api' already exists with a different definition (path /virtual/api)"
    ]


def test_every_problem_is_listed_and_nothing_is_applied(state: State) -> None:
    problems = refused(
        state,
        request(
            task("fine"),
            task("open", prompt="changed"),
            task("x", "ghost"),
            task("y", "y"),
            task("z", project=ProjectId("nope")),
        ),
    )
    assert problems == [
        "task 'open' already exists with a different definition",
        "task 'z': unknown project 'nope'",
        "task 'x' depends on unknown task 'ghost'",
        "dependency cycle: y -> y",
    ]
    assert TaskId("fine") not in state.tasks


def test_a_resource_named_both_exclusive_and_shared_is_refused() -> None:
    problems = refused(State(), request(task("a", resources=("db", "db:shared"))))
    assert problems == ["task 'a': resource 'db' is named both exclusive and shared"]


# -- validate_submission and find_cycle directly -------------------------------------------
def test_validate_submission_returns_only_what_is_new(state: State) -> None:
    problems, projects, tasks = validate_submission(
        state, [API], [task("base"), task("open", "base"), task("new")]
    )
    assert (problems, projects, [t.id for t in tasks]) == ([], [], ["new"])


def test_find_cycle() -> None:
    t = TaskId
    assert find_cycle({}) is None
    assert find_cycle({t("a"): [], t("b"): [t("a")], t("c"): [t("a"), t("b")]}) is None
    # Dependencies outside the graph (tasks already in the state) are ignored.
    assert find_cycle({t("a"): [t("outside")]}) is None
    # A diamond is not a cycle.
    diamond = {t("d"): [t("b"), t("c")], t("b"): [t("a")], t("c"): [t("a")], t("a"): []}
    assert find_cycle(diamond) is None
    cycle = find_cycle({t("x"): [], t("a"): [t("x"), t("b")], t("b"): [t("c")], t("c"): [t("b")]})
    assert cycle == ["b", "c", "b"]


def test_find_cycle_handles_a_long_chain_without_recursion() -> None:
    n = 5000
    graph = {TaskId(f"t{i}"): [TaskId(f"t{i + 1}")] for i in range(n)}
    graph[TaskId(f"t{n}")] = [TaskId("t0")]
    cycle = find_cycle(graph)
    assert cycle is not None and len(cycle) == n + 2
    assert cycle[0] == cycle[-1] == "t0"
