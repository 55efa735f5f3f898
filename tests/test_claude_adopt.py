"""SIGKILL of a real ``tc run`` (only ``tc``: the attempt's supervisor lives on) while
Claude Code waits on the model, then a restart that adopts the attempt instead of
running it again.

Everything is real but the model: ``tc`` runs as a process, the attempt's supervisor
drives the claude-agent-sdk and its bundled CLI against the local Anthropic-protocol
server (``tests/provider``). The server holds the agent's second model request, so the
kill lands at a known point; releasing it lets the agent go on with no orchestrator.

- finished while down: the agent ends before the restart; the restarted ``tc`` journals
  its real outcome and usage from the supervisor's exit record, and the provider sees
  no request from it (no resume, no rerun).
- still running at restart: the restarted ``tc`` follows it; the next turn's usage
  shows in ``tc show`` while the agent still runs, and its end is journaled once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cli_helpers import TC
from tests.helpers import events_of, git_repo, journal_events, submit, task
from tests.provider.server import Fault, ProviderServer, TurnUsage, text, tool
from tests.test_claude_resume import tc_env, wait_for_events
from trafficcontrol.adapters.agents.process_group import marked_processes
from trafficcontrol.adapters.agents.supervision import AttemptFiles
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AgentSessionStarted,
    AttemptAdopted,
    AttemptDispatched,
    AttemptFinished,
    TurnUsageReported,
)
from trafficcontrol.domain.model import AgentSettings, Outcome, ProjectId, ProjectSpec
from trafficcontrol.settings import RunSettings, Settings

pytestmark = [pytest.mark.claude, pytest.mark.e2e, pytest.mark.slow]

FIRST = TurnUsage(input_tokens=11, output_tokens=7)
SECOND = TurnUsage(input_tokens=230, output_tokens=41)
LAST = TurnUsage(input_tokens=520, output_tokens=63)
LOG = Path("logs") / "hello" / "1.jsonl"


@pytest.fixture
def home(tmp_path: Path, claude_env: dict[str, str]) -> Iterator[Path]:
    """A state home with one Claude Code task; whatever a failing check leaves
    running under the attempt's run marker is killed afterwards."""
    repo = tmp_path / "repo"
    git_repo(repo)
    home = tmp_path / "tc"
    app = App(
        Home(home),
        environ=tc_env(home, claude_env),
        settings=Settings(run=RunSettings(grace_s=1.0, request_poll_s=0.05)),
    )
    project = ProjectSpec(
        id=ProjectId("repo"),
        path=str(repo),
        is_git=True,
        agent="claude",
        model="sonnet",
        settings=AgentSettings(allowed_tools=["Write"], max_turns=6),
    )
    submit(app, [project], [task("hello", "repo")])
    app.close()
    yield home
    for proc in marked_processes(str(home / LOG)):
        proc.kill()


def kill_tc_while_the_model_is_held(
    provider: ProviderServer, env: dict[str, str], home: Path
) -> AgentProcessStarted:
    """Start ``tc run``, SIGKILL it once the agent's held request arrived; the
    supervisor it started (journaled) outlives it."""
    first = subprocess.Popen(
        [*TC, "run", "--no-live"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        provider.wait_for(lambda p: p.stalled >= 1, timeout=90)
        wait_for_events(
            home,
            lambda ev: (
                events_of(ev, AgentSessionStarted, "hello#1")
                and events_of(ev, AgentProcessStarted, "hello#1")
            ),
            "hello#1's session and process",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        out, err = first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL, (out, err)
    events = journal_events(home)
    assert not events_of(events, AttemptFinished, "hello#1")
    (process,) = events_of(events, AgentProcessStarted, "hello#1")
    assert _alive(process), "the supervisor died with tc run"
    return process


def show(env: dict[str, str]) -> dict[str, Any]:
    shown = subprocess.run(
        [*TC, "show", "hello", "--json"], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(shown.stdout)
    return result


def test_an_agent_that_finished_while_tc_was_down_is_recorded_from_its_exit_record(
    provider: ProviderServer, claude_env: dict[str, str], home: Path
) -> None:
    env = tc_env(home, claude_env)
    worktree = home / "worktrees" / "repo" / "hello-1"
    written = worktree / "hello.txt"
    provider.script(
        tool("Write", {"file_path": str(written), "content": "one\n"}, usage=FIRST),
        text("finished with nobody watching", usage=LAST),
    )
    provider.add_fault(Fault.stall(after=1))
    supervisor = kill_tc_while_the_model_is_held(provider, env, home)

    # -- the agent finishes with no orchestrator: its supervisor records the end -------
    provider.release()
    _wait_gone(supervisor)
    assert AttemptFiles(home / LOG).exit.exists(), "the supervisor wrote no exit record"
    requests = len(provider.message_requests)
    assert written.read_text() == "one\n"

    # -- restart: the outcome comes from the exit record; nothing runs again ----------
    second = subprocess.run(
        [*TC, "run", "--no-live"], env=env, capture_output=True, text=True, timeout=180
    )
    assert second.returncode == 0, (second.stdout, second.stderr)
    assert len(provider.message_requests) == requests, "the restart asked the model again"

    events = journal_events(home)
    assert [e.attempt_id for e in events if isinstance(e, AttemptDispatched)] == ["hello#1"]
    (adopted,) = events_of(events, AttemptAdopted, "hello#1")
    assert adopted.finished
    (end,) = events_of(events, AttemptFinished, "hello#1")
    assert end.outcome is Outcome.SUCCEEDED, end
    assert end.usage is not None
    assert end.usage.input_tokens >= FIRST.input_tokens + LAST.input_tokens, end.usage
    assert end.usage.output_tokens >= FIRST.output_tokens + LAST.output_tokens, end.usage
    (session,) = events_of(events, AgentSessionStarted, "hello#1")
    assert end.session_id == session.session_id

    shown = show(env)
    assert shown["state"] == "done", shown
    (attempt,) = shown["attempt_list"]
    assert attempt["adoptions"] == 1
    assert attempt["usage"]["input_tokens"] == end.usage.input_tokens


def test_an_agent_still_running_at_restart_is_followed_live_and_ends_once(
    provider: ProviderServer, claude_env: dict[str, str], home: Path
) -> None:
    env = tc_env(home, claude_env)
    worktree = home / "worktrees" / "repo" / "hello-1"
    provider.script(
        tool("Write", {"file_path": str(worktree / "a.txt"), "content": "a\n"}, usage=FIRST),
        tool("Write", {"file_path": str(worktree / "b.txt"), "content": "b\n"}, usage=SECOND),
        text("finished under the second orchestrator", usage=LAST),
    )
    provider.add_fault(Fault.stall(after=1))
    supervisor = kill_tc_while_the_model_is_held(provider, env, home)
    turns_before = len(events_of(journal_events(home), TurnUsageReported, "hello#1"))

    # -- restart while the agent still waits: the attempt is adopted, not rerun -------
    second = subprocess.Popen(
        [*TC, "run", "--no-live"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for_events(
            home, lambda ev: events_of(ev, AttemptAdopted, "hello#1"), "hello#1 adopted"
        )
        (adopted,) = events_of(journal_events(home), AttemptAdopted, "hello#1")
        assert not adopted.finished
        assert _alive(supervisor), "adoption must not restart the supervisor"

        # The next turn happens under the new orchestrator; hold the one after it.
        provider.add_fault(Fault.stall())
        provider.release()
        provider.wait_for(lambda p: p.stalled >= 2, timeout=90)
        wait_for_events(
            home,
            lambda ev: len(events_of(ev, TurnUsageReported, "hello#1")) > turns_before,
            "the adopted attempt's next turn",
        )
        shown = show(env)
        assert shown["state"] == "running", shown
        (attempt,) = shown["attempt_list"]
        assert attempt["adoptions"] == 1
        assert attempt["turns"] >= 2, attempt
        assert attempt["turn_usage"]["input_tokens"] >= FIRST.input_tokens + SECOND.input_tokens

        provider.release()
        out, err = second.communicate(timeout=180)
    finally:
        if second.poll() is None:
            second.kill()
            second.communicate()
    assert second.returncode == 0, (out, err)

    events = journal_events(home)
    assert [e.attempt_id for e in events if isinstance(e, AttemptDispatched)] == ["hello#1"]
    (end,) = events_of(events, AttemptFinished, "hello#1")
    assert end.outcome is Outcome.SUCCEEDED, end
    assert end.usage is not None
    total_in = FIRST.input_tokens + SECOND.input_tokens + LAST.input_tokens
    assert end.usage.input_tokens >= total_in, end.usage
    assert (worktree / "b.txt").read_text() == "b\n"
    assert show(env)["state"] == "done"
    assert not _alive(supervisor)


def _alive(process: AgentProcessStarted) -> bool:
    try:
        proc = psutil.Process(process.pid)
        return bool(
            abs(proc.create_time() - process.create_time) < 0.01
            and proc.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.NoSuchProcess:
        return False


def _wait_gone(process: AgentProcessStarted, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _alive(process) and time.monotonic() < deadline:
        time.sleep(0.02)  # not our child (tc was its parent): nothing to wait on
    assert not _alive(process), "the supervisor did not end after its agent finished"
