"""Session rotation: a worker whose context passes the threshold hands off to a fresh one.

The pure part drives ``decide`` and the fold directly; the end-to-end part runs a real
in-process orchestrator with the claude backend (claude-agent-sdk and its bundled CLI)
against the scripted provider (``tests/provider``), in a real git worktree.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.domain_driver import apply_decision, canonical, replay, roundtrip
from tests.helpers import events_of, git_repo, journal_events, run_until_idle, submit, task
from tests.provider.server import (
    Fault,
    ProviderServer,
    RecordedRequest,
    Turn,
    TurnUsage,
    text,
    tool,
)
from trafficcontrol.adapters.agents.claude_sdk import ClaudeBackend
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.cli.views import attempt_dict
from trafficcontrol.domain.decide import Decision, Dispatch, SchedulerConfig, StopAttempt, decide
from trafficcontrol.domain.events import (
    AgentSessionStarted,
    AnyEvent,
    AttemptDispatched,
    AttemptFinished,
    AttemptStopRequested,
    BacklogSubmitted,
    TurnUsageReported,
    WorkspacePrepared,
)
from trafficcontrol.domain.interrupts import continues, resumable
from trafficcontrol.domain.model import (
    AgentSettings,
    AttemptId,
    OnInterrupt,
    Outcome,
    ProjectId,
    ProjectSpec,
    StopReason,
    TaskId,
    TaskSpec,
    TaskState,
    Usage,
)
from trafficcontrol.domain.rotation import (
    EXTRACTED_NOTE,
    HANDOFF_HEADING,
    HANDOFF_PROMPT,
    RotationConfig,
    extracted_handoff,
    rotation_error,
    rotation_stats,
    with_handoff,
)
from trafficcontrol.domain.state import State, apply
from trafficcontrol.errors import ConfigError
from trafficcontrol.settings import RunSettings, Settings, load_settings

WINDOW = 10_000
ROTATION = RotationConfig(window_tokens=WINDOW)  # rotate at 45%: 4,500 tokens
CONFIG = SchedulerConfig(rotation=ROTATION)
CLAUDE = ProjectSpec(id=ProjectId("api"), path="/virtual/api", is_git=True, agent="claude")


# -- the pure part --------------------------------------------------------------------------
class Journal:
    """The domain without the shell: every event is recorded, then folded."""

    def __init__(self, *projects: ProjectSpec, tasks: tuple[TaskSpec, ...]) -> None:
        self.state = State()
        self.events: list[AnyEvent] = []
        self.now = 0.0
        self.emit(BacklogSubmitted(at=0.0, source="test", projects=list(projects), tasks=[*tasks]))

    def emit(self, event: AnyEvent) -> None:
        self.events.append(event)
        apply(self.state, event)

    def decide(self, config: SchedulerConfig = CONFIG) -> Decision:
        self.now += 1.0
        decision = decide(self.state, self.now, config)
        self.events += apply_decision(self.state, decision, self.now)
        return decision

    def turn(self, attempt: str, input_tokens: int, cache_read: int = 0) -> None:
        usage = Usage(input_tokens=input_tokens, output_tokens=7, cache_read_tokens=cache_read)
        self.emit(
            TurnUsageReported(at=self.now, attempt_id=AttemptId(attempt), model=None, usage=usage)
        )

    def workdir(self, attempt: str, path: str = "/virtual/worktrees/t-1") -> None:
        self.emit(
            WorkspacePrepared(at=self.now, attempt_id=AttemptId(attempt), path=path, branch="b")
        )
        self.emit(AgentSessionStarted(at=self.now, attempt_id=AttemptId(attempt), session_id="s1"))

    def end_rotated(self, attempt: str, handoff: str | None = "what is done, what is left") -> None:
        record = self.state.attempts[AttemptId(attempt)]
        self.emit(
            AttemptFinished(
                at=self.now,
                attempt_id=AttemptId(attempt),
                outcome=Outcome.INTERRUPTED,
                error=rotation_error(record.context_tokens, WINDOW),
                session_id=record.session_id,
                handoff=handoff,
            )
        )


def stops(decision: Decision) -> list[tuple[str, StopReason]]:
    return [(c.attempt_id, c.reason) for c in decision.commands if isinstance(c, StopAttempt)]


def claude_task(task_id: str = "t", **fields: Any) -> TaskSpec:
    return TaskSpec(id=TaskId(task_id), project=CLAUDE.id, title=task_id, prompt="do it", **fields)


def started(*tasks: TaskSpec, project: ProjectSpec = CLAUDE) -> Journal:
    journal = Journal(project, tasks=tasks or (claude_task(),))
    decision = journal.decide()
    assert all(isinstance(c, Dispatch) for c in decision.commands) and decision.commands
    for command in decision.commands:
        assert isinstance(command, Dispatch)
        journal.workdir(command.attempt_id, f"/virtual/worktrees/{command.attempt_id}")
    return journal


def test_decide_rotates_a_session_once_when_its_context_passes_the_threshold() -> None:
    journal = started()
    journal.turn("t#1", 1_000)
    assert stops(journal.decide()) == []
    journal.turn("t#1", 2_000, cache_read=2_499)  # 4,499: one token short of 45%
    assert stops(journal.decide()) == []
    assert journal.state.attempts[AttemptId("t#1")].context_tokens == 4_499

    journal.turn("t#1", 1_500, cache_read=3_000)  # 4,500: the threshold
    assert stops(journal.decide()) == [("t#1", StopReason.ROTATE)]
    (stop,) = [e for e in journal.events if isinstance(e, AttemptStopRequested)]
    assert stop.reason is StopReason.ROTATE  # journaled as every stop, before acting
    assert journal.state.attempts[AttemptId("t#1")].stop_reason is StopReason.ROTATE

    # Never twice: not on the next pass, nor when a later turn (the handoff's) reports more.
    assert stops(journal.decide()) == []
    journal.turn("t#1", 6_000)
    assert stops(journal.decide()) == []
    attempt = journal.state.attempts[AttemptId("t#1")]
    assert (attempt.context_start, attempt.context_tokens, attempt.context_peak) == (
        1_000,
        6_000,
        6_000,
    )


def test_only_rotating_backends_rotate_and_never_a_session_that_started_full() -> None:
    sim = ProjectSpec(id=ProjectId("sim"), path="/virtual/sim", agent="sim")
    sim_task = TaskSpec(id=TaskId("s"), project=sim.id, title="s", prompt="do it")
    journal = Journal(CLAUDE, sim, tasks=(claude_task("full"), claude_task("grew"), sim_task))
    journal.decide()
    journal.turn("s#1", 100)
    journal.turn("s#1", 9_000)  # sim cannot be asked for a handoff
    journal.turn("full#1", 5_000)  # a fresh session would start as full: rotating loops
    journal.turn("full#1", 9_000)
    journal.turn("grew#1", 100)
    journal.turn("grew#1", 9_000)
    assert stops(journal.decide()) == [("grew#1", StopReason.ROTATE)]

    # Off: never.
    journal = started()
    journal.turn("t#1", 100)
    journal.turn("t#1", 9_000)
    off = SchedulerConfig(rotation=RotationConfig(window_tokens=WINDOW, rotate_at=None))
    assert stops(journal.decide(off)) == []
    # A larger window for the family: not yet.
    wide = RotationConfig(window_tokens=WINDOW, family_windows={"sonnet": 100_000})
    assert stops(journal.decide(SchedulerConfig(rotation=wide))) == []
    assert stops(journal.decide()) == [("t#1", StopReason.ROTATE)]


def test_a_timeout_and_a_rotation_in_one_pass_make_one_stop() -> None:
    journal = started(claude_task(timeout_s=10.0))
    journal.turn("t#1", 100)
    journal.turn("t#1", 9_000)
    journal.now = 100.0
    assert stops(journal.decide()) == [("t#1", StopReason.TIMEOUT)]
    assert stops(journal.decide()) == []


def test_a_rotated_attempt_is_continued_in_its_worktree_by_a_fresh_session() -> None:
    # on_interrupt = fail: a rotation is no interruption the policy is about.
    project = ProjectSpec(
        id=CLAUDE.id, path=CLAUDE.path, is_git=True, agent="claude", on_interrupt=OnInterrupt.FAIL
    )
    journal = started(project=project)
    journal.turn("t#1", 100)
    journal.turn("t#1", 5_000)
    journal.decide()
    journal.end_rotated("t#1")
    state = journal.state
    record = state.tasks[TaskId("t")]
    assert record.state is TaskState.READY and record.failures == 0
    rotated = state.attempts[AttemptId("t#1")]
    assert rotated.handoff == "what is done, what is left"
    assert rotated.error == "rotated: context 5000 tokens (50% of window)"
    assert resumable(state, TaskId("t")) is None  # the history is what had to go

    (dispatch,) = [c for c in journal.decide().commands if isinstance(c, Dispatch)]
    assert dispatch.attempt_id == "t#2" and dispatch.resume_of is None
    assert continues(state, AttemptId("t#2")) is rotated
    # The continuation is a session like any: it rotates when it grows past the threshold.
    journal.workdir("t#2", "/virtual/worktrees/t#1")
    journal.turn("t#2", 300)
    journal.turn("t#2", 4_600)
    assert stops(journal.decide()) == [("t#2", StopReason.ROTATE)]


def test_continues_only_the_attempt_just_before_after_a_rotation() -> None:
    journal = started()
    assert continues(journal.state, AttemptId("t#1")) is None  # the first attempt
    journal.turn("t#1", 100)
    journal.emit(AttemptFinished(at=1.0, attempt_id=AttemptId("t#1"), outcome=Outcome.INTERRUPTED))
    (dispatch,) = [c for c in journal.decide().commands if isinstance(c, Dispatch)]
    assert dispatch.resume_of == "t#1"  # a shutdown's interruption resumes the session
    assert continues(journal.state, AttemptId("t#2")) is None


def test_a_resumed_session_rotates_by_its_first_turn_not_the_resume() -> None:
    journal = started()
    journal.turn("t#1", 100)
    journal.turn("t#1", 4_400)
    journal.emit(AttemptFinished(at=1.0, attempt_id=AttemptId("t#1"), outcome=Outcome.INTERRUPTED))
    journal.decide()  # t#2 resumes t#1's session
    journal.workdir("t#2", "/virtual/worktrees/t#1")
    journal.turn("t#2", 4_700)  # its first turn is the whole session so far
    assert stops(journal.decide()) == [("t#2", StopReason.ROTATE)]


def test_a_task_rotates_at_most_max_rotations_times() -> None:
    config = SchedulerConfig(rotation=RotationConfig(window_tokens=WINDOW, max_rotations=2))
    journal = started()
    for n in (1, 2, 3):
        attempt = f"t#{n}"
        if n > 1:
            journal.decide(config)
            journal.workdir(attempt)
        journal.turn(attempt, 100)
        journal.turn(attempt, 5_000)
        decision = journal.decide(config)
        if n < 3:
            assert stops(decision) == [(attempt, StopReason.ROTATE)]
            journal.end_rotated(attempt)
        else:
            assert stops(decision) == []
    stats = rotation_stats(journal.state, ROTATION)
    assert (stats.sessions, stats.rotations) == (3, 2)
    assert stats.delegation_rate == pytest.approx(2 / 3)
    assert stats.peak_utilisation == pytest.approx(0.5)
    assert [u.rotated for u in stats.by_session] == [True, True, False]


def test_replay_of_a_rotation_equals_the_live_state() -> None:
    journal = started()
    journal.turn("t#1", 100)
    journal.turn("t#1", 5_000)
    journal.decide()
    journal.turn("t#1", 5_200)  # the handoff's own turn
    journal.end_rotated("t#1")
    journal.decide()
    journal.workdir("t#2", "/virtual/worktrees/t#1")
    journal.turn("t#2", 600)
    journal.emit(AttemptFinished(at=9.0, attempt_id=AttemptId("t#2"), outcome=Outcome.SUCCEEDED))
    assert journal.state.tasks[TaskId("t")].state is TaskState.DONE
    live = canonical(journal.state)
    assert canonical(replay(journal.events)) == live
    assert canonical(replay(roundtrip(journal.events))) == live  # through the journal's JSON
    assert live["attempts"]["t#1"]["handoff"] == "what is done, what is left"
    assert live["attempts"]["t#1"]["context_peak"] == 5_200


def test_the_next_prompt_carries_the_handoff_never_the_transcript() -> None:
    prompt = with_handoff("do it", "  done: a.py. left: tests.  ")
    assert prompt == f"do it\n\n{HANDOFF_HEADING}\ndone: a.py. left: tests."
    assert extracted_handoff([], []) is None
    texts = [f"Step {i} is done. More detail that is dropped." for i in range(12)]
    extracted = extracted_handoff(texts, ["/w/a.py", "/w/b.py", "/w/a.py"])
    assert extracted is not None
    lines = extracted.splitlines()
    assert lines[0] == EXTRACTED_NOTE
    assert lines[1:-1] == [f"[message {i - 3}] Step {i} is done." for i in range(4, 12)]
    assert lines[-1] == "Files touched: /w/a.py, /w/b.py"


def test_a_handoff_is_extracted_from_a_claude_log(tmp_path: Path) -> None:
    def assistant(*content: dict[str, Any], parent: str | None = None) -> str:
        data = {"content": list(content), "parent_tool_use_id": parent}
        return json.dumps({"type": "AssistantMessage", "data": data})

    def result(*content: dict[str, Any]) -> str:
        return json.dumps({"type": "UserMessage", "data": {"content": list(content)}})

    log = tmp_path / "1.jsonl"
    log.write_text(
        "\n".join(
            [
                json.dumps({"type": "SystemMessage", "data": {"subtype": "init"}}),
                assistant({"text": "I wrote the parser. Next come the tests."}),
                assistant({"id": "x", "name": "Write", "input": {"file_path": "/w/p.py"}}),
                result({"tool_use_id": "x", "content": "ok", "is_error": None}),
                assistant({"id": "z", "name": "Edit", "input": {"file_path": "/w/q.py"}}),
                result({"tool_use_id": "z", "content": "denied", "is_error": True}),
                assistant({"text": "A sub-agent's words."}, parent="toolu_1"),
                assistant({"id": "y", "name": "Bash", "input": {"command": "ls"}}),
                '{"type": "AssistantMess',  # cut by a crash
            ]
        )
    )
    backend = ClaudeBackend(environ={})
    assert backend.handoff_from_log(log) == "\n".join(
        [EXTRACTED_NOTE, "[message 1] I wrote the parser.", "Files touched: /w/p.py"]
    )
    assert backend.handoff_from_log(tmp_path / "missing.jsonl") is None


def test_context_settings_reach_the_scheduler(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[context]\nwindow_tokens = 1000000\nrotate_at = 0.4\nbackends = ["claude"]\n')
    rotation = load_settings(path).scheduler().rotation
    assert (rotation.window_tokens, rotation.rotate_at) == (1_000_000, 0.4)
    path.write_text("[context]\nrotate_at = 1.5\n")
    with pytest.raises(ConfigError, match="rotate_at"):
        load_settings(path)


# -- end to end: the real Claude Code CLI ---------------------------------------------------
SUMMARY = "Done: one.txt written. Left: two.txt. Decision: plain text files. Open: none."
PREAMBLE = "Now the second file."


def tool_use_ids(request: RecordedRequest) -> list[str]:
    """Ids of every tool_use and tool_result block in the request's messages."""
    ids = []
    for message in request.body.get("messages", []):
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") in ("tool_use", "tool_result"):
                ids.append(block.get("id") or block.get("tool_use_id"))
    return ids


def typed(request: RecordedRequest) -> list[str]:
    """The user texts of a request but the context Claude Code attaches itself."""
    return [t for t in request.user_texts() if not t.startswith("<system-reminder>")]


def asking_handoff(request: RecordedRequest) -> bool:
    return HANDOFF_PROMPT in request.user_texts()


def rotation_app(tmp_path: Path, claude_env: dict[str, str]) -> tuple[App, Path]:
    repo = tmp_path / "repo"
    git_repo(repo)
    home = tmp_path / "home"
    settings = Settings(
        run=RunSettings(grace_s=1.0, request_poll_s=0.05),
        context=RotationConfig(window_tokens=WINDOW),
    )
    app = App(Home(home), environ={**os.environ, **claude_env}, settings=settings)
    project = ProjectSpec(
        id=ProjectId("repo"),
        path=str(repo),
        is_git=True,
        agent="claude",
        model="sonnet",
        settings=AgentSettings(allowed_tools=["Write"], max_turns=10),
    )
    # A deadline, so a rotation that never came would end the run instead of hanging it.
    submit(app, [project], [task("hello", "repo", timeout_s=120.0)])
    return app, home / "worktrees" / "repo" / "hello-1"


def first_session(worktree: Path) -> tuple[Turn, Turn]:
    """Two Write turns; the second declares a context past 45% of the window (5,000 of
    10,000 tokens) and stalls after its text block: the CLI waits on it until stopped."""
    one = tool(
        "Write",
        {"file_path": str(worktree / "one.txt"), "content": "one\n"},
        usage=TurnUsage(1_000, 20),
    )
    two = tool(
        "Write",
        {"file_path": str(worktree / "two.txt"), "content": "two\n"},
        usage=TurnUsage(2_000, 20, cache_read_tokens=3_000),
        preamble=PREAMBLE,
    )
    return one, two


@pytest.mark.claude
async def test_a_full_claude_session_hands_off_to_a_fresh_session_in_its_worktree(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    app, worktree = rotation_app(tmp_path, claude_env)
    one, two = first_session(worktree)
    provider.script(one, two, text(SUMMARY), text("finished in the fresh session"))
    # message_start, ping, and the text block: the CLI has the turn's usage, not its tool.
    provider.add_fault(Fault.stall(after=1, mid_stream=True, after_events=5))
    try:
        orchestrator = await run_until_idle(app)
    finally:
        provider.release()

    state = orchestrator.state
    assert state.tasks[TaskId("hello")].state is TaskState.DONE
    events = journal_events(app.home.root)
    (stop,) = [e for e in events if isinstance(e, AttemptStopRequested)]
    assert (stop.attempt_id, stop.reason) == ("hello#1", StopReason.ROTATE)
    (end1,) = events_of(events, AttemptFinished, "hello#1")
    assert events.index(stop) < events.index(end1)
    assert end1.outcome is Outcome.INTERRUPTED
    assert end1.error == "rotated: context 5000 tokens (50% of window)"
    assert end1.handoff == SUMMARY
    # The handoff's own turn was reported like any turn (metered, and its context seen).
    contexts = [
        e.usage.input_tokens + e.usage.cache_read_tokens
        for e in events_of(events, TurnUsageReported, "hello#1")
    ]
    assert contexts[:2] == [1_000, 5_000] and len(contexts) == 3
    (dispatch2,) = events_of(events, AttemptDispatched, "hello#2")
    assert dispatch2.resume_of is None
    (ws1,) = events_of(events, WorkspacePrepared, "hello#1")
    (ws2,) = events_of(events, WorkspacePrepared, "hello#2")
    assert ws1.path == ws2.path == str(worktree)
    (session1,) = {e.session_id for e in events_of(events, AgentSessionStarted, "hello#1")}
    (session2,) = {e.session_id for e in events_of(events, AgentSessionStarted, "hello#2")}
    assert session1 != session2
    (end2,) = events_of(events, AttemptFinished, "hello#2")
    assert end2.outcome is Outcome.SUCCEEDED and end2.session_id == session2
    assert (worktree / "one.txt").read_text() == "one\n"
    assert not (worktree / "two.txt").exists()

    requests = provider.message_requests
    (asked,) = [i for i, r in enumerate(requests) if asking_handoff(r)]
    # The handoff resumed the first session: its history, then the question.
    handoff = requests[asked]
    assert typed(handoff) == ["do hello", HANDOFF_PROMPT]
    assert one.tool_uses[0].id in tool_use_ids(handoff)
    # The fresh session's first request: the task's prompt and the summary, nothing else.
    fresh = requests[asked + 1]
    assert typed(fresh) == [f"do hello\n\n{HANDOFF_HEADING}\n{SUMMARY}"]
    assert tool_use_ids(fresh) == []
    body = json.dumps(fresh.body)
    assert PREAMBLE not in body and HANDOFF_PROMPT not in body
    assert one.tool_uses[0].id not in body and session1 not in body

    # Metrics: per-session utilisation and the delegation rate; tc show's attempt view.
    stats = rotation_stats(state, app.settings.context)
    assert (stats.sessions, stats.rotations, stats.delegation_rate) == (2, 1, 0.5)
    assert stats.by_session[0].utilisation >= 0.5
    shown = attempt_dict(state.attempts[AttemptId("hello#1")])
    assert shown["context_peak"] >= 5_000 and shown["handoff"] == SUMMARY


@pytest.mark.claude
async def test_without_an_answer_the_handoff_is_extracted_from_the_session_log(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    app, worktree = rotation_app(tmp_path, claude_env)
    one, two = first_session(worktree)
    # Asked for its handoff, the model calls a tool instead: refused (no tools in the
    # handoff turn), and its one turn is over without a summary.
    three = worktree / "three.txt"
    handoff = tool("Write", {"file_path": str(three), "content": "three\n"})
    provider.script(one, two, handoff, text("finished in the fresh session"))
    provider.add_fault(Fault.stall(after=1, mid_stream=True, after_events=5))
    try:
        orchestrator = await run_until_idle(app)
    finally:
        provider.release()

    assert orchestrator.state.tasks[TaskId("hello")].state is TaskState.DONE
    events = journal_events(app.home.root)
    (end1,) = events_of(events, AttemptFinished, "hello#1")
    expected = "\n".join(
        [EXTRACTED_NOTE, f"[message 1] {PREAMBLE}", f"Files touched: {worktree / 'one.txt'}"]
    )
    assert end1.handoff == expected
    assert not three.exists()
    requests = provider.message_requests
    (asked,) = [i for i, r in enumerate(requests) if asking_handoff(r)]
    assert typed(requests[asked + 1]) == [f"do hello\n\n{HANDOFF_HEADING}\n{expected}"]


@pytest.mark.claude
async def test_a_shutdown_cuts_the_handoff_short_and_the_next_start_continues(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    app, worktree = rotation_app(tmp_path, claude_env)
    one, two = first_session(worktree)
    provider.script(one, two, text("finished after the restart"))
    provider.add_fault(Fault.stall(after=1, mid_stream=True, after_events=5))
    provider.add_fault(Fault.stall(after=1))  # the handoff's request: held until the end
    lock = app.run_lock()
    assert lock.try_acquire()
    try:
        orchestrator, _notes = app.start()
        orchestrator.check_backends()
        run = asyncio.create_task(orchestrator.run(until_idle=True))
        try:
            await asyncio.to_thread(provider.wait_for, lambda p: p.stalled >= 2, 90)
        finally:
            orchestrator.stop()
            await run
    finally:
        lock.release()

    events = journal_events(app.home.root)
    assert [(e.attempt_id, e.reason) for e in events if isinstance(e, AttemptStopRequested)] == [
        ("hello#1", StopReason.ROTATE)
    ]
    (end1,) = events_of(events, AttemptFinished, "hello#1")
    assert end1.outcome is Outcome.INTERRUPTED
    assert end1.error == "rotated: context 5000 tokens (50% of window)"
    extracted = "\n".join(
        [EXTRACTED_NOTE, f"[message 1] {PREAMBLE}", f"Files touched: {worktree / 'one.txt'}"]
    )
    assert end1.handoff == extracted
    assert asking_handoff(provider.message_requests[-1])  # asked, never answered

    try:
        second = await run_until_idle(App(app.home, environ=app.environ, settings=app.settings))
    finally:
        provider.release()
    assert second.state.tasks[TaskId("hello")].state is TaskState.DONE
    events = journal_events(app.home.root)
    (dispatch2,) = events_of(events, AttemptDispatched, "hello#2")
    assert dispatch2.resume_of is None
    (ws2,) = events_of(events, WorkspacePrepared, "hello#2")
    assert ws2.path == str(worktree)
    fresh = provider.message_requests[-1]
    assert typed(fresh) == [f"do hello\n\n{HANDOFF_HEADING}\n{extracted}"]
