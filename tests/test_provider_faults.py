"""Provider faults, seen through the real clients: what evidence each failed attempt
carries, how it is classified, and that no client retried behind the orchestrator;
then the evidence the claude and command backends give without a provider.

The api backend runs the real ``anthropic`` client; the claude backend the real
Claude Code CLI (a few cases only: each run costs a second or two). Every fault
is queued for more requests than one, so a hidden retry would show as a second
request at the server.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from tests.helpers import FixedClock, agent_request, claude_request, log_records
from tests.provider.server import Fault, FaultKind, ProviderServer, TurnUsage, text
from tests.test_api_agent import MODEL, make_request
from trafficcontrol.adapters.agents.anthropic_api import DEFAULT_IDLE_TIMEOUT_S, ApiBackend
from trafficcontrol.adapters.agents.claude_sdk import AttemptStream, ClaudeBackend, JsonlLog
from trafficcontrol.adapters.agents.command import CommandBackend
from trafficcontrol.adapters.agents.limit_errors import shorten
from trafficcontrol.domain.failures import FailureClass, classify
from trafficcontrol.domain.model import (
    AgentSettings,
    FailureEvidence,
    Outcome,
    Usage,
)
from trafficcontrol.ports import AgentRequest, AgentResult
from trafficcontrol.testing.fakes import RecordingReporter

IDLE_S = 1.0
"""The api backend's own idle timeout where the provider stalls: the call ends by it.
Other cases keep the default, so a slow machine cannot turn them into timeouts."""
TIMES = 3
"""How many requests each fault hits: more than one, so a retry would meet it again."""

T, L, P = FailureClass.TRANSIENT, FailureClass.LIMIT, FailureClass.PERMANENT


def without_message(failure: FailureEvidence | None) -> FailureEvidence | None:
    return None if failure is None else msgspec.structs.replace(failure, message="")


@dataclass(frozen=True)
class Case:
    fault: Fault
    evidence: FailureEvidence
    failure_class: FailureClass
    error: str
    """How the attempt's error starts."""
    kept: bool = True
    """The server kept the turn for the retry (False: still held by a stalled handler)."""


API_CASES = {
    "429 with retry-after": Case(
        Fault.http(429, retry_after=7, times=TIMES),
        FailureEvidence(
            http_status=429,
            error_type="rate_limit_error",
            exception="RateLimitError",
            retry_after_s=7.0,
        ),
        L,
        "rate limited: injected fault",
    ),
    "529 overloaded": Case(
        Fault.http(529, times=TIMES),
        FailureEvidence(
            http_status=529, error_type="overloaded_error", exception="OverloadedError"
        ),
        T,
        "provider answered HTTP 529: injected fault",
    ),
    "500 server error": Case(
        Fault.http(500, times=TIMES),
        FailureEvidence(http_status=500, error_type="api_error", exception="InternalServerError"),
        T,
        "provider answered HTTP 500: injected fault",
    ),
    "x-should-retry false": Case(
        Fault.http(503, should_retry=False, times=TIMES),
        FailureEvidence(
            http_status=503,
            error_type="api_error",
            exception="ServiceUnavailableError",
            should_retry=False,
        ),
        P,
        "provider answered HTTP 503: injected fault",
    ),
    "401 unauthorized": Case(
        Fault.http(401, times=TIMES),
        FailureEvidence(
            http_status=401, error_type="authentication_error", exception="AuthenticationError"
        ),
        P,
        "provider answered HTTP 401: injected fault",
    ),
    "SSE error mid-stream": Case(
        Fault.sse_error("overloaded_error", after_events=1, times=TIMES),
        FailureEvidence(error_type="overloaded_error", exception="APIStatusError"),
        T,
        "provider stream failed with overloaded_error: injected fault",
    ),
    "SSE rate limit mid-stream": Case(
        Fault.sse_error("rate_limit_error", after_events=2, times=TIMES),
        FailureEvidence(error_type="rate_limit_error", exception="APIStatusError"),
        L,
        "rate limited: injected fault",
    ),
    "stall before the headers": Case(
        Fault.stall(times=TIMES),
        FailureEvidence(exception="APITimeoutError", idle_s=IDLE_S),
        T,
        f"the provider sent nothing for {IDLE_S:g} s",
    ),
    "stall mid-stream": Case(
        Fault.stall(mid_stream=True, times=TIMES),
        FailureEvidence(exception="ReadTimeout", idle_s=IDLE_S),
        T,
        f"the provider sent nothing for {IDLE_S:g} s",
        kept=False,
    ),
    "drop before the headers": Case(
        Fault.drop(times=TIMES),
        FailureEvidence(exception="APIConnectionError"),
        T,
        "the provider closed the connection before answering",
    ),
    "drop mid-stream": Case(
        Fault.drop(after_bytes=40, times=TIMES),
        FailureEvidence(exception="RemoteProtocolError"),
        T,
        "the provider's answer was cut",
    ),
    "malformed body": Case(
        Fault.malformed(times=TIMES),
        FailureEvidence(exception="JSONDecodeError"),
        T,
        "malformed provider response",
    ),
}


def api_backend(
    provider: ProviderServer, idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
) -> ApiBackend:
    environ = {"ANTHROPIC_BASE_URL": provider.url, "ANTHROPIC_API_KEY": "test-key"}
    return ApiBackend(environ=environ, clock=FixedClock(), idle_timeout_s=idle_timeout_s)


def assert_classified(result: AgentResult, failure_class: FailureClass) -> None:
    classification = classify(result.failure)
    assert classification.failure_class is failure_class, classification


@pytest.mark.parametrize("case", API_CASES.values(), ids=API_CASES.keys())
async def test_api_fault_is_one_request_and_a_failed_attempt_with_evidence(
    provider: ProviderServer, tmp_path: Path, case: Case
) -> None:
    provider.script("kept for the retry")
    provider.add_fault(case.fault)
    request = make_request(tmp_path)

    idle = IDLE_S if case.fault.kind is FaultKind.STALL else DEFAULT_IDLE_TIMEOUT_S
    result = await api_backend(provider, idle).run(request, RecordingReporter())

    assert result.outcome is Outcome.FAILED
    assert result.error is not None and result.error.startswith(case.error), result.error
    assert without_message(result.failure) == case.evidence
    assert result.failure is not None and result.failure.message == shorten(result.error)
    assert_classified(result, case.failure_class)
    assert (result.limit_hit is not None) == (case.failure_class is L)
    assert len(provider.message_requests) == 1  # no retry behind the orchestrator
    if case.kept:
        assert provider.turns == [text("kept for the retry")]
    (logged,) = [r for r in log_records(request) if r["type"] == "error"]
    assert logged["failure"] == msgspec.to_builtins(result.failure)


async def test_a_stream_failing_midway_reports_the_tokens_it_had_spent_once(
    provider: ProviderServer, tmp_path: Path
) -> None:
    provider.script(text("never finished", usage=TurnUsage(120, 30, 40, 50)))
    provider.add_fault(Fault.sse_error(after_events=1))  # after message_start
    reporter = RecordingReporter()

    result = await api_backend(provider).run(make_request(tmp_path), reporter)

    spent = Usage(input_tokens=120, cache_read_tokens=40, cache_creation_tokens=50)
    assert result.outcome is Outcome.FAILED and result.usage == spent
    assert reporter.turns == [(MODEL, spent)]


async def test_after_a_fault_the_next_attempt_gets_the_turn(
    provider: ProviderServer, tmp_path: Path
) -> None:
    provider.script("the answer")
    provider.add_fault(Fault.drop(after_bytes=40))
    api = api_backend(provider)

    failed = await api.run(make_request(tmp_path), RecordingReporter())
    retried = await api.run(make_request(tmp_path), RecordingReporter())

    assert failed.outcome is Outcome.FAILED and retried.outcome is Outcome.SUCCEEDED
    assert retried.failure is None
    assert {"type": "text", "text": "the answer"} in log_records(make_request(tmp_path))


# -- the claude backend: one request per attempt -------------------------------------------
CLAUDE_CASES = {
    # The CLI reports what it saw: the status when there was one, its own error kind.
    "529 overloaded": (Fault.http(529, times=TIMES), 529, "server_error"),
    "500 server error": (Fault.http(500, times=TIMES), 500, "server_error"),
    # Without CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK the CLI would send the request
    # again with "stream": false after these (measured: two requests).
    "drop mid-stream": (Fault.drop(after_bytes=40, times=TIMES), None, "server_error"),
    "malformed body": (Fault.malformed(times=TIMES), None, "unknown"),
}


@pytest.mark.claude
@pytest.mark.parametrize(
    ("fault", "status", "kind"), CLAUDE_CASES.values(), ids=CLAUDE_CASES.keys()
)
async def test_claude_fault_is_one_request_and_a_failed_attempt_with_evidence(
    provider: ProviderServer,
    claude_env: dict[str, str],
    tmp_path: Path,
    fault: Fault,
    status: int | None,
    kind: str,
) -> None:
    provider.add_fault(fault)

    result = await ClaudeBackend(environ=claude_env).run(
        claude_request(tmp_path), RecordingReporter()
    )

    assert result.outcome is Outcome.FAILED and result.exit_code == 1
    assert without_message(result.failure) == FailureEvidence(
        http_status=status, error_type=kind, exit_code=1, terminal_reason="api_error"
    )
    assert result.failure is not None and "API Error" in result.failure.message
    assert_classified(result, T)
    assert result.limit_hit is None
    assert [r.stream for r in provider.message_requests] == [True]  # one request, no retry


@pytest.mark.claude
async def test_a_projects_env_can_give_the_cli_its_retries_back(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    provider.add_fault(Fault.http(529, retry_after=0))  # the retry goes through
    request = claude_request(tmp_path, CLAUDE_CODE_MAX_RETRIES="1")

    result = await ClaudeBackend(environ=claude_env).run(request, RecordingReporter())

    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert result.failure is None
    assert len(provider.message_requests) == 2


# -- evidence without a provider: the claude stream's result, the command backend ----------
def test_a_claude_result_without_an_api_error_is_evidence_of_a_task_failure(
    tmp_path: Path,
) -> None:
    from claude_agent_sdk import ResultMessage

    with JsonlLog(tmp_path / "log.jsonl", secrets=[]) as log:
        stream = AttemptStream(log, RecordingReporter(), resumed=False)
        stream.feed(
            ResultMessage(
                subtype="error_max_turns",
                duration_ms=5,
                duration_api_ms=3,
                is_error=True,
                num_turns=3,
                session_id="s-1",
            )
        )
        result = stream.outcome(exit_code=1, error=None)

    assert without_message(result.failure) == FailureEvidence(
        exit_code=1, terminal_reason="error_max_turns"
    )
    assert_classified(result, FailureClass.TASK)


def test_an_sdk_failure_other_than_an_exit_names_its_exception(tmp_path: Path) -> None:
    with JsonlLog(tmp_path / "log.jsonl", secrets=[]) as log:
        stream = AttemptStream(log, RecordingReporter(), resumed=False)
        result = stream.outcome(
            exit_code=None, error="claude-agent-sdk: lost", exception="CLIConnectionError"
        )
    assert result.failure == FailureEvidence(
        exception="CLIConnectionError", message="claude-agent-sdk: lost"
    )
    assert_classified(result, T)


def command_request(tmp_path: Path, *command: str) -> AgentRequest:
    return agent_request(
        tmp_path,
        title="cmd",
        prompt="do it",
        log_name="a1.log",
        model=None,
        settings=AgentSettings(command=list(command)),
    )


async def test_a_command_that_exits_non_zero_is_evidence_of_a_task_failure(
    tmp_path: Path,
) -> None:
    code = "import sys; print('tests failed: 3'); sys.exit(3)"
    request = command_request(tmp_path, sys.executable, "-c", code)

    result = await CommandBackend(environ={}).run(request, RecordingReporter())

    assert result.failure is not None
    assert (result.failure.exit_code, result.failure.exception) == (3, None)
    assert result.failure.message.endswith("tests failed: 3")  # the output, for patterns
    assert_classified(result, FailureClass.TASK)


@pytest.mark.parametrize(
    ("command", "exception"),
    [
        (("/nonexistent/agent",), "FileNotFoundError"),
        (("agent", "{nope}"), "ConfigError"),
    ],
    ids=["missing executable", "bad template"],
)
async def test_a_command_that_cannot_start_is_evidence_of_a_permanent_failure(
    tmp_path: Path, command: tuple[str, ...], exception: str
) -> None:
    request = command_request(tmp_path, *command)

    result = await CommandBackend(environ={}).run(request, RecordingReporter())

    assert result.failure is not None and result.failure.exception == exception
    assert result.failure.exit_code is None and result.failure.message == result.error
    assert_classified(result, P)
