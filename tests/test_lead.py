"""The lead agent, end to end: a task fails on its work, the lead (real ``anthropic``
client against the protocol server) triages it, its feedback reaches the next attempt."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.domain_driver import canonical, replay
from tests.helpers import journal_events, project, run_until_idle, submit, task
from tests.provider.server import TEST_API_KEY, ProviderServer, TurnUsage, text
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import LeadConsulted, TaskRetryRequested
from trafficcontrol.domain.invariants import verify_journal
from trafficcontrol.domain.model import TaskId, TaskState
from trafficcontrol.runtime.lead import LeadSettings
from trafficcontrol.settings import RunSettings, Settings

CHECK = (
    'cat {prompt_file} >> prompts.log; echo "----" >> prompts.log;'
    ' grep -q "v2 endpoint" {prompt_file}'
)


async def test_the_lead_triages_a_failed_task_and_its_feedback_reaches_the_retry(
    provider: ProviderServer, tmp_path: Path
) -> None:
    verdict = {"action": "retry", "feedback": "Call the v2 endpoint; v1 is gone."}
    provider.script(
        text(
            f"Looking at it.\n```json\n{json.dumps(verdict)}\n```",
            usage=TurnUsage(input_tokens=900, output_tokens=40),
        )
    )
    work = tmp_path / "work"
    settings = Settings(
        run=RunSettings(grace_s=1.0, request_poll_s=0.05),
        lead=LeadSettings(model="sonnet"),
    )
    environ = {**os.environ, "ANTHROPIC_BASE_URL": provider.url, "ANTHROPIC_API_KEY": TEST_API_KEY}
    app = App(Home(tmp_path / "home"), environ=environ, settings=settings)
    submit(
        app,
        [project(work, agent="command", command=["sh", "-c", CHECK])],
        [task("fetch", max_attempts=1)],
    )
    orchestrator = await run_until_idle(app)

    state = orchestrator.state
    record = state.tasks[TaskId("fetch")]
    assert record.state is TaskState.DONE
    assert record.triaged == 1
    prompts = (work / "prompts.log").read_text().split("----\n")
    assert "lead noted" not in prompts[0]
    assert "Before this attempt, the lead noted: Call the v2 endpoint; v1 is gone." in prompts[1]
    events = journal_events(app.home.root)
    consults = [e for e in events if isinstance(e, LeadConsulted)]
    assert len(consults) == 1
    consult = consults[0]
    assert consult.purpose == "triage" and consult.task_id == "fetch"
    assert consult.decision.startswith("retry: Call the v2 endpoint")
    assert consult.usage is not None and consult.usage.input_tokens == 900
    retries = [e for e in events if isinstance(e, TaskRetryRequested)]
    assert [(r.by, r.feedback) for r in retries] == [("lead", verdict["feedback"])]
    # The lead is metered like any agent, and asked from a context it keeps small.
    entries = state.capacity.ledger.entries_between(0, float("inf"))
    assert [e.agent for e in entries if e.agent == "lead"] == ["lead"]
    assert 0 < consult.context_utilisation < 0.4
    # The question went to the provider with the failure, not the agent's transcript.
    question = provider.message_requests[0].user_texts()[0]
    assert "do fetch" in question and "attempt 1 (task): exit code 1" in question
    assert "You lead a team" not in question  # the system prompt is sent as such, once


def lead_app(tmp_path: Path, provider: ProviderServer) -> App:
    settings = Settings(
        run=RunSettings(grace_s=1.0, request_poll_s=0.05),
        lead=LeadSettings(model="sonnet"),
    )
    environ = {**os.environ, "ANTHROPIC_BASE_URL": provider.url, "ANTHROPIC_API_KEY": TEST_API_KEY}
    return App(Home(tmp_path / "home"), environ=environ, settings=settings)


async def test_the_lead_splits_a_marked_task_into_a_dag_that_finishes_it(
    provider: ProviderServer, tmp_path: Path
) -> None:
    answer = {
        "subtasks": [
            {"id": "schema", "title": "Schema", "prompt": "Add the table."},
            {"id": "api", "title": "API", "prompt": "Add the endpoint.", "depends_on": ["schema"]},
        ]
    }
    provider.script(text(f"```json\n{json.dumps(answer)}\n```"))
    app = lead_app(tmp_path, provider)
    work = tmp_path / "work"
    work.mkdir()
    (work / "CLAUDE.md").write_text("Always write tests first.")
    submit(
        app,
        [project(work)],
        [task("big", split=True), task("after", deps=["big"])],
    )
    orchestrator = await run_until_idle(app)

    state = orchestrator.state
    assert {t: r.state for t, r in state.tasks.items()} == {
        "big": TaskState.DONE,
        "big.schema": TaskState.DONE,
        "big.api": TaskState.DONE,
        "after": TaskState.DONE,
    }
    big = state.tasks[TaskId("big")]
    assert big.attempts == [] and big.split_into == ["big.schema", "big.api"]
    child = state.tasks[TaskId("big.api")].spec
    assert child.depends_on == ("big.schema",) and child.parent == "big"
    assert child.prompt.startswith("Add the endpoint.\n\n# Context from the parent task\n")
    assert "Parent task big: big\ndo big" in child.prompt
    assert "Always write tests first." in child.prompt  # the project's conventions
    events = journal_events(app.home.root)
    order = [
        type(e).__name__ for e in events if type(e).__name__ in ("TaskSplit", "AttemptDispatched")
    ]
    assert order[0] == "TaskSplit"  # nothing ran before the split
    assert verify_journal(events, SchedulerConfig(lead_splits=True), settled=True) == []
    snapshot_state = snapshot.restore(snapshot.decode(snapshot.encode(state)))
    assert canonical(snapshot_state) == canonical(replay(events))


async def test_an_unusable_split_answer_runs_the_task_as_one(
    provider: ProviderServer, tmp_path: Path
) -> None:
    bad = {"subtasks": [{"id": "x", "title": "X", "prompt": "p", "depends_on": ["nope"]}]}
    provider.script(text(json.dumps(bad)))
    app = lead_app(tmp_path, provider)
    submit(app, [project(tmp_path / "work")], [task("big", split=True)])
    orchestrator = await run_until_idle(app)
    record = orchestrator.state.tasks[TaskId("big")]
    assert record.state is TaskState.DONE and len(record.attempts) == 1
    consult = next(e for e in journal_events(app.home.root) if isinstance(e, LeadConsulted))
    assert consult.decision == "not split (invalid answer: subtask x: unknown depends_on ['nope'])"


async def test_an_escalation_is_asked_once_and_the_run_ends(
    provider: ProviderServer, tmp_path: Path
) -> None:
    verdict = {"action": "escalate", "feedback": "The credentials are wrong; a human must fix."}
    provider.script(text(json.dumps(verdict)), text(json.dumps(verdict)))
    app = lead_app(tmp_path, provider)
    work = tmp_path / "work"
    submit(
        app,
        [project(work, agent="command", command=["sh", "-c", "exit 1"])],
        [task("fetch", max_attempts=1)],
    )
    orchestrator = await run_until_idle(app)  # returns: the task is left to a human

    record = orchestrator.state.tasks[TaskId("fetch")]
    assert record.state is TaskState.FAILED and record.triaged == 1
    consults = [e for e in journal_events(app.home.root) if isinstance(e, LeadConsulted)]
    assert [c.decision for c in consults] == [f"escalate: {verdict['feedback']}"]
    assert len(provider.message_requests) == 1


async def test_a_lead_that_cannot_answer_leaves_the_task_to_a_human(tmp_path: Path) -> None:
    settings = Settings(
        run=RunSettings(grace_s=1.0, request_poll_s=0.05), lead=LeadSettings(model="sonnet")
    )
    # Nothing listens on this port: every consult fails to connect.
    environ = {
        **os.environ,
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "ANTHROPIC_API_KEY": TEST_API_KEY,
    }
    app = App(Home(tmp_path / "home"), environ=environ, settings=settings)
    submit(
        app,
        [project(tmp_path / "work", agent="command", command=["sh", "-c", "exit 1"])],
        [task("fetch", max_attempts=1)],
    )
    orchestrator = await run_until_idle(app)
    record = orchestrator.state.tasks[TaskId("fetch")]
    assert record.state is TaskState.FAILED and record.triaged == 1
    consults = [e for e in journal_events(app.home.root) if isinstance(e, LeadConsulted)]
    assert len(consults) == 1 and consults[0].decision.startswith("invalid: ")
