"""A failover while Claude Code works: the real CLI (through the claude-agent-sdk, against
the local Anthropic-protocol server) runs under the leader; the leader is SIGKILLed and
a standby on the same PostgreSQL store takes over.

- supervisor alive: the new leader adopts the attempt and follows the same session to
  its end; the provider sees it go on in that session, nothing started again;
- supervisor gone too (the attempt cannot be adopted): the new leader kills the
  leftover CLI by its run marker and resumes the same session by its id in the next
  attempt; the resumed request carries the earlier conversation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli_helpers import TC
from tests.helpers import events_of, git_repo, submit, task
from tests.pg import admin
from tests.provider.server import Fault, ProviderServer, text, tool
from tests.test_claude_resume import _alive, tc_env, tool_results
from trafficcontrol.adapters.agents.process_group import kill_leftover_group, marked_processes
from trafficcontrol.adapters.stores.postgres import PostgresJournal
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AgentSessionStarted,
    AnyEvent,
    AttemptAdopted,
    AttemptDispatched,
    AttemptFinished,
)
from trafficcontrol.domain.model import AgentSettings, Outcome, ProjectId, ProjectSpec

pytestmark = [pytest.mark.claude, pytest.mark.postgres, pytest.mark.e2e, pytest.mark.slow]

PROMPT = "do hello"
CONTENT = "written before the failover\n"
CONFIG = "[run]\ngrace_s = 1.0\nrequest_poll_s = 0.05\n[cluster]\nstandby_poll_s = 0.05\n"


class Pair:
    """Two instances (a home each) of one PostgreSQL store, with one Claude Code task."""

    def __init__(self, root: Path, url: str, claude_env: dict[str, str]) -> None:
        self.url = url
        self.dbname = url.rpartition("/")[2]
        self.homes = {name: root / name for name in ("a", "b")}
        for home in self.homes.values():
            home.mkdir()
            (home / "config.toml").write_text(CONFIG)
        self.envs = {
            name: {**tc_env(home, claude_env), "TC_STORE": url} for name, home in self.homes.items()
        }
        self.procs: dict[str, subprocess.Popen[str]] = {}
        repo = root / "repo"
        git_repo(repo)
        app = App(Home(self.homes["a"]), environ=self.envs["a"])
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
        self.written = self.homes["a"] / "worktrees" / "repo" / "hello-1" / "hello.txt"

    def start(self, name: str) -> subprocess.Popen[str]:
        home = self.homes[name]
        with (home / "stderr.txt").open("w") as err:
            self.procs[name] = subprocess.Popen(
                [*TC, "run", "--no-live"],
                env=self.envs[name],
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
            )
        return self.procs[name]

    def events(self) -> list[AnyEvent]:
        journal = PostgresJournal(self.url)
        try:
            return [event for _seq, event in journal.read()]
        finally:
            journal.close()

    def until(self, what: str, condition: Any, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                logs = {n: (h / "stderr.txt").read_text()[-2000:] for n, h in self.homes.items()}
                raise AssertionError(f"timed out waiting for {what}: {logs}")
            time.sleep(0.05)  # other processes' state: nothing to await

    def leader_pid(self) -> int | None:
        with admin(self.dbname) as conn:
            try:
                row = conn.execute(
                    "SELECT holder FROM leases WHERE expires_at > clock_timestamp()"
                ).fetchone()
            except psycopg.errors.UndefinedTable:
                return None
        if row is None or row[0].startswith("tc-cli"):
            return None
        return int(row[0].split(":")[1])

    def standing_by(self, proc: subprocess.Popen[str]) -> bool:
        with admin(self.dbname) as conn:
            row = conn.execute(
                "SELECT role FROM instances WHERE pid = %s ORDER BY seen_at DESC LIMIT 1",
                (proc.pid,),
            ).fetchone()
        return row is not None and row[0] == "standby"

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def pair(tmp_path: Path, pg_url: str, claude_env: dict[str, str]) -> Iterator[Pair]:
    made = Pair(tmp_path, pg_url, claude_env)
    yield made
    made.close()
    for proc in marked_processes(str(made.homes["a"] / "logs" / "hello" / "1.jsonl")):
        proc.kill()


def leader_working(
    pair: Pair, provider: ProviderServer
) -> tuple[AgentSessionStarted, AgentProcessStarted]:
    """Leader a, standby b, and the CLI under a waiting on its second model request."""
    a = pair.start("a")
    pair.until("a to lead", lambda: pair.leader_pid() == a.pid)
    b = pair.start("b")
    pair.until("b to stand by", lambda: pair.standing_by(b))
    provider.wait_for(lambda p: p.stalled >= 1, timeout=90)
    pair.until(
        "hello#1's session and process",
        lambda: (
            events_of(pair.events(), AgentSessionStarted, "hello#1")
            and events_of(pair.events(), AgentProcessStarted, "hello#1")
        ),
    )
    events = pair.events()
    (session,) = events_of(events, AgentSessionStarted, "hello#1")
    (process,) = events_of(events, AgentProcessStarted, "hello#1")
    return session, process


def script(provider: ProviderServer, pair: Pair) -> str:
    first_turn = tool("Write", {"file_path": str(pair.written), "content": CONTENT})
    provider.script(first_turn, text("done"))
    provider.add_fault(Fault.stall(after=1))  # the request after the Write's result waits
    return first_turn.tool_uses[0].id


def test_a_failover_adopts_the_running_claude_session(provider: ProviderServer, pair: Pair) -> None:
    script(provider, pair)
    session, _process = leader_working(pair, provider)
    b = pair.procs["b"]
    pair.procs["a"].kill()  # SIGKILL: the attempt's supervisor lives on
    pair.until("b to take over", lambda: pair.leader_pid() == b.pid)
    pair.until("b to adopt hello#1", lambda: events_of(pair.events(), AttemptAdopted, "hello#1"))
    provider.release()  # the held request is answered: the agent ends under b
    b.wait(timeout=120)
    assert b.returncode == 0, (pair.homes["b"] / "stderr.txt").read_text()
    events = pair.events()
    (end,) = events_of(events, AttemptFinished, "hello#1")
    assert end.outcome is Outcome.SUCCEEDED and end.session_id == session.session_id
    assert [e.attempt_id for e in events if isinstance(e, AttemptDispatched)] == ["hello#1"]
    assert pair.written.read_text() == CONTENT


def test_a_failover_resumes_the_claude_session_by_its_id(
    provider: ProviderServer, pair: Pair
) -> None:
    first_tool_id = script(provider, pair)
    session, process = leader_working(pair, provider)
    b = pair.procs["b"]
    try:
        pair.procs["a"].kill()
        os.kill(process.pid, signal.SIGKILL)  # its supervisor too: nothing to adopt
        deadline = time.monotonic() + 30
        while _alive(process.pid, process.create_time) and time.monotonic() < deadline:
            time.sleep(0.02)  # it dies asynchronously; nothing to wait on
        provider.script(text("finished after resume"))
        seen = len(provider.message_requests)
        pair.until("b to take over", lambda: pair.leader_pid() == b.pid)
        b.wait(timeout=180)
        assert b.returncode == 0, (pair.homes["b"] / "stderr.txt").read_text()
    finally:
        kill_leftover_group(process.pid, process.pgid, process.create_time, 1.0)
    events = pair.events()
    (end1,) = events_of(events, AttemptFinished, "hello#1")
    assert end1.outcome is Outcome.INTERRUPTED
    (dispatch2,) = events_of(events, AttemptDispatched, "hello#2")
    assert dispatch2.resume_of == "hello#1"
    (end2,) = events_of(events, AttemptFinished, "hello#2")
    assert end2.outcome is Outcome.SUCCEEDED and end2.session_id == session.session_id
    resumed = provider.message_requests[seen:]
    assert resumed, "the resumed attempt made no model request"
    assert PROMPT in resumed[0].user_texts()
    assert first_tool_id in tool_results(resumed[0])
    assert CONTENT.strip() in json.dumps(resumed[0].body)
