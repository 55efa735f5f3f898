"""The claude backend: the real claude-agent-sdk and its bundled CLI, offline.

Each run goes to the scripted provider (``tests/provider``); the CLI really executes
the tools the script asks for, in a temporary workdir.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from claude_agent_sdk import ResultMessage, SystemMessage

from tests.provider.server import TEST_API_KEY, Fault, ProviderServer, TurnUsage, text, tool
from trafficcontrol.adapters.agents.claude_sdk import (
    REDACTED,
    RUN_MARKER_ENV,
    AttemptStream,
    ClaudeBackend,
    JsonlLog,
)
from trafficcontrol.domain.model import AgentSettings, AttemptId, Outcome, ProjectId, TaskId, Usage
from trafficcontrol.errors import AgentError, ConfigError
from trafficcontrol.ports import AgentRequest
from trafficcontrol.testing.fakes import RecordingReporter

pytestmark = pytest.mark.claude
# Registers ``provider`` and ``claude_env`` (importing them by name trips ruff's F811).


MODEL = "sonnet"  # an alias the CLI resolves to its current Sonnet: no retirement dates here


def make_request(
    tmp_path: Path,
    *,
    prompt: str = "Create hello.txt",
    tools: tuple[str, ...] = ("Write",),
    attempt: str = "a1",
    resume: str | None = None,
    **settings: Any,
) -> AgentRequest:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return AgentRequest(
        attempt_id=AttemptId(attempt),
        task_id=TaskId("t1"),
        project_id=ProjectId("p1"),
        attempt_no=1,
        title="hello",
        prompt=prompt,
        workdir=workdir,
        log_path=tmp_path / "logs" / f"{attempt}.jsonl",
        model=MODEL,
        settings=AgentSettings(allowed_tools=list(tools), **settings),
        resume_session_id=resume,
    )


def log_records(request: AgentRequest) -> list[dict[str, Any]]:
    return [json.loads(line) for line in request.log_path.read_text().splitlines()]


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def background_sleeper(token: str) -> str:
    """A Bash command that leaves a process behind, in a session of its own (the Bash
    tool runs every command so); it calls the provider once it runs, see ``wait_for``."""
    code = (
        "import os, time, urllib.request as r; "
        f'r.urlopen(os.environ["ANTHROPIC_BASE_URL"] + "/api/hello?{token}").close(); '
        "time.sleep(300)"
    )
    return f"{sys.executable} -c '{code}' {token} >/dev/null 2>&1 &"


def find_process(token: str) -> psutil.Process:
    (found,) = [p for p in psutil.process_iter(["cmdline"]) if token in (p.info["cmdline"] or [])]
    return found


async def wait_for(provider: ProviderServer, *, sleeper: str | None = None) -> None:
    """Until a request is stalled (and the sleeper ``sleeper`` has called in)."""

    def ready(p: ProviderServer) -> bool:
        called = sleeper is None or any(r.query == sleeper for r in p.requests)
        return called and p.stalled >= 1

    await asyncio.to_thread(provider.wait_for, ready, 60)


# -- real runs ------------------------------------------------------------------------------
async def test_scripted_run_writes_the_file_and_reports_session_usage_and_log(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    request = make_request(tmp_path, tools=("Write", "Bash"), env={"TC_PROBE": "probe-value"})
    target = request.workdir / "hello.txt"
    provider.script(
        tool(
            "Write",
            {"file_path": str(target), "content": "hello from the script\n"},
            usage=TurnUsage(100, 20, 30, 40),
        ),
        # Puts the API key into a tool result: the log must still not contain it.
        tool(
            "Bash",
            {"command": "printenv ANTHROPIC_API_KEY TC_PROBE", "description": "show env"},
            usage=TurnUsage(50, 10, 5, 6),
        ),
        text("wrote hello.txt", usage=TurnUsage(7, 3, 2, 1)),
    )
    reporter = RecordingReporter()

    result = await ClaudeBackend(environ=claude_env).run(request, reporter)

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert target.read_text() == "hello from the script\n"
    assert result.session_id is not None
    assert reporter.sessions == [result.session_id]
    assert result.usage is not None
    assert (
        result.usage.input_tokens,
        result.usage.output_tokens,
        result.usage.cache_read_tokens,
        result.usage.cache_creation_tokens,
    ) == (157, 33, 37, 47)
    assert result.usage.cost_usd is not None and result.usage.cost_usd > 0
    # Each scripted turn was reported once, as it streamed, with its input and cache
    # tokens (output tokens are only final in the result).
    assert [
        (u.input_tokens, u.cache_read_tokens, u.cache_creation_tokens)
        for _model, u in reporter.turns
    ] == [(100, 30, 40), (50, 5, 6), (7, 2, 1)]
    assert sum(u.output_tokens for _m, u in reporter.turns) <= result.usage.output_tokens
    assert all(model is not None and "sonnet" in model for model, _u in reporter.turns)
    # The CLI led its own process group, and it is gone now.
    ((pid, pgid, create_time),) = reporter.processes
    assert pgid == pid != os.getpgrp() and create_time > 0
    assert gone(pid)
    # What the CLI sent: our prompt, the resolved model, three turns.
    first, *_ = requests = provider.message_requests
    assert len(requests) == 3
    assert "Create hello.txt" in first.user_texts()
    assert first.model is not None and "sonnet" in first.model

    log_text = request.log_path.read_text()
    kinds = [r["type"] for r in log_records(request)]
    assert kinds[0] == "SystemMessage" and kinds[-1] == "ResultMessage"
    assert {"AssistantMessage", "UserMessage"} <= set(kinds)
    assert TEST_API_KEY not in log_text
    assert REDACTED in log_text and "probe-value" in log_text  # the Bash output, redacted
    assert [p.name for p in request.log_path.parent.iterdir()] == [request.log_path.name]


async def test_resume_keeps_the_session_and_reports_only_this_runs_tokens(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    backend = ClaudeBackend(environ=claude_env)
    provider.script(text("first answer", usage=TurnUsage(1000, 100)))
    first = await backend.run(make_request(tmp_path, prompt="first prompt"), RecordingReporter())
    assert first.session_id is not None

    provider.script(text("second answer", usage=TurnUsage(10, 1)))
    reporter = RecordingReporter()
    second = await backend.run(
        make_request(tmp_path, prompt="second prompt", attempt="a2", resume=first.session_id),
        reporter,
    )

    assert second.outcome is Outcome.SUCCEEDED, second.error
    assert reporter.sessions == [first.session_id] and second.session_id == first.session_id
    # The CLI's cost would include the first run's again: unknown rather than double counted.
    assert second.usage == Usage(input_tokens=10, output_tokens=1, cost_usd=None)
    assert "first prompt" in provider.message_requests[-1].user_texts()  # history replayed


async def test_api_error_becomes_a_failed_result_with_the_reason(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    provider.add_fault(Fault.http(400, times=10))  # 400 is never retried by the CLI
    reporter = RecordingReporter()

    result = await ClaudeBackend(environ=claude_env).run(make_request(tmp_path), reporter)

    assert result.outcome is Outcome.FAILED
    assert result.error is not None
    assert "api_error_status=400" in result.error and "terminal_reason=api_error" in result.error
    assert result.exit_code == 1
    assert result.session_id is not None and reporter.sessions == [result.session_id]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
async def test_cli_exit_is_a_failed_result_explained_by_its_stderr(
    claude_env: dict[str, str], tmp_path: Path
) -> None:
    # As root, bypassPermissions without IS_SANDBOX makes the CLI exit at once, and
    # only stderr says why.
    environ = {**claude_env, "IS_SANDBOX": ""}
    request = make_request(tmp_path, permission_mode="bypassPermissions")

    result = await ClaudeBackend(environ=environ).run(request, RecordingReporter())

    assert result.outcome is Outcome.FAILED
    assert result.exit_code == 1
    assert result.error is not None and "root" in result.error
    assert any(r["type"] == "stderr" for r in log_records(request))


async def test_a_missing_cli_is_an_agent_error(claude_env: dict[str, str], tmp_path: Path) -> None:
    backend = ClaudeBackend(environ=claude_env, cli_path=str(tmp_path / "no-claude"))
    with pytest.raises(AgentError, match="no-claude"):
        await backend.run(make_request(tmp_path), RecordingReporter())


# -- stopping -------------------------------------------------------------------------------
async def test_cancel_stops_the_cli(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    provider.add_fault(Fault.stall())
    reporter = RecordingReporter()
    run = asyncio.create_task(
        ClaudeBackend(environ=claude_env).run(make_request(tmp_path), reporter)
    )
    await wait_for(provider)
    ((pid, _, _),) = reporter.processes
    assert not gone(pid)

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert gone(pid)


async def test_cancel_stops_what_the_agent_left_outside_its_process_group(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    token = f"tc-sleeper-{uuid.uuid4().hex}"
    provider.script(tool("Bash", {"command": background_sleeper(token), "description": "bg"}))
    provider.add_fault(Fault.stall(after=1))  # the turn after the Bash call hangs
    reporter = RecordingReporter()
    request = make_request(tmp_path, tools=("Bash",))
    run = asyncio.create_task(ClaudeBackend(environ=claude_env).run(request, reporter))
    await wait_for(provider, sleeper=token)
    sleeper = find_process(token)
    ((pid, _, _),) = reporter.processes
    assert os.getpgid(sleeper.pid) != pid  # out of reach of the group kill
    assert sleeper.environ()[RUN_MARKER_ENV] == str(request.log_path)

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert gone(pid) and gone(sleeper.pid)


async def test_a_finished_run_leaves_no_background_process(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    token = f"tc-sleeper-{uuid.uuid4().hex}"
    provider.script(tool("Bash", {"command": background_sleeper(token), "description": "bg"}))
    # Catch the sleeper while the run is still on (its next request), to know its pid.
    provider.add_fault(Fault.stall(after=1))
    backend = ClaudeBackend(environ=claude_env)
    run = asyncio.create_task(
        backend.run(make_request(tmp_path, tools=("Bash",)), RecordingReporter())
    )
    await wait_for(provider, sleeper=token)
    sleeper = find_process(token)
    provider.release()

    result = await run

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert gone(sleeper.pid)


# -- message handling, without the CLI -------------------------------------------------------
class NotAMessage:
    def __repr__(self) -> str:
        return "NotAMessage()"


@dataclass
class FutureMessage:
    kind: str
    payload: dict[str, Any]


def result_message(**fields: Any) -> ResultMessage:
    base: dict[str, Any] = {
        "subtype": "success",
        "duration_ms": 5,
        "duration_api_ms": 3,
        "is_error": False,
        "num_turns": 1,
        "session_id": "s-1",
        "total_cost_usd": 0.25,
        "usage": {"input_tokens": 3, "output_tokens": 2, "cache_read_input_tokens": 1},
    }
    return ResultMessage(**{**base, **fields})


def test_messages_of_unknown_types_are_logged_and_skipped(tmp_path: Path) -> None:
    log_path = tmp_path / "deep" / "log.jsonl"
    reporter = RecordingReporter()
    with JsonlLog(log_path, secrets=[]) as log:
        stream = AttemptStream(log, reporter, resumed=False)
        stream.feed(NotAMessage())
        stream.feed(FutureMessage("brand_new", {"nested": {1, 2}}))  # a set is not JSON
        stream.feed(SystemMessage(subtype="init", data={"session_id": "s-1"}))
        stream.feed(result_message())
        result = stream.outcome(exit_code=0, error=None)

    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["type"] for r in records] == [
        "NotAMessage",
        "FutureMessage",
        "SystemMessage",
        "ResultMessage",
    ]
    assert records[0]["repr"] == "NotAMessage()"
    assert records[1]["data"]["kind"] == "brand_new"
    assert reporter.sessions == ["s-1"]
    assert result.outcome is Outcome.SUCCEEDED
    assert result.usage == Usage(
        input_tokens=3, output_tokens=2, cache_read_tokens=1, cost_usd=0.25
    )


def test_an_error_result_is_failed_with_its_reason_and_secrets_redacted(tmp_path: Path) -> None:
    secret = "sk-ant-very-secret-value"
    with JsonlLog(tmp_path / "log.jsonl", secrets=[secret]) as log:
        stream = AttemptStream(log, RecordingReporter(), resumed=True)
        stream.feed(
            result_message(
                is_error=True,
                api_error_status=529,
                terminal_reason="api_error",
                result=f"API Error: 529 overloaded (key {secret})",
            )
        )
        result = stream.outcome(exit_code=1, error=None)

    assert result.outcome is Outcome.FAILED and result.exit_code == 1
    assert result.error == (
        "Claude Code failed (terminal_reason=api_error, api_error_status=529, subtype=success)"
        f": API Error: 529 overloaded (key {REDACTED})"
    )
    assert result.usage is not None and result.usage.cost_usd is None  # resumed
    assert secret not in (tmp_path / "log.jsonl").read_text()


def test_a_stream_without_result_is_failed(tmp_path: Path) -> None:
    with JsonlLog(tmp_path / "l.jsonl", secrets=[]) as log:
        stream = AttemptStream(log, RecordingReporter(), resumed=False)
        result = stream.outcome(exit_code=0, error=None)
    assert result.outcome is Outcome.FAILED and result.error == "Claude Code ended without a result"


# -- check ---------------------------------------------------------------------------------
def test_check_passes_with_the_test_environment(claude_env: dict[str, str]) -> None:
    ClaudeBackend(environ=claude_env).check()


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS keeps the login in the Keychain")
def test_check_fails_clearly_without_credentials(tmp_path: Path) -> None:
    environ = {"HOME": str(tmp_path), "PATH": os.defpath, "ANTHROPIC_API_KEY": ""}
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        ClaudeBackend(environ=environ).check()


def test_check_accepts_a_credentials_file_in_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / ".credentials.json").write_text("{}")
    ClaudeBackend(environ={"CLAUDE_CONFIG_DIR": str(tmp_path)}).check()


def test_check_fails_clearly_with_a_missing_cli_path(
    claude_env: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "bin" / "claude"
    with pytest.raises(ConfigError, match=r"cli_path .*bin/claude.* not an executable"):
        ClaudeBackend(environ=claude_env, cli_path=str(missing)).check()


def test_the_module_imports_without_the_sdk() -> None:
    code = (
        "import sys; sys.modules['claude_agent_sdk'] = None; "
        "import trafficcontrol.adapters.agents.claude_sdk as m; print(m.ClaudeBackend.name)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "claude"


def test_check_says_how_to_install_a_missing_sdk(
    claude_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "claude_agent_sdk", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"trafficcontrol\[claude\]"):
        ClaudeBackend(environ=claude_env).check()


def test_rate_limit_events_are_reported_as_official_window_figures(tmp_path: Path) -> None:
    from claude_agent_sdk import RateLimitEvent, RateLimitInfo

    reporter = RecordingReporter()
    with JsonlLog(tmp_path / "log.jsonl", secrets=[]) as log:
        stream = AttemptStream(log, reporter, resumed=False)
        info = RateLimitInfo(
            status="allowed_warning",
            resets_at=1_800_000_000,
            rate_limit_type="seven_day_opus",
            utilization=0.82,
        )
        stream.feed(RateLimitEvent(rate_limit_info=info, uuid="u", session_id="s"))
        stream.feed(
            RateLimitEvent(
                rate_limit_info=RateLimitInfo(status="rejected"), uuid="v", session_id="s"
            )
        )
    assert reporter.rate_limits == [
        ("seven_day_opus", "allowed_warning", 0.82, 1_800_000_000.0),
        ("unknown", "rejected", None, None),
    ]


async def test_the_clis_rate_limit_event_from_provider_headers_is_reported(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    # Claude Code reads the unified rate-limit headers on subscription (OAuth) logins.
    reset = 1_900_000_000
    provider.response_headers = {
        "anthropic-ratelimit-unified-status": "allowed",
        "anthropic-ratelimit-unified-reset": str(reset),
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-5h-reset": str(reset),
    }
    provider.script(text("hi"))
    env = {**claude_env, "ANTHROPIC_API_KEY": "", "CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-test"}
    reporter = RecordingReporter()

    result = await ClaudeBackend(environ=env).run(make_request(tmp_path, prompt="hi"), reporter)

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert ("five_hour", "allowed", None, float(reset)) in reporter.rate_limits
    assert "sk-ant-oat01-test" not in (tmp_path / "logs" / "a1.jsonl").read_text()
