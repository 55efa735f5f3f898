"""A 3-step workflow end to end: the real ``anthropic`` client (api backend) against the
protocol server. Each step's first request holds its role, the task and exactly the
handoff fields it declares — never an earlier step's transcript."""

from __future__ import annotations

import json
from pathlib import Path

from bench.stepped import ManualClock, SteppedShell

from tests.provider.server import TEST_API_KEY, ProviderServer, text
from trafficcontrol.adapters.agents.anthropic_api import ApiBackend
from trafficcontrol.adapters.workflow_files import bundled_workflows
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import BacklogSubmitted
from trafficcontrol.domain.model import ProjectId, ProjectSpec, TaskId, TaskSpec, TaskState

T0 = 1_900_000_000.0
ANALYSIS_PROSE = "I read parser.py and the tests; the tokenizer drops trailing commas."
IMPLEMENT_PROSE = "Edited parser.py: kept the trailing comma, added a test."


def answer(prose: str, output: dict[str, object]) -> str:
    return f"{prose}\n```json\n{json.dumps(output)}\n```"


def handoff_of(prompt: str) -> dict[str, object]:
    if "# Handoff\n" not in prompt:
        return {}
    block = prompt.split("# Handoff\n", 1)[1].split("\n\n# ", 1)[0]
    loaded: dict[str, object] = json.loads(block)
    return loaded


async def test_each_step_starts_from_its_declared_handoff_only(
    provider: ProviderServer, tmp_path: Path
) -> None:
    workflow = bundled_workflows()["analyze-implement-verify"]
    plan = {"plan": "keep trailing commas", "files": ["parser.py"], "checks": ["pytest -q"]}
    impl = {"summary": "trailing comma kept", "changed_files": ["parser.py", "test_parser.py"]}
    provider.script(
        text(answer(ANALYSIS_PROSE, {**plan})),
        text("not json at all"),  # the implement step answers badly once: asked again
        text(answer(IMPLEMENT_PROSE, impl)),
        text(answer("All checks pass.", {"passed": True, "failures": []})),
    )
    project = ProjectSpec(id=ProjectId("p"), path=str(tmp_path), agent="api")
    task = TaskSpec(
        id=TaskId("fix"),
        project=project.id,
        title="Fix the parser",
        prompt="Trailing commas in lists are dropped; keep them.",
        workflow=workflow.name,
    )
    clock = ManualClock(T0)
    environ = {"ANTHROPIC_BASE_URL": provider.url, "ANTHROPIC_API_KEY": TEST_API_KEY}
    shell = SteppedShell(
        [
            BacklogSubmitted(
                at=T0, source="test", projects=[project], tasks=[task], workflows=[workflow]
            )
        ],
        {"api": ApiBackend(environ=environ, clock=clock)},
        clock,
        SchedulerConfig(max_agents=1),
        tmp_path,
    )
    for _ in range(20):
        await shell.turn()
        shell.advance(1.0)
        if shell.state.tasks[task.id].state.terminal:
            break
    record = shell.state.tasks[task.id]
    assert record.state is TaskState.DONE, record.last_error
    prompts = [r.user_texts()[0] for r in provider.message_requests]
    assert len(prompts) == 4
    analyze, implement_bad, implement, verify = prompts
    assert handoff_of(analyze) == {}
    expected_implement = {f"analyze.{k}": v for k, v in plan.items()}
    assert handoff_of(implement_bad) == expected_implement
    assert handoff_of(implement) == expected_implement
    assert handoff_of(verify) == {
        "analyze.plan": plan["plan"],
        "analyze.checks": plan["checks"],
        "implement.summary": impl["summary"],
        "implement.changed_files": impl["changed_files"],
    }
    # No transcript travels: the earlier steps' prose is in no later prompt.
    for later in (implement, verify):
        assert ANALYSIS_PROSE not in later
    assert IMPLEMENT_PROSE not in verify
    # The bad answer was asked for again with the reason.
    assert "# Your previous output was not valid\nno JSON object found" in implement
    assert "# Your previous output was not valid" not in implement_bad
    # Each step's prompt begins with its role.
    for prompt, step in zip((analyze, implement, verify), workflow.steps, strict=True):
        assert prompt.startswith(step.role.strip())
    run = record.workflow_run
    assert run is not None and run.history == ["analyze", "implement", "verify"]
    steps = [shell.state.attempts[a].step for a in record.attempts]
    assert steps == ["analyze", "implement", "implement", "verify"]
