"""Workflows: templates, validation, the step machine, handoffs, inheritance, the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from tests.domain_driver import canonical, replay
from trafficcontrol.adapters.workflow_files import bundled_workflows, parse_workflow
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import AttemptDispatched
from trafficcontrol.domain.model import (
    AgentSettings,
    ProjectId,
    ProjectSpec,
    SimSettings,
    TaskId,
    TaskSpec,
    TaskState,
)
from trafficcontrol.domain.requests import SubmitRequest, plan_submit
from trafficcontrol.domain.state import State
from trafficcontrol.domain.workflows import (
    StepOutcome,
    WorkflowSpec,
    advance,
    child_context,
    first_prompt,
    mermaid,
    start,
    validate,
)
from trafficcontrol.errors import BacklogError, ConfigError
from trafficcontrol.runtime.handoff import check_output, extract_json
from trafficcontrol.runtime.simulator import Simulator

AIV = bundled_workflows()["analyze-implement-verify"]
PLAN = {"plan": "change x", "files": ["a.py"], "checks": ["pytest"]}


def test_the_bundled_workflows_are_valid() -> None:
    workflows = bundled_workflows()
    assert set(workflows) == {"analyze-implement-verify", "implement-verify", "investigate"}
    for spec in workflows.values():
        assert validate(spec) == []
    assert [s.name for s in AIV.steps] == ["analyze", "implement", "verify"]
    assert AIV.step("verify").on_fail == "implement"


def test_broken_definitions_are_refused_with_every_problem_named() -> None:
    text = """
name = "broken"
[[steps]]
name = "a"
role = "r"
tier = "gpt"
handoff = ["x"]
next = "zzz"
inputs = ["b.y", "nodot"]
[steps.output_schema]
type = "object"
properties.y = { type = "string" }
[[steps]]
name = "b"
role = "r"
next = "a"
pass_field = "ok"
"""
    with pytest.raises(ConfigError) as caught:
        parse_workflow(text, "wf.toml")
    message = caught.value.message
    for expected in (
        "wf.toml: ",
        "step 'a': tier 'gpt' is not opus, sonnet, haiku or route",
        "step 'a': next names unknown step 'zzz'",
        "field 'x' is not in its output_schema",
        "input 'b.y': b does not hand off 'y'",
        "input 'nodot' is not step.field",
        "step 'b': pass_field and on_fail go together",
        "step 'b': next must go forward (use on_fail)",
    ):
        assert expected in message
    with pytest.raises(ConfigError, match="unknown field"):
        parse_workflow('name = "x"\nsurprise = 1\n[[steps]]\nname = "a"\nrole = "r"\n', "x.toml")
    bad_schema = 'name = "x"\n[[steps]]\nname = "a"\nrole = "r"\noutput_schema = { type = 5 }\n'
    with pytest.raises(ConfigError, match="not a JSON Schema"):
        parse_workflow(bad_schema, "x.toml")


def test_each_step_prompt_holds_only_its_declared_handoff_fields() -> None:
    run = start(AIV)
    assert advance(AIV, run, StepOutcome(output={**PLAN, "notes": "secret scratch"})).kind == "next"
    prompt = first_prompt(AIV, run, "Fix it", "the task text", AIV.step("implement"))
    handoff = json.loads(prompt.split("# Handoff\n")[1].split("\n\n# Output")[0])
    assert handoff == {
        "analyze.plan": "change x",
        "analyze.files": ["a.py"],
        "analyze.checks": ["pytest"],
    }
    assert "secret scratch" not in prompt  # not declared: not handed on
    assert prompt.startswith(AIV.step("implement").role.strip())
    assert "# Task: Fix it\nthe task text" in prompt
    assert '"required": ["summary", "changed_files"]' in prompt


def test_verify_failing_loops_back_to_implement_a_bounded_number_of_times() -> None:
    run = start(AIV)
    advance(AIV, run, StepOutcome(output=PLAN))
    kinds = []
    for _ in range(3):
        advance(AIV, run, StepOutcome(output={"summary": "s", "changed_files": []}))
        verdict = advance(AIV, run, StepOutcome(output={"passed": False, "failures": ["t1"]}))
        kinds.append(verdict.kind)
        if verdict.kind == "loop":
            # The failures reach implement's next prompt.
            prompt = first_prompt(AIV, run, "t", "p", AIV.step("implement"))
            assert '"verify.failures": [\n    "t1"\n  ]' in prompt
    assert kinds == ["loop", "loop", "exhausted"]
    assert run.loops == {"verify": 3}


def test_invalid_output_is_asked_for_once_more_then_the_step_fails() -> None:
    run = start(AIV)
    first = advance(AIV, run, StepOutcome(error="plan: 'plan' is a required property"))
    assert first.kind == "reask" and run.step == "analyze"
    prompt = first_prompt(AIV, run, "t", "p", AIV.step("analyze"))
    assert "# Your previous output was not valid\nplan: 'plan' is a required property" in prompt
    assert advance(AIV, run, StepOutcome(error="still wrong")).kind == "invalid"
    assert run.reask is None


def test_children_inherit_the_listed_fields_and_conventions_within_budget() -> None:
    run = start(AIV)
    advance(AIV, run, StepOutcome(output=PLAN))
    conventions = {"CLAUDE.md": "use tabs " * 10}
    words = lambda text: len(text.split())  # noqa: E731
    context = child_context(AIV, run, conventions, words)
    assert context == {
        "analyze.plan": "change x",
        "analyze.files": ["a.py"],
        "conventions:CLAUDE.md": conventions["CLAUDE.md"],
    }
    tight = msgspec.structs.replace(
        AIV, inherit=msgspec.structs.replace(AIV.inherit, budget_tokens=5)
    )
    assert child_context(tight, run, conventions, words) == {
        "analyze.plan": "change x",
        "analyze.files": ["a.py"],
    }  # the conventions do not fit the budget: left out


def test_outputs_are_read_from_prose_and_fences_and_validated() -> None:
    schema = AIV.step("verify").output_schema
    fenced = 'Done.\n```json\n{"passed": true, "failures": []}\n```\nbye'
    assert check_output(fenced, schema).output == {"passed": True, "failures": []}
    inline = 'I checked {not json} and: {"passed": false, "failures": ["x {y}"]}'
    assert extract_json(inline) == {"passed": False, "failures": ["x {y}"]}
    wrong = check_output('{"passed": "yes"}', schema)
    assert wrong.output is None
    assert wrong.error is not None
    assert "(top level): 'failures' is a required property" in wrong.error
    assert "passed: 'yes' is not of type 'boolean'" in wrong.error
    assert check_output("no json here", schema).error is not None
    assert check_output("", schema).error == "the answer was empty; end with one JSON object"


def test_mermaid_marks_the_current_step() -> None:
    chart = mermaid(AIV, "verify")
    assert "verify -.->|passed=false, max 2| implement" in chart
    assert chart.endswith("style verify stroke-width:4px")


def test_submission_needs_known_workflows_and_journals_their_definitions() -> None:
    project = ProjectSpec(id=ProjectId("p"), path="/virtual/p", is_git=True)
    task = TaskSpec(
        id=TaskId("t"),
        project=project.id,
        title="t",
        prompt="p",
        workflow="analyze-implement-verify",
    )
    with pytest.raises(BacklogError) as caught:
        plan_submit(State(), SubmitRequest(source="s", projects=[project], tasks=[task]), 0.0)
    assert "task 't': unknown workflow 'analyze-implement-verify'" in caught.value.problems
    event = plan_submit(
        State(),
        SubmitRequest(source="s", projects=[project], tasks=[task], workflows=[AIV]),
        0.0,
    )
    assert event is not None and [w.name for w in event.workflows] == [AIV.name]


def workflow_request(n: int, reject_rate: float = 0.0) -> SubmitRequest:
    sim = SimSettings(duration_s=60.0, reject_rate=reject_rate)
    project = ProjectSpec(
        id=ProjectId("p"), path="/virtual/p", is_git=True, settings=AgentSettings(sim=sim)
    )
    tasks = [
        TaskSpec(
            id=TaskId(f"t{i}"),
            project=project.id,
            title=f"t{i}",
            prompt="p",
            workflow="analyze-implement-verify",
        )
        for i in range(n)
    ]
    return SubmitRequest(source="test", projects=[project], tasks=tasks, workflows=[AIV])


def test_the_simulator_runs_workflows_step_by_step() -> None:
    sim = Simulator(workflow_request(20), SchedulerConfig(max_agents=5), seed=3)
    report = sim.run()
    assert report.settled and not sim.violations
    state = sim.replica
    assert state.counts[TaskState.DONE] == 20
    steps = [e.step for e in sim.journal if isinstance(e, AttemptDispatched) and e.task_id == "t0"]
    assert steps == ["analyze", "implement", "verify"]
    models = {a.step: a.model for a in state.attempts.values()}
    assert models["analyze"] == "opus" and models["verify"] == "sonnet"
    record = state.tasks[TaskId("t0")]
    assert record.workflow_run is not None
    assert record.workflow_run.history == ["analyze", "implement", "verify"]
    assert set(record.workflow_run.handoffs) == {"analyze", "implement", "verify"}
    restored = snapshot.restore(snapshot.decode(snapshot.encode(state)))
    assert canonical(restored) == canonical(state) == canonical(replay(sim.journal))


def test_a_verify_that_never_passes_ends_with_a_human_not_a_loop() -> None:
    sim = Simulator(workflow_request(3, reject_rate=1.0), SchedulerConfig(max_agents=3), seed=1)
    assert sim.run().settled and not sim.violations
    for record in sim.replica.tasks.values():
        assert record.state is TaskState.FAILED
        assert record.last_error == (
            "workflow analyze-implement-verify: verify failed 3 times; a human should look"
        )
        steps = [sim.replica.attempts[a].step for a in record.attempts]
        assert steps == ["analyze"] + ["implement", "verify"] * 3


def test_workflow_spec_round_trips_through_the_journal_codec() -> None:
    data = msgspec.json.encode(AIV)
    assert msgspec.json.decode(data, type=WorkflowSpec) == AIV


def test_the_readme_workflow_example_loads() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Workflows, handoffs and context budgets", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    spec = parse_workflow(example, "README example")
    assert [s.name for s in spec.steps] == ["inventory", "migrate"]


def test_the_readme_context_example_loads(tmp_path: Path) -> None:
    from trafficcontrol.settings import load_settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("```toml\n[context]\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "config.toml"
    config.write_text("[context]\n" + block)
    rotation = load_settings(config).context
    assert rotation.rotate_at == 0.45 and rotation.window_for("claude-haiku-4-5") == 200_000
