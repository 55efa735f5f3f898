"""A whole ``tc run`` on the claude backend: the real claude-agent-sdk and its bundled
Claude Code CLI against the local Anthropic-protocol server, in a real git worktree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import git_repo, journal_events, run_until_idle, submit, task
from tests.provider.server import ProviderServer, TurnUsage, text, tool
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.domain.events import (
    AgentSessionStarted,
    AttemptFinished,
    TurnUsageReported,
    WorkspacePrepared,
)
from trafficcontrol.domain.model import AgentSettings, Outcome, ProjectId, ProjectSpec, TaskState
from trafficcontrol.settings import RunSettings, Settings

pytestmark = pytest.mark.claude


async def test_claude_attempt_writes_in_its_worktree_and_journals_session_usage_cost(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    git_repo(repo)
    home = tmp_path / "home"
    app = App(
        Home(home),
        environ={**os.environ, **claude_env},
        settings=Settings(run=RunSettings(grace_s=1.0, request_poll_s=0.05)),
    )
    project = ProjectSpec(
        id=ProjectId("repo"),
        path=str(repo),
        is_git=True,
        agent="claude",
        model="sonnet",
        settings=AgentSettings(allowed_tools=["Write"], max_turns=5),
    )
    submit(app, [project], [task("hello", "repo")])
    worktree = home / "worktrees" / "repo" / "hello-1"
    provider.script(
        tool(
            "Write",
            {"file_path": str(worktree / "hello.txt"), "content": "hi from claude\n"},
            usage=TurnUsage(120, 30, 10, 5),
        ),
        text("done", usage=TurnUsage(20, 4, 0, 0)),
    )

    orchestrator = await run_until_idle(app)

    assert orchestrator.state.tasks["hello"].state is TaskState.DONE
    assert (worktree / "hello.txt").read_text() == "hi from claude\n"
    assert not (repo / "hello.txt").exists()
    events = journal_events(home)
    (prepared,) = [e for e in events if isinstance(e, WorkspacePrepared)]
    assert Path(prepared.path) == worktree and prepared.branch == "tc/hello/1"
    (session,) = [e for e in events if isinstance(e, AgentSessionStarted)]
    (finished,) = [e for e in events if isinstance(e, AttemptFinished)]
    assert finished.outcome is Outcome.SUCCEEDED
    assert finished.session_id == session.session_id
    assert finished.usage is not None
    assert (
        finished.usage.input_tokens,
        finished.usage.output_tokens,
        finished.usage.cache_read_tokens,
        finished.usage.cache_creation_tokens,
    ) == (140, 34, 10, 5)
    assert finished.usage.cost_usd is not None and finished.usage.cost_usd > 0
    assert not finished.simulated
    turns = [e.usage for e in events if isinstance(e, TurnUsageReported)]
    assert [(u.input_tokens, u.cache_read_tokens) for u in turns] == [(120, 10), (20, 0)]
    attempt = orchestrator.state.attempts["hello#1"]
    assert attempt.turns == 2 and attempt.turn_usage is not None
    assert attempt.turn_usage.input_tokens == finished.usage.input_tokens
    # The prompt the CLI sent is the task's, and the log is the attempt's JSONL file.
    assert "do hello" in provider.message_requests[0].user_texts()
    log = home / "logs" / "hello" / "1.jsonl"
    assert log.exists() and "ResultMessage" in log.read_text()


async def test_run_refuses_to_start_without_claude_credentials(tmp_path: Path) -> None:
    home = tmp_path / "home"
    environ = {k: v for k, v in os.environ.items() if "ANTHROPIC" not in k and "CLAUDE" not in k}
    app = App(
        Home(home),
        environ={**environ, "HOME": str(tmp_path), "CLAUDE_CONFIG_DIR": str(tmp_path / "cfg")},
        settings=Settings(),
    )
    (tmp_path / "p").mkdir()
    project = ProjectSpec(id=ProjectId("p"), path=str(tmp_path / "p"), agent="claude")
    submit(app, [project], [task("t", "p")])
    orchestrator, _notes = app.start()
    with pytest.raises(Exception, match="credentials") as caught:
        orchestrator.check_backends()
    assert type(caught.value).__name__ == "ConfigError"
    assert len(journal_events(home)) == 1  # nothing ran, nothing was journaled
