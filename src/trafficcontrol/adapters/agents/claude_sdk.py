"""The ``claude`` backend: Claude Code, driven through claude-agent-sdk.

Design notes
------------
- **One attempt is one** ``claude_agent_sdk.query()`` **with a string prompt.** The
  SDK closes the CLI's stdin once the prompt is written, so the message stream ends
  only when the CLI exits: a second result (background sub-agents) is read too, and
  the last result decides the outcome. ``ClaudeSDKClient`` was rejected: it keeps
  stdin open and leaves us guessing when the run is over.
- **Its own process group.** The SDK spawns the CLI inside the orchestrator's process
  group and has no ``start_new_session``. A group id shared with the orchestrator
  must never reach crash recovery (``kill_leftover_group`` would signal us), so on
  POSIX the CLI is started through a three-line launcher written next to the log
  (``os.setsid(); os.execv(cli, argv)``): same pid, a group of its own.
- **Escaped descendants.** Claude Code runs every Bash command in a session of its
  own, so ``server &`` leaves the CLI's group. Every process of a run inherits the
  marker variable :data:`RUN_MARKER_ENV`; when the run ends, normally or cancelled,
  whatever still carries it is stopped (SIGTERM, grace, SIGKILL).
- **Cancellation.** The SDK's own close waits 5 s after stdin EOF before SIGTERM.
  We SIGTERM the group at once, give the CLI ``grace_s`` to exit, SIGKILL it if
  needed, and only then let the SDK close (and reap) its transport. The stop runs
  to its end even if the caller cancels again; ``CancelledError`` is re-raised.
- **Cost after resume.** On ``resume`` the CLI restores the session's cost, so
  ``total_cost_usd`` (and ``modelUsage``) cover earlier attempts too, while
  ``usage`` covers this run only. A resumed attempt reports its tokens exactly and
  ``cost_usd=None`` (unknown, never double counted); a fresh one reports both.
- **Environment.** The SDK lays ``options.env`` over the orchestrator's own
  ``os.environ``; we pass the whole ``environ`` we were given (minus the two
  variables the SDK manages, ``CLAUDECODE`` and ``CLAUDE_CODE_ENTRYPOINT``), then
  :data:`ONE_RETRY_LAYER`, then the task's ``settings.env``, so ours always wins.
  Values of secret-looking variables are redacted from the log, wherever they show
  up (a tool that prints the environment included).
- **One retry layer.** The orchestrator owns retries (it classifies the failure and
  waits as the provider asks); the CLI's own would multiply attempts and hide a
  failing provider for minutes. :data:`ONE_RETRY_LAYER` turns them off: with
  ``CLAUDE_CODE_MAX_RETRIES=0`` a 429/500/529 or a connection cut before the answer
  is one request, and ``CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK=1`` stops the second,
  non-streaming request the CLI otherwise sends after a stream that broke (cut,
  malformed, or an ``error`` event) — both verified against the bundled CLI
  (tests/test_provider_faults.py). A project's ``settings.env`` may set them back.
- **Failure evidence.** A failed run carries :class:`FailureEvidence` from the last
  result (``api_error_status``, ``terminal_reason`` or else an error ``subtype``),
  the CLI's synthetic assistant message (its ``error`` kind: ``rate_limit``,
  ``server_error``, ``unknown`` …, recorded as the CLI names it), the exit code, and
  the SDK exception's class name when the SDK failed otherwise than by the CLI
  exiting (a process exit is its exit code, not an exception).
- **System prompt.** ``settings.system_prompt`` is appended to Claude Code's own
  prompt (the ``claude_code`` preset); replacing it would strip the agent's tools
  guidance. The SDK's default (no preset) would send an empty system prompt.
- **Unknown messages.** Message types the SDK does not know it drops itself (its
  parser is forward-compatible); any message object that reaches us, of whatever
  class, is logged and otherwise ignored (``AttemptStream.feed``).
- **Handoff** (session rotation, ``domain.rotation``). A session stopped for rotation
  is resumed for one turn with the handoff prompt: ``max_turns=1``, no tool
  pre-approved and ``permission_mode="dontAsk"`` (a tool call is refused, not
  prompted for). The tools stay declared: the history holds ``tool_use`` blocks, which
  the Messages API accepts only with tools defined. It runs like any attempt (same
  environment, one retry layer, same log, its turn reported); its answer is the
  summary. ``handoff_from_log`` is the fallback: the last assistant texts of the log
  and the files the session wrote.
- The SDK is an optional extra: it is imported inside functions only, so this module
  imports without it and ``check()`` can say how to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast, get_args

import msgspec
import psutil

from trafficcontrol.adapters.agents.limit_errors import limit_hit_from_result, shorten
from trafficcontrol.adapters.agents.process_group import (
    RUN_MARKER_ENV,
    create_time_of,
    run_marker,
    signal_group,
    stop_marked,
    to_the_end,
)
from trafficcontrol.adapters.system_clock import SystemClock
from trafficcontrol.domain.model import AgentSettings, FailureEvidence, Outcome, Usage
from trafficcontrol.domain.rotation import extracted_handoff
from trafficcontrol.errors import AgentError, ConfigError
from trafficcontrol.ports import AgentRequest, AgentResult, AttemptReporter, Clock

if TYPE_CHECKING:
    from claude_agent_sdk import ClaudeAgentOptions, ResultMessage
    from claude_agent_sdk.types import PermissionMode, SystemPromptPreset

REDACTED = "<redacted>"
CREDENTIAL_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
"""What the CLI accepts as credentials from the environment (verified: empty counts as unset)."""
THIRD_PARTY_VARS = ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY")
"""Cloud providers whose credentials come from their own SDKs; we cannot check those."""
ONE_RETRY_LAYER = {
    "CLAUDE_CODE_MAX_RETRIES": "0",
    "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK": "1",
}
"""What turns the CLI's own retries off (module notes); a task's ``settings.env`` wins."""

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
_MIN_SECRET_LEN = 8
"""Shorter values of secret-named variables ("1", "true") would redact ordinary words."""
_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""One stdout line of the CLI; the SDK's 1 MiB default is exceeded by a Write of a big
file (the tool result echoes the content) and would abort the whole run."""
_NOT_PASSED_ON = frozenset({"CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT"})
"""Left to the SDK: set by a Claude Code session the orchestrator may run inside, they
would make the CLI believe it is nested (the SDK drops the first, sets the second)."""
_STDERR_TAIL = 20
_WRITING_TOOLS = frozenset({"Write", "Edit", "MultiEdit", "NotebookEdit"})
"""Tools whose ``file_path`` (``notebook_path``) a session changed: an extracted handoff
lists them."""
_T = TypeVar("_T")


class ClaudeBackend:
    """Runs attempts with Claude Code (``trafficcontrol[claude]``)."""

    name = "claude"

    def __init__(
        self,
        *,
        environ: Mapping[str, str],
        cli_path: str | None = None,
        grace_s: float = 5.0,
    ) -> None:
        """``environ`` is the environment the CLI runs with (bootstrap passes
        ``os.environ``); ``cli_path`` overrides the CLI bundled with the SDK;
        ``grace_s`` is how long a cancelled CLI may take to exit after SIGTERM."""
        self._environ = {k: v for k, v in environ.items() if k not in _NOT_PASSED_ON}
        self._cli_path = cli_path
        self._grace_s = grace_s

    # -- check ---------------------------------------------------------------------------
    def check(self) -> None:
        _require_sdk()
        self._find_cli()
        if not self._has_credentials():
            raise ConfigError(
                "the claude backend has no credentials: set ANTHROPIC_API_KEY (or "
                "ANTHROPIC_AUTH_TOKEN, or CLAUDE_CODE_OAUTH_TOKEN from `claude setup-token`), "
                "or log in once with `claude` then /login, which writes "
                f"{self._config_dir() or '~/.claude'}/.credentials.json"
            )

    def _find_cli(self) -> str:
        """The CLI to run: ``cli_path``, else the SDK's bundled one, else on PATH."""
        if self._cli_path is not None:
            if not os.access(self._cli_path, os.X_OK) or Path(self._cli_path).is_dir():
                raise ConfigError(
                    f"claude cli_path {self._cli_path!r} is not an executable file; "
                    "fix the path or leave it unset to use the CLI bundled with claude-agent-sdk"
                )
            return self._cli_path
        import claude_agent_sdk

        # The SDK ships the CLI in its wheel (private layout, checked like the SDK does).
        name = "claude.exe" if sys.platform == "win32" else "claude"
        bundled = Path(claude_agent_sdk.__file__).parent / "_bundled" / name
        if bundled.is_file():
            return str(bundled)
        found = shutil.which("claude", path=self._environ.get("PATH"))
        if found is not None:
            return found
        raise ConfigError(
            "Claude Code CLI not found: claude-agent-sdk has no bundled CLI for this platform "
            "and `claude` is not on PATH; install it (npm install -g @anthropic-ai/claude-code) "
            "or set the claude backend's cli_path"
        )

    def _config_dir(self) -> Path | None:
        if config := self._environ.get("CLAUDE_CONFIG_DIR"):
            return Path(config)
        if home := self._environ.get("HOME"):
            return Path(home) / ".claude"
        return None

    def _has_credentials(self) -> bool:
        if any(self._environ.get(name) for name in (*CREDENTIAL_VARS, *THIRD_PARTY_VARS)):
            return True
        if sys.platform == "darwin":
            return True  # `claude /login` stores the token in the Keychain, which we cannot read
        config = self._config_dir()
        if config is None:
            return False
        if (config / ".credentials.json").is_file():
            return True
        try:  # an apiKeyHelper script in the user settings supplies the key at run time
            settings = json.loads((config / "settings.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(settings, dict) and bool(settings.get("apiKeyHelper"))

    # -- run -----------------------------------------------------------------------------
    async def run(self, request: AgentRequest, reporter: AttemptReporter) -> AgentResult:
        try:
            _require_sdk()
            cli = self._find_cli()
        except ConfigError as e:
            raise AgentError(e.message) from e
        marker = run_marker(request)
        env = {
            **self._environ,
            **ONE_RETRY_LAYER,
            **(request.settings.env or {}),
            RUN_MARKER_ENV: marker,
        }
        try:
            log = JsonlLog(request.log_path, secrets=secret_values(env))
        except OSError as e:
            raise AgentError(f"cannot write the attempt log {request.log_path}: {e}") from e
        stream = AttemptStream(log, reporter, resumed=request.resume_session_id is not None)
        launcher: Path | None = None
        try:
            launcher = _write_launcher(request.log_path, cli)
            options = _options(request, env, launcher or cli, stream)
            consumer = asyncio.create_task(
                _consume(request.prompt, options, stream, marker),
                name=f"claude-{request.attempt_id}",
            )
            try:
                await asyncio.wait({consumer})
            except asyncio.CancelledError:
                await to_the_end(self._stop(consumer, stream, marker))
                raise
            await to_the_end(stop_marked(marker, self._grace_s))
            return consumer.result()
        finally:
            if launcher is not None:
                launcher.unlink(missing_ok=True)
            log.close()

    # -- handoff (session rotation) ----------------------------------------------------
    async def handoff(
        self, request: AgentRequest, session_id: str, prompt: str, reporter: AttemptReporter
    ) -> str | None:
        """Resume the stopped session for one turn, without tools, with ``prompt``; the
        answer, or None when the turn failed or said nothing (module notes)."""
        settings = msgspec.structs.replace(
            request.settings, allowed_tools=[], max_turns=1, permission_mode="dontAsk"
        )
        asked = dataclasses.replace(
            request,
            prompt=prompt,
            settings=settings,
            resume_session_id=session_id,
            output_schema=None,
        )
        result = await self.run(asked, reporter)
        if result.outcome is not Outcome.SUCCEEDED or not (result.text or "").strip():
            return None
        return (result.text or "").strip()

    def handoff_from_log(self, log_path: Path) -> str | None:
        """The log's last assistant texts (main thread only) and the files written."""
        try:
            lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return None
        return extracted_handoff(*_session_record(lines))

    async def _stop(
        self, consumer: asyncio.Task[AgentResult], stream: AttemptStream, marker: str
    ) -> None:
        """SIGTERM, grace, SIGKILL for the CLI's group; then the SDK reaps; then stragglers."""
        pid = stream.pid or _find_child(marker)
        if pid is not None and _leads_own_group(pid):
            signal_group(pid, signal.SIGTERM)
            _, pending = await asyncio.wait({consumer}, timeout=self._grace_s)
            if pending:
                signal_group(pid, signal.SIGKILL)
        consumer.cancel()
        await asyncio.wait({consumer})
        with contextlib.suppress(BaseException):
            consumer.result()  # retrieved, so asyncio does not log it as never retrieved
        await stop_marked(marker, self._grace_s)


def _session_record(lines: Iterable[str]) -> tuple[list[str], list[str]]:
    """From an attempt log: the main thread's assistant texts, and the files its writing
    tools changed (those whose result came back without an error)."""
    texts: list[str] = []
    files: list[str] = []
    writes: dict[str, str] = {}
    """tool_use id -> the path it writes."""
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        data = record.get("data") if isinstance(record, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            continue
        if data.get("parent_tool_use_id") is not None or data.get("error") is not None:
            continue  # a sub-agent's, or the CLI's own account of a failed call
        kind = record["type"]
        for block in data["content"]:
            if not isinstance(block, dict):
                continue
            if kind == "AssistantMessage" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "AssistantMessage" and block.get("name") in _WRITING_TOOLS:
                args = block.get("input")
                path = None
                if isinstance(args, dict):
                    path = args.get("file_path") or args.get("notebook_path")
                if isinstance(path, str) and isinstance(block.get("id"), str):
                    writes[block["id"]] = path
            elif kind == "UserMessage" and block.get("tool_use_id") in writes:
                path = writes.pop(block["tool_use_id"])
                if not block.get("is_error"):
                    files.append(path)
    return texts, files


def _require_sdk() -> None:
    try:
        import claude_agent_sdk  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            "the claude backend needs claude-agent-sdk: pip install 'trafficcontrol[claude]'"
        ) from e


async def _consume(
    prompt: str, options: ClaudeAgentOptions, stream: AttemptStream, marker: str
) -> AgentResult:
    from claude_agent_sdk import (
        ClaudeSDKError,
        CLINotFoundError,
        ProcessError,
        ResultError,
        query,
    )

    looked_for_process = False
    # The SDK starts the CLI at once; psutil's create_time is too coarse (boot time in
    # whole seconds) to time phases with.
    stream.agent_started_at = time.time()
    try:
        async for message in query(prompt=prompt, options=options):
            if not looked_for_process:  # the CLI runs (and has exec'd) once it speaks
                looked_for_process = True
                stream.first_output_at = time.time()
                stream.process_found(_find_child(marker))
            stream.feed(message)
        stream.exited_at = time.time()
    except CLINotFoundError as e:
        raise AgentError(f"Claude Code CLI could not be started: {e}") from e
    except ResultError as e:
        # The failing result was yielded (and logged) before the exit; it says why.
        return stream.outcome(exit_code=e.exit_code, error=None if stream.result else str(e))
    except ProcessError as e:
        return stream.outcome(
            exit_code=e.exit_code,
            error=f"Claude Code exited with code {e.exit_code}{stream.stderr_summary()}",
            exception=type(e).__name__ if e.exit_code is None else None,
        )
    except ClaudeSDKError as e:
        return stream.outcome(
            exit_code=None, error=f"claude-agent-sdk: {e}", exception=type(e).__name__
        )
    return stream.outcome(exit_code=0, error=None)


def _options(
    request: AgentRequest, env: dict[str, str], cli_path: str | Path, stream: AttemptStream
) -> ClaudeAgentOptions:
    from claude_agent_sdk import ClaudeAgentOptions

    settings = request.settings
    return ClaudeAgentOptions(
        cli_path=cli_path,
        cwd=request.workdir,
        model=request.model,
        permission_mode=_permission_mode(settings),
        allowed_tools=list(settings.allowed_tools or ()),
        max_turns=settings.max_turns,
        system_prompt=_system_prompt(settings.system_prompt),
        env=env,
        resume=request.resume_session_id,
        stderr=stream.stderr,
        max_buffer_size=_MAX_MESSAGE_BYTES,
    )


def _permission_mode(settings: AgentSettings) -> PermissionMode | None:
    from claude_agent_sdk.types import PermissionMode

    mode = settings.permission_mode
    if mode is None:
        return None
    if mode not in get_args(PermissionMode):
        raise AgentError(
            f"unknown claude permission_mode {mode!r}; one of {', '.join(get_args(PermissionMode))}"
        )
    return cast("PermissionMode", mode)


def _system_prompt(append: str | None) -> SystemPromptPreset:
    preset: SystemPromptPreset = {"type": "preset", "preset": "claude_code"}
    if append:
        preset["append"] = append
    return preset


# -- the message stream -------------------------------------------------------------------
class AttemptStream:
    """Folds one run's messages into what the attempt learned, logging every one.

    Only ``system/init``, assistant turns' usage, rate-limit events and results are
    interpreted; any
    other message, of a type known or not, is logged and otherwise ignored: ``feed``
    never raises on content. Claude Code sends one assistant message per content block,
    as each block completes (before the response has ended), all carrying the usage of
    the response's start (verified against the CLI): input and cache tokens are exact,
    output tokens are only final in the result. So a turn is reported at its first
    block — its context is known then, which session rotation needs while the turn is
    still streaming — and later blocks with the same message id are not new turns.
    """

    def __init__(
        self,
        log: JsonlLog,
        reporter: AttemptReporter,
        *,
        resumed: bool,
        clock: Clock | None = None,
    ) -> None:
        self._log = log
        self._reporter = reporter
        self._resumed = resumed
        self._clock = clock or SystemClock()
        self._stderr: deque[str] = deque(maxlen=_STDERR_TAIL)
        self.session_id: str | None = None
        self.result: ResultMessage | None = None
        self.pid: int | None = None
        self.agent_started_at: float | None = None
        self.first_output_at: float | None = None
        self.exited_at: float | None = None
        """When the CLI was created, first spoke and stopped (``domain.profile``)."""
        self.error_kind: str | None = None
        """The ``error`` of the CLI's last synthetic assistant message (why a call failed)."""
        self._reported: set[str] = set()
        """Message ids of the turns reported (their later blocks are not new turns)."""

    def _turn_seen(self, message_id: str | None, model: str | None, raw: object) -> None:
        if not isinstance(raw, Mapping):
            return
        if message_id is not None:
            if message_id in self._reported:
                return
            self._reported.add(message_id)
        self._reporter.turn_usage(model, _usage_of(raw, cost=None))

    def feed(self, message: object) -> None:
        from claude_agent_sdk import (
            AssistantMessage,
            RateLimitEvent,
            ResultMessage,
            SystemMessage,
        )

        try:
            self._log.write(message_record(message))
        except (TypeError, ValueError, RecursionError):  # e.g. a reference cycle
            self._log.write({"type": type(message).__name__, "unserializable": True})
        session_id: object = None
        if isinstance(message, SystemMessage) and message.subtype == "init":
            session_id = message.data.get("session_id")
        elif isinstance(message, AssistantMessage):
            if message.error is not None:
                self.error_kind = str(message.error)
            if message.usage is not None:
                self._turn_seen(message.message_id, message.model, message.usage)
        elif isinstance(message, RateLimitEvent):
            info = message.rate_limit_info
            self._reporter.rate_limit(
                str(info.rate_limit_type or "unknown"),
                str(info.status),
                info.utilization,
                None if info.resets_at is None else float(info.resets_at),
            )
        elif isinstance(message, ResultMessage):
            self.result = message
            session_id = message.session_id
        if isinstance(session_id, str) and session_id and session_id != self.session_id:
            self.session_id = session_id
            self._reporter.session_started(session_id)

    def process_found(self, pid: int | None) -> None:
        """Report the CLI's process, unless it shares our group (see the module notes)."""
        if pid is None or not _leads_own_group(pid):
            return
        self.pid = pid
        self._reporter.process_started(pid, pid, create_time_of(pid))

    def stderr(self, line: str) -> None:
        """The SDK's stderr callback: the only place some failures are explained."""
        self._stderr.append(self._log.redact(line))
        self._log.write({"type": "stderr", "line": line})

    def stderr_summary(self) -> str:
        return (": " + " | ".join(self._stderr)) if self._stderr else " (no stderr output)"

    def outcome(
        self, *, exit_code: int | None, error: str | None, exception: str | None = None
    ) -> AgentResult:
        """The attempt's result; ``error`` explains a failure the result does not, and
        ``exception`` names the SDK error that ended the run (not a process exit)."""
        result = self.result
        usage = _usage(result, resumed=self._resumed) if result is not None else None
        session_id = self.session_id or (result.session_id if result is not None else None)
        if error is None and result is not None and not result.is_error:
            return AgentResult(
                Outcome.SUCCEEDED,
                exit_code=exit_code,
                usage=usage,
                session_id=session_id,
                text=result.result,
                agent_started_at=self.agent_started_at,
                first_output_at=self.first_output_at,
                exited_at=self.exited_at,
            )
        if error is None:
            error = describe_failure(result) if result else "Claude Code ended without a result"
        error = self._log.redact(error)
        status = result.api_error_status if result is not None else None
        failure = FailureEvidence(
            http_status=status,
            error_type=self.error_kind,
            exception=exception,
            exit_code=exit_code,
            terminal_reason=_terminal_reason(result),
            message=shorten(error),
        )
        self._log.write({"type": "failure", **msgspec.to_builtins(failure)})
        return AgentResult(
            Outcome.FAILED,
            exit_code=exit_code,
            error=error,
            usage=usage,
            session_id=session_id,
            limit_hit=limit_hit_from_result(status, error, self._clock.now()),
            failure=failure,
            agent_started_at=self.agent_started_at,
            first_output_at=self.first_output_at,
            exited_at=self.exited_at or time.time(),
        )


def _terminal_reason(result: ResultMessage | None) -> str | None:
    """Why the CLI ended: ``terminal_reason``, else an error ``subtype`` (never "success")."""
    if result is None:
        return None
    if result.terminal_reason:
        return str(result.terminal_reason)
    return result.subtype if result.subtype != "success" else None


def describe_failure(result: ResultMessage) -> str:
    """One line saying why a run failed, from the fields the CLI reports."""
    facts = [
        f"{name}={value}"
        for name, value in (
            ("terminal_reason", result.terminal_reason),
            ("api_error_status", result.api_error_status),
            ("subtype", result.subtype),
        )
        if value is not None
    ]
    detail = "; ".join([*(result.errors or []), *([result.result] if result.result else [])])
    return f"Claude Code failed ({', '.join(facts)})" + (f": {detail}" if detail else "")


def _usage(result: ResultMessage, *, resumed: bool) -> Usage:
    # After resume the CLI's cost is the whole session's (module notes).
    return _usage_of(result.usage or {}, cost=None if resumed else result.total_cost_usd)


def _usage_of(raw: Mapping[str, Any], *, cost: float | None) -> Usage:
    def tokens(key: str) -> int:
        value = raw.get(key)
        return value if isinstance(value, int) else 0

    return Usage(
        input_tokens=tokens("input_tokens"),
        output_tokens=tokens("output_tokens"),
        cache_read_tokens=tokens("cache_read_input_tokens"),
        cache_creation_tokens=tokens("cache_creation_input_tokens"),
        cost_usd=cost,
    )


def message_record(message: object) -> dict[str, Any]:
    """A JSON-ready record of any message, including types this code has never seen."""
    record: dict[str, Any] = {"type": type(message).__name__}
    if dataclasses.is_dataclass(message) and not isinstance(message, type):
        try:
            record["data"] = dataclasses.asdict(message)
        except Exception:  # an odd field (a lock, a generator) must not lose the message
            record["repr"] = repr(message)
    else:
        record["repr"] = repr(message)
    return record


class JsonlLog:
    """The attempt log: one JSON object per line, line-buffered, secrets redacted."""

    def __init__(self, path: Path, *, secrets: Iterable[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8", buffering=1)
        values = {s for s in secrets if len(s) >= _MIN_SECRET_LEN}
        # Also the JSON-escaped spelling, which is what a serialized line contains.
        values |= {json.dumps(s)[1:-1] for s in values}
        self._secrets = sorted(values, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file.closed:  # a late stderr line, after the run ended
            return
        self._file.write(self.redact(json.dumps(record, default=repr, ensure_ascii=False)) + "\n")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def secret_values(env: Mapping[str, str]) -> list[str]:
    """Values of the variables whose names look like credentials."""
    return [value for name, value in env.items() if _SECRET_NAME.search(name) and value]


# -- processes ----------------------------------------------------------------------------
_LAUNCHER = """#!{python} -I
# trafficcontrol: run Claude Code as the leader of a process group of its own.
import os, sys
os.setsid()
os.execv({cli!r}, [{cli!r}, *sys.argv[1:]])
"""


def _write_launcher(log_path: Path, cli: str) -> Path | None:
    """The launcher next to the log; None where it cannot work (no setsid, odd python path)."""
    python = sys.executable
    if os.name != "posix" or not python or any(c.isspace() for c in python):
        return None
    path = log_path.with_name(f".{log_path.name}.claude-launcher")
    try:
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_LAUNCHER.format(python=python, cli=cli))
    except OSError as e:
        raise AgentError(f"cannot write the claude launcher {path}: {e}") from e
    return path


def _leads_own_group(pid: int) -> bool:
    if os.name != "posix":
        return False
    try:
        return os.getpgid(pid) == pid != os.getpgrp()
    except (ProcessLookupError, PermissionError):
        return False


def _find_child(marker: str) -> int | None:
    """Our child process that carries ``marker`` (the CLI, launched or launching)."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if child.environ().get(RUN_MARKER_ENV) == marker:
                return int(child.pid)
    return None
