"""SIGKILL of a real ``tc run`` and of the attempt's supervisor while Claude Code waits
on the model, then a restart: the next attempt continues the same Claude Code session
in the same worktree (the fallback when no supervisor survived to be adopted).

Everything is real but the model: ``tc`` runs as a process, the attempt's supervisor
drives the claude-agent-sdk and its bundled CLI, which talks to the local
Anthropic-protocol server (``tests/provider``). The first model turn makes the agent
write a file; the next model request is held by the server, so the kill lands at a
known point: the session id and the supervisor's process are journaled, the CLI's
transcript holds the first turn and its tool result. ``tc`` and the supervisor are
killed; the CLI leads a process group of its own and survives them, so the restarted
orchestrator must kill it (found by its run marker) before it resumes the session —
an attempt must never run twice at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cli_helpers import TC
from tests.helpers import events_of, git_repo, journal_events, submit, task
from tests.provider.server import Fault, ProviderServer, RecordedRequest, Turn, text, tool
from trafficcontrol.adapters.agents.process_group import (
    group_alive,
    kill_leftover_group,
    marked_processes,
)
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AgentSessionStarted,
    AttemptAdopted,
    AttemptDispatched,
    AttemptFinished,
    WorkspacePrepared,
)
from trafficcontrol.domain.model import AgentSettings, Outcome, ProjectId, ProjectSpec
from trafficcontrol.settings import RunSettings, Settings

pytestmark = [pytest.mark.claude, pytest.mark.e2e, pytest.mark.slow]

PROMPT = "do hello"
CONTENT = "written before the kill\n"


def tc_env(home: Path, claude_env: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        **claude_env,
        "TC_HOME": str(home),
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }


def wait_for_events(home: Path, predicate: Any, what: str, timeout_s: float = 30.0) -> None:
    """Poll the journal another process writes until ``predicate(events)`` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate(journal_events(home)):
            return
        time.sleep(0.05)  # the other process gives no signal to wait on
    raise AssertionError(f"journal: {what} not seen within {timeout_s}s")


def tool_results(request: RecordedRequest) -> list[str]:
    """The tool_use ids whose results the request carries."""
    ids = []
    for message in request.body.get("messages", []):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            ids += [
                b["tool_use_id"]
                for b in content
                if isinstance(b, dict) and b.get("type") == "tool_result"
            ]
    return ids


def test_sigkill_mid_attempt_then_restart_resumes_the_same_claude_session(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    git_repo(repo)
    home = tmp_path / "tc"
    env = tc_env(home, claude_env)
    app = App(
        Home(home),
        environ=env,
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
    app.close()
    worktree = home / "worktrees" / "repo" / "hello-1"
    written = worktree / "hello.txt"
    first_turn = tool("Write", {"file_path": str(written), "content": CONTENT})
    provider.script(first_turn, text("never delivered"))
    provider.add_fault(Fault.stall(after=1))  # the request after the Write's result waits

    leftovers: list[AgentProcessStarted] = []
    try:
        kill_and_restart(provider, claude_env, env, home, worktree, first_turn, leftovers)
    finally:  # a failing check must not leave the CLI behind (it leads its own group)
        for p in leftovers:
            kill_leftover_group(p.pid, p.pgid, p.create_time, 1.0)  # checks pid and start time
        for proc in marked_processes(str(home / "logs" / "hello" / "1.jsonl")):
            proc.kill()


def kill_and_restart(
    provider: ProviderServer,
    claude_env: dict[str, str],
    env: dict[str, str],
    home: Path,
    worktree: Path,
    first_turn: Turn,
    leftovers: list[AgentProcessStarted],
) -> None:
    written = worktree / "hello.txt"
    # -- first run: killed while the CLI waits on its second model request ------------
    first = subprocess.Popen(
        [*TC, "run", "--no-live"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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
    before = journal_events(home)
    (session1,) = events_of(before, AgentSessionStarted, "hello#1")
    (process1,) = events_of(before, AgentProcessStarted, "hello#1")
    leftovers.append(process1)
    assert not events_of(before, AttemptFinished, "hello#1")
    assert written.read_text() == CONTENT
    # The supervisor and the CLI outlived tc (own sessions); the CLI still waits on the
    # model. The supervisor dies now, before it can record anything: no adoption.
    assert group_alive(process1.pgid)
    assert process1.pgid == process1.pid != os.getpgrp()
    (log_path,) = {e.log_path for e in events_of(before, AttemptDispatched, "hello#1")}
    clis = [p for p in marked_processes(log_path) if p.pid != process1.pid]
    assert clis, "the CLI outlived tc run"
    os.kill(process1.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _alive(process1.pid, process1.create_time) and time.monotonic() < deadline:
        time.sleep(0.02)  # it dies asynchronously; nothing to wait on
    assert not _alive(process1.pid, process1.create_time)
    transcripts = list(Path(claude_env["CLAUDE_CONFIG_DIR"]).glob("projects/*/*.jsonl"))
    assert [t.stem for t in transcripts] == [session1.session_id], transcripts
    stalled_request = provider.message_requests[-1]
    first_tool_id = first_turn.tool_uses[0].id
    assert first_tool_id in tool_results(stalled_request)

    # -- restart: the leftover CLI group is killed, the session resumed ----------------
    provider.script(text("finished after resume"))
    seen = len(provider.message_requests)
    second = subprocess.run(
        [*TC, "run", "--no-live"], env=env, capture_output=True, text=True, timeout=180
    )
    assert second.returncode == 0, (second.stdout, second.stderr)
    assert not any(cli.is_running() and cli.status() != "zombie" for cli in clis), (
        "the leftover CLI outlived the restart"
    )

    events = journal_events(home)
    (end1,) = events_of(events, AttemptFinished, "hello#1")
    assert end1.outcome is Outcome.INTERRUPTED
    assert end1.error is not None and "run marker were killed" in end1.error
    assert not events_of(events, AttemptAdopted, "hello#1")
    (dispatch2,) = events_of(events, AttemptDispatched, "hello#2")
    assert dispatch2.resume_of == "hello#1"
    (ws1,) = events_of(events, WorkspacePrepared, "hello#1")
    (ws2,) = events_of(events, WorkspacePrepared, "hello#2")
    assert ws2.path == ws1.path == str(worktree)
    sessions2 = [e.session_id for e in events_of(events, AgentSessionStarted, "hello#2")]
    (end2,) = events_of(events, AttemptFinished, "hello#2")
    assert end2.outcome is Outcome.SUCCEEDED, end2
    assert sessions2 == [session1.session_id]
    assert end2.session_id == session1.session_id
    assert [e.attempt_id for e in events if isinstance(e, AttemptDispatched)] == [
        "hello#1",
        "hello#2",
    ]

    # The resumed CLI sent the earlier conversation: the first prompt, the Write call
    # and its result, before anything new.
    resumed = provider.message_requests[seen:]
    assert resumed, "the resumed attempt made no model request"
    body = json.dumps(resumed[0].body)
    assert PROMPT in resumed[0].user_texts()
    assert first_tool_id in tool_results(resumed[0])
    assert first_tool_id in body and CONTENT.strip() in body

    state = json.loads(
        subprocess.run(
            [*TC, "show", "hello", "--json"], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert state["state"] == "done", state
    assert written.read_text() == CONTENT


def _alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return bool(
            abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.NoSuchProcess:
        return False
