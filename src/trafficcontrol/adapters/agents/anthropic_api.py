"""The ``api`` backend: one attempt is one Messages API call, through ``anthropic``.

Design notes
------------
- **One call, no agent loop.** The prompt goes out as the single user message (with
  ``settings.system_prompt`` as the system prompt) and the answer is the attempt's
  output. No tools run: this backend is for steps that need an answer (analysis,
  review, summaries), and it drives the provider's limit path with the real client.
- **One retry layer.** The client runs with ``max_retries=0``. The orchestrator owns
  retries: it classifies the failure, and on a limit (``AgentResult.limit_hit``)
  waits for the reset the provider named instead of hammering it. Retrying here too
  would multiply attempts and hide the provider's refusal from the capacity code.
- **Failure evidence.** Every failed attempt carries :class:`FailureEvidence`: the
  HTTP status, the provider's error type (from the body, or from an ``error`` event
  inside a started stream, which arrives under the stream's 200 and is recorded with
  no status), ``x-should-retry``, ``retry-after`` and the exception's class name.
  Classifying it is ``domain.failures``' job, not this module's.
- **Hung streams end.** The client's read timeout is ``idle_timeout_s``: a provider
  silent that long, before the headers or between two stream events (the API sends
  ``ping`` events on a live stream), ends the attempt with ``idle_s`` in the evidence
  instead of hanging it until the orchestrator's task timeout.
- **Streaming.** Headers arrive when the stream opens, so the provider's rate-limit
  windows are reported before the body; usage comes from ``message_start`` (input and
  cache tokens) and ``message_delta`` (cumulative output). A stream cut or cancelled
  midway still reports the tokens it had spent, once.
- **Credentials only from** ``environ`` (``ANTHROPIC_API_KEY``, else
  ``ANTHROPIC_AUTH_TOKEN``; empty counts as unset) and the base URL with them, passed
  explicitly so the client never looks at the process environment or profiles on
  disk. The key never reaches the log (redacted) or an error message.
- The ``anthropic`` package is optional: it is imported inside functions only, so this
  module imports without it and ``check()`` can say how to install it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec

from trafficcontrol.adapters.agents.claude_sdk import JsonlLog
from trafficcontrol.adapters.agents.limit_errors import (
    http_failure,
    limit_hit_from_http,
    rate_limit_headers,
    shorten,
)
from trafficcontrol.domain.model import FailureEvidence, LimitHit, Outcome, Usage
from trafficcontrol.errors import AgentError, ConfigError
from trafficcontrol.ports import AgentRequest, AgentResult, AttemptReporter, Clock

if TYPE_CHECKING:
    from anthropic import APIStatusError, AsyncAnthropic
    from anthropic.types import MessageDeltaUsage
    from anthropic.types import Usage as ApiUsage

DEFAULT_MODEL = "claude-sonnet-5-5"
"""The newest Sonnet the pinned ``anthropic`` knows and does not call deprecated
(``claude-sonnet-4-5`` reached its end of life on 2026-11-30)."""
MODEL_ALIASES = {
    "opus": "claude-opus-5-5",
    "sonnet": DEFAULT_MODEL,
    "haiku": "claude-haiku-5-5",
}
"""Routing names families the way Claude Code does ("opus"); the Messages API wants ids."""
DEFAULT_MAX_TOKENS = 4096
DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_IDLE_TIMEOUT_S = 300.0
"""How long the provider may stay silent before a call counts as hung: generous, as a
hung call costs only this long while a live one killed loses its work."""
_RATE_LIMIT_ERROR = "rate_limit_error"


class ApiBackend:
    """Runs attempts as single Messages API calls (needs the ``anthropic`` package)."""

    name = "api"

    def __init__(
        self,
        *,
        environ: Mapping[str, str],
        clock: Clock,
        model: str = DEFAULT_MODEL,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        timeout_s: float = 600.0,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        """``environ`` supplies ``ANTHROPIC_BASE_URL`` and the credentials (bootstrap
        passes ``os.environ``); ``model`` is used when the request names none;
        ``max_tokens`` caps the answer; ``timeout_s`` bounds connecting and sending;
        ``idle_timeout_s`` is how long the provider may send nothing (before the
        headers or between stream events) before the call is ended as hung."""
        if timeout_s <= 0 or idle_timeout_s <= 0:
            raise ConfigError(
                f"api backend: timeouts must be > 0, got timeout_s={timeout_s}, "
                f"idle_timeout_s={idle_timeout_s}"
            )
        self._base_url = environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
        self._api_key = environ.get("ANTHROPIC_API_KEY") or None
        self._auth_token = None if self._api_key else environ.get("ANTHROPIC_AUTH_TOKEN") or None
        self._clock = clock
        self._model = model
        self._max_tokens = max_tokens
        self._timeout_s = timeout_s
        self._idle_timeout_s = idle_timeout_s

    def check(self) -> None:
        _require_anthropic()
        if self._api_key is None and self._auth_token is None:
            raise ConfigError(
                "the api backend has no credentials: set ANTHROPIC_API_KEY "
                "(or ANTHROPIC_AUTH_TOKEN for a bearer token)"
            )

    async def run(self, request: AgentRequest, reporter: AttemptReporter) -> AgentResult:
        try:
            self.check()
        except ConfigError as e:
            raise AgentError(e.message) from e
        import anthropic
        import httpx2

        model = request.model or self._model
        model = MODEL_ALIASES.get(model, model)
        try:
            log = JsonlLog(
                request.log_path, secrets=[s for s in (self._api_key, self._auth_token) if s]
            )
        except OSError as e:
            raise AgentError(f"cannot write the attempt log {request.log_path}: {e}") from e
        turn = _TurnUsage(model, reporter, log)
        try:
            log.write({"type": "request", "model": model, "base_url": self._base_url})
            async with self._client() as client:
                text = await self._call(client, request, model, turn, reporter)
        except anthropic.APIStatusError as e:
            return self._refused(e, turn, reporter, log)
        except (anthropic.APIConnectionError, httpx2.TransportError) as e:
            return self._cut(e, turn, log)
        except anthropic.APIError as e:  # e.g. a response that does not fit the schema
            failure = FailureEvidence(exception=type(e).__name__)
            return _failed(f"provider response not understood: {e.message}", turn, log, failure)
        except ValueError as e:  # a body or SSE data line that is not JSON
            failure = FailureEvidence(exception=type(e).__name__)
            return _failed(f"malformed provider response: {e}", turn, log, failure)
        else:
            log.write({"type": "text", "text": text})
            return AgentResult(Outcome.SUCCEEDED, usage=turn.usage, text=text)
        finally:
            turn.report()  # on cancellation too: the tokens were spent
            log.close()

    def _client(self) -> AsyncAnthropic:
        from anthropic import AsyncAnthropic, Timeout

        return AsyncAnthropic(
            api_key=self._api_key,
            auth_token=self._auth_token,
            base_url=self._base_url,
            max_retries=0,
            timeout=Timeout(self._timeout_s, read=self._idle_timeout_s),
        )

    async def _call(
        self,
        client: AsyncAnthropic,
        request: AgentRequest,
        model: str,
        turn: _TurnUsage,
        reporter: AttemptReporter,
    ) -> str:
        from anthropic import omit
        from anthropic.types import RawMessageDeltaEvent, RawMessageStartEvent

        async with client.messages.stream(
            model=model,
            max_tokens=self._max_tokens,
            system=request.settings.system_prompt or omit,
            messages=[{"role": "user", "content": request.prompt}],
        ) as stream:
            self._report_windows(stream.response.headers, reporter)
            async for event in stream:
                if isinstance(event, RawMessageStartEvent):
                    turn.started(event.message.usage)
                elif isinstance(event, RawMessageDeltaEvent):
                    turn.delta(event.usage)
            message = await stream.get_final_message()
        return "".join(block.text for block in message.content if block.type == "text")

    def _report_windows(self, headers: Mapping[str, str], reporter: AttemptReporter) -> None:
        for window, utilization, resets_at in rate_limit_headers(headers, self._clock.now()):
            status = "rejected" if utilization >= 1.0 else "allowed"
            reporter.rate_limit(window, status, utilization, resets_at)

    def _refused(
        self, e: APIStatusError, turn: _TurnUsage, reporter: AttemptReporter, log: JsonlLog
    ) -> AgentResult:
        headers = e.response.headers
        self._report_windows(headers, reporter)
        message = shorten(e.api_message or e.message)
        now = self._clock.now()
        failure = http_failure(
            e.status_code, headers, now, error_type=e.type, exception=type(e).__name__
        )
        # A rate-limit error event inside a started stream arrives with the stream's 200.
        status = 429 if e.type == _RATE_LIMIT_ERROR else e.status_code
        limit_hit = limit_hit_from_http(status, headers, message, now)
        if limit_hit is not None:
            return _failed(f"rate limited: {message}", turn, log, failure, limit_hit=limit_hit)
        if failure.http_status is None:
            error = f"provider stream failed with {e.type or 'an error'}: {message}"
        else:
            error = f"provider answered HTTP {e.status_code}: {message}"
        return _failed(error, turn, log, failure)

    def _cut(self, e: Exception, turn: _TurnUsage, log: JsonlLog) -> AgentResult:
        """The exchange broke: no connection, a connection cut, or a silent provider.
        ``anthropic`` wraps what breaks before the headers; what breaks in the stream's
        body is the transport's own error."""
        import httpx2

        cause = e if isinstance(e, httpx2.TransportError) else e.__cause__
        name = type(e).__name__
        if isinstance(cause, httpx2.ReadTimeout):
            idle = self._idle_timeout_s
            failure = FailureEvidence(exception=name, idle_s=idle)
            error = f"the provider sent nothing for {idle:g} s: stopped as hung"
            return _failed(error, turn, log, failure)
        failure = FailureEvidence(exception=name)
        if isinstance(e, httpx2.TransportError):
            error = f"the provider's answer was cut: {e}"
        elif cause is None or isinstance(cause, (httpx2.ConnectError, httpx2.ConnectTimeout)):
            error = f"cannot reach the provider at {self._base_url}: {cause or e}"
        else:
            error = f"the provider closed the connection before answering: {cause}"
        return _failed(error, turn, log, failure)


def _require_anthropic() -> None:
    try:
        import anthropic  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            "the api backend needs the anthropic package: pip install anthropic"
        ) from e


def _failed(
    error: str,
    turn: _TurnUsage,
    log: JsonlLog,
    failure: FailureEvidence,
    *,
    limit_hit: LimitHit | None = None,
) -> AgentResult:
    error = log.redact(error)
    failure = msgspec.structs.replace(failure, message=shorten(error))
    log.write(
        {
            "type": "error",
            "error": error,
            "limit_hit": limit_hit is not None,
            "failure": msgspec.to_builtins(failure),
        }
    )
    return AgentResult(
        Outcome.FAILED, error=error, usage=turn.usage, limit_hit=limit_hit, failure=failure
    )


class _TurnUsage:
    """The one call's usage as the stream reports it, reported to the ledger once."""

    def __init__(self, model: str, reporter: AttemptReporter, log: JsonlLog) -> None:
        self._model = model
        self._reporter = reporter
        self._log = log
        self.usage: Usage | None = None
        self._reported = False

    def started(self, usage: ApiUsage) -> None:
        self.usage = Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_input_tokens or 0,
            cache_creation_tokens=usage.cache_creation_input_tokens or 0,
        )

    def delta(self, usage: MessageDeltaUsage) -> None:
        """``message_delta`` counts are cumulative: they replace, never add."""
        now = self.usage or Usage()
        self.usage = Usage(
            input_tokens=_or(usage.input_tokens, now.input_tokens),
            output_tokens=usage.output_tokens,
            cache_read_tokens=_or(usage.cache_read_input_tokens, now.cache_read_tokens),
            cache_creation_tokens=_or(usage.cache_creation_input_tokens, now.cache_creation_tokens),
        )

    def report(self) -> None:
        if self._reported or self.usage is None:
            return
        self._reported = True
        self._reporter.turn_usage(self._model, self.usage)
        u = self.usage
        self._log.write(
            {
                "type": "usage",
                "model": self._model,
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "cache_read_tokens": u.cache_read_tokens,
                "cache_creation_tokens": u.cache_creation_tokens,
            }
        )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
