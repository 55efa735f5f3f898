"""The api backend (and the limit path of the claude one) against the scripted provider.

The real ``anthropic`` client (and, for the claude test, the real Claude Code CLI)
talks HTTP to ``tests/provider``; its hidden limit plays a provider that refuses with
429 once a window's tokens are used up.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import anthropic
import pytest

from tests.helpers import FixedClock, agent_request, claude_request, log_records
from tests.provider.server import (
    REDACTED,
    TEST_API_KEY,
    Fault,
    FaultKind,
    ProviderServer,
    TurnUsage,
    text,
)
from trafficcontrol.adapters.agents.anthropic_api import DEFAULT_MODEL, ApiBackend
from trafficcontrol.adapters.agents.claude_sdk import ClaudeBackend
from trafficcontrol.domain.model import (
    AgentSettings,
    FailureEvidence,
    Outcome,
    Usage,
)
from trafficcontrol.errors import AgentError, ConfigError
from trafficcontrol.ports import AgentRequest
from trafficcontrol.testing.fakes import RecordingReporter

MODEL = "claude-test"
RESETS_AT = 1_900_000_000
"""When the hidden limit's window resets (2030-03-17T17:46:40Z): whole seconds, as the
provider's epoch header says it."""
SECRET_KEY = "sk-ant-api03-not-a-real-key-0123456789"


def make_request(
    tmp_path: Path, *, model: str | None = MODEL, system_prompt: str | None = None
) -> AgentRequest:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return agent_request(
        tmp_path,
        title="review",
        prompt="Review the change",
        workdir=workdir,
        model=model,
        settings=AgentSettings(system_prompt=system_prompt),
    )


def backend(provider: ProviderServer, **environ: str) -> ApiBackend:
    env = {"ANTHROPIC_BASE_URL": provider.url, "ANTHROPIC_API_KEY": TEST_API_KEY, **environ}
    return ApiBackend(environ=env, clock=FixedClock())


# -- the api backend -------------------------------------------------------------------------
async def test_one_call_reports_turn_usage_and_rate_limit_windows_and_writes_the_log(
    provider: ProviderServer, tmp_path: Path
) -> None:
    provider.response_headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "40",
        "anthropic-ratelimit-requests-reset": "2030-03-17T17:46:40Z",
        "anthropic-ratelimit-tokens-limit": "10000",
        "anthropic-ratelimit-tokens-remaining": "2500",
        "anthropic-ratelimit-tokens-reset": "2030-03-17T17:46:40Z",
    }
    provider.script(text("Looks good.", usage=TurnUsage(120, 30, 40, 50)))
    request = make_request(tmp_path, system_prompt="You review code.")
    reporter = RecordingReporter()

    result = await backend(provider).run(request, reporter)

    usage = Usage(
        input_tokens=120, output_tokens=30, cache_read_tokens=40, cache_creation_tokens=50
    )
    assert result.outcome is Outcome.SUCCEEDED, result.error
    assert (result.usage, result.exit_code, result.limit_hit) == (usage, None, None)
    assert result.failure is None
    assert reporter.turns == [(MODEL, usage)]
    assert reporter.rate_limits == [
        ("tokens", "allowed", 0.75, float(RESETS_AT)),
        ("requests", "allowed", pytest.approx(0.2), float(RESETS_AT)),
    ]
    (sent,) = provider.message_requests
    assert sent.body["system"] == "You review code."
    assert sent.user_texts() == ["Review the change"]
    assert (sent.model, sent.stream, sent.body["max_tokens"]) == (MODEL, True, 4096)
    records = log_records(request)
    assert {"type": "text", "text": "Looks good."} in records
    assert {
        "type": "usage",
        "model": MODEL,
        "input_tokens": 120,
        "output_tokens": 30,
        "cache_read_tokens": 40,
        "cache_creation_tokens": 50,
    } in records


async def test_the_default_model_and_no_system_prompt(
    provider: ProviderServer, tmp_path: Path
) -> None:
    result = await backend(provider).run(make_request(tmp_path, model=None), RecordingReporter())
    assert result.outcome is Outcome.SUCCEEDED, result.error
    (sent,) = provider.message_requests
    assert sent.model == DEFAULT_MODEL and "system" not in sent.body


async def test_the_hidden_limit_is_a_failed_attempt_with_the_limit_hit_and_no_retry(
    provider: ProviderServer, tmp_path: Path
) -> None:
    provider.set_hidden_limit(15, resets_at=RESETS_AT)
    provider.script(text("first", usage=TurnUsage(10, 5)), text("second"))
    api = backend(provider)
    first_reporter, reporter = RecordingReporter(), RecordingReporter()

    first = await api.run(make_request(tmp_path), first_reporter)
    refused = await api.run(make_request(tmp_path), reporter)

    assert first.outcome is Outcome.SUCCEEDED, first.error
    assert first_reporter.rate_limits == [("tokens", "allowed", 0.0, float(RESETS_AT))]
    assert refused.outcome is Outcome.FAILED
    assert refused.error is not None and refused.error.startswith("rate limited: ")
    hit = refused.limit_hit
    assert hit is not None
    assert (hit.window, hit.resets_at, hit.status) == ("tokens", RESETS_AT, 429)
    assert hit.retry_after_s is not None and hit.retry_after_s > 0
    assert "usage limit reached" in hit.message
    assert (refused.usage, reporter.turns) == (None, [])
    assert reporter.rate_limits == [("tokens", "rejected", 1.0, float(RESETS_AT))]
    failure = refused.failure
    assert failure is not None
    assert (failure.http_status, failure.error_type, failure.exception) == (
        429,
        "rate_limit_error",
        "RateLimitError",
    )
    assert failure.should_retry is False and hit.retry_after_s == failure.retry_after_s
    # One request for the refused call: the client did not retry behind our back.
    assert (len(provider.message_requests), provider.limit_hits) == (2, 1)
    assert provider.turns == [text("second")]  # kept for when the window is new


async def test_a_new_window_lets_calls_through_again(
    provider: ProviderServer, tmp_path: Path
) -> None:
    provider.set_hidden_limit(0, resets_at=RESETS_AT)
    api = backend(provider)
    refused = await api.run(make_request(tmp_path), RecordingReporter())

    provider.new_window(RESETS_AT + 5 * 3600)
    provider.set_hidden_limit(100, resets_at=RESETS_AT + 5 * 3600)
    again = await api.run(make_request(tmp_path), RecordingReporter())

    assert refused.limit_hit is not None and again.outcome is Outcome.SUCCEEDED
    assert (provider.limit_hits, provider.window_tokens) == (1, 15)


async def test_a_server_error_is_failed_with_its_status_and_not_retried(
    provider: ProviderServer, tmp_path: Path
) -> None:
    provider.add_fault(Fault.http(500, times=5))
    reporter = RecordingReporter()

    result = await backend(provider).run(make_request(tmp_path), reporter)

    assert result.outcome is Outcome.FAILED and result.limit_hit is None
    assert result.error == "provider answered HTTP 500: injected fault"
    assert result.failure == FailureEvidence(
        http_status=500,
        error_type="api_error",
        exception="InternalServerError",
        message=result.error,
    )
    assert len(provider.message_requests) == 1
    assert (reporter.turns, reporter.rate_limits) == ([], [])
    assert log_records(make_request(tmp_path))[-1]["type"] == "error"


async def test_an_unreachable_provider_is_failed_clearly(tmp_path: Path) -> None:
    with ProviderServer() as gone:
        url = gone.url
    api = ApiBackend(
        environ={"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": TEST_API_KEY}, clock=FixedClock()
    )
    result = await api.run(make_request(tmp_path), RecordingReporter())
    assert result.outcome is Outcome.FAILED
    assert result.error is not None and result.error.startswith(
        f"cannot reach the provider at {url}"
    )
    assert result.failure is not None and result.failure.exception == "APIConnectionError"


async def test_a_bearer_token_is_used_when_there_is_no_api_key(
    provider: ProviderServer, tmp_path: Path
) -> None:
    api = backend(provider, ANTHROPIC_API_KEY="", ANTHROPIC_AUTH_TOKEN=SECRET_KEY)
    api.check()
    result = await api.run(make_request(tmp_path), RecordingReporter())
    assert result.outcome is Outcome.SUCCEEDED, result.error
    (sent,) = provider.message_requests
    assert sent.headers["authorization"] == REDACTED and "x-api-key" not in sent.headers


async def test_the_key_stays_out_of_the_log_and_the_error(
    provider: ProviderServer, tmp_path: Path
) -> None:
    provider.add_fault(Fault(FaultKind.STATUS, status=401, message=f"bad key {SECRET_KEY}"))
    request = make_request(tmp_path)
    result = await backend(provider, ANTHROPIC_API_KEY=SECRET_KEY).run(request, RecordingReporter())
    assert result.outcome is Outcome.FAILED and result.error is not None
    assert "401" in result.error and SECRET_KEY not in result.error
    assert result.failure is not None and result.failure.http_status == 401
    assert SECRET_KEY not in result.failure.message
    assert SECRET_KEY not in request.log_path.read_text()


def test_check_names_the_variables_when_there_is_no_key() -> None:
    api = ApiBackend(environ={"ANTHROPIC_API_KEY": ""}, clock=FixedClock())
    with pytest.raises(ConfigError, match=r"ANTHROPIC_API_KEY.*ANTHROPIC_AUTH_TOKEN"):
        api.check()


async def test_run_without_a_key_is_an_agent_error_and_sends_nothing(
    provider: ProviderServer, tmp_path: Path
) -> None:
    api = ApiBackend(environ={"ANTHROPIC_BASE_URL": provider.url}, clock=FixedClock())
    with pytest.raises(AgentError, match="ANTHROPIC_API_KEY"):
        await api.run(make_request(tmp_path), RecordingReporter())
    assert provider.requests == []


async def test_cancel_stops_the_call(provider: ProviderServer, tmp_path: Path) -> None:
    provider.add_fault(Fault.stall())
    reporter = RecordingReporter()
    call = asyncio.create_task(backend(provider).run(make_request(tmp_path), reporter))
    await asyncio.to_thread(provider.wait_for, lambda p: p.stalled == 1, 30)

    call.cancel()

    with pytest.raises(asyncio.CancelledError):
        await call
    assert reporter.turns == []


# -- the hidden limit, seen by the plain client ----------------------------------------------
def test_the_hidden_limit_counts_non_streaming_answers_and_sends_its_headers(
    provider: ProviderServer,
) -> None:
    provider.set_hidden_limit(20, resets_at=RESETS_AT)
    provider.script(text("a", usage=TurnUsage(12, 8)))
    prompt: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hi"}]
    with anthropic.Anthropic(base_url=provider.url, api_key=TEST_API_KEY, max_retries=0) as c:
        ok = c.messages.with_raw_response.create(model=MODEL, max_tokens=8, messages=prompt)
        with pytest.raises(anthropic.RateLimitError) as refused:
            c.messages.create(model=MODEL, max_tokens=8, messages=prompt)

    assert ok.headers["anthropic-ratelimit-tokens-limit"] == "20"
    assert ok.headers["anthropic-ratelimit-tokens-remaining"] == "20"
    assert ok.headers["anthropic-ratelimit-tokens-reset"] == "2030-03-17T17:46:40Z"
    headers = refused.value.response.headers
    assert headers["anthropic-ratelimit-unified-reset"] == str(RESETS_AT)
    assert headers["anthropic-ratelimit-tokens-remaining"] == "0"
    assert headers["x-should-retry"] == "false" and int(headers["retry-after"]) >= 0
    assert refused.value.type == "rate_limit_error"
    assert refused.value.api_message == "usage limit reached, resets at 2030-03-17T17:46:40Z"
    assert (provider.window_tokens, provider.limit_hits) == (20, 1)


# -- the claude backend's limit ---------------------------------------------------------------
@pytest.mark.claude
async def test_claude_codes_refusal_on_a_limit_is_a_limit_hit(
    provider: ProviderServer, claude_env: dict[str, str], tmp_path: Path
) -> None:
    # x-should-retry: false makes the CLI give up at once instead of retrying for minutes.
    provider.set_hidden_limit(0, resets_at=RESETS_AT)
    request = claude_request(tmp_path)

    result = await ClaudeBackend(environ=claude_env).run(request, RecordingReporter())

    assert result.outcome is Outcome.FAILED
    assert result.error is not None and "api_error_status=429" in result.error
    hit = result.limit_hit
    assert hit is not None and (hit.status, hit.resets_at) == (429, RESETS_AT)
    assert "usage limit reached" in hit.message
    assert (len(provider.message_requests), provider.limit_hits) == (1, 1)
    failure = result.failure
    assert failure is not None
    assert (failure.http_status, failure.error_type, failure.terminal_reason) == (
        429,
        "rate_limit",
        "api_error",
    )
