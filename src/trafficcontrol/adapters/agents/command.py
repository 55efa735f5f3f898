"""The ``command`` backend: any command-line agent, from an argv template.

``settings.command`` is an argv list; each element is formatted with the
placeholders in ``PLACEHOLDERS`` (``{{`` and ``}}`` are literal braces). There is
no shell: a value such as a multi-line prompt with quotes is one argv element,
exactly as given. Whoever wants a shell writes ``["sh", "-c", "..."]``.

The agent runs in ``request.workdir`` in its own process group, stdin from
/dev/null, with stdout and stderr both written straight into the attempt's log
file. The child writes the file itself, so output is on disk as it is produced,
costs the event loop nothing, and is not lost if the orchestrator dies; a
background process that keeps the output open cannot stall us either.

Error contract: ``run`` never raises for a bad request. A missing or malformed
template, an unknown placeholder, a missing executable or workdir all come back
as a FAILED result whose ``error`` names the culprit, so they reach the journal
like any failed attempt. A failed result carries :class:`FailureEvidence`: the exit
code (negative: the signal) of an agent that ran, the exception's class name when
it could not be started, and ``ConfigError`` for a template or workdir that cannot
work (retrying cannot fix those). Only ``CancelledError`` propagates, after the process
group is stopped (see ``process_group``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import string
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from trafficcontrol.adapters.agents.limit_errors import MAX_MESSAGE_CHARS, shorten
from trafficcontrol.adapters.agents.process_group import RUN_MARKER_ENV, ProcessGroup, run_marker
from trafficcontrol.domain.model import FailureEvidence, Outcome
from trafficcontrol.errors import AgentError, ConfigError
from trafficcontrol.ports import AgentRequest, AgentResult, AttemptReporter

PLACEHOLDERS = (
    "prompt",
    "prompt_file",
    "workdir",
    "task_id",
    "attempt_id",
    "project",
    "title",
    "log_file",
    "model",
)
"""Names a template may use; ``{model}`` is empty when no model was chosen."""

_TAIL_BYTES = 4096
_TAIL_LINES = 5
_LOG_TAG = b"[tc] "
_CONFIG_ERROR = ConfigError.__name__
"""The evidence's exception for a request that cannot work as configured."""


def prompt_file_path(log_path: Path) -> Path:
    """Where the prompt is written for ``{prompt_file}``: next to the log."""
    return log_path.with_name(log_path.name + ".prompt.txt")


def render_argv(template: Sequence[str] | None, values: Mapping[str, str]) -> list[str]:
    """Format every element of ``template``; raises ``AgentError`` naming the problem.

    Only bare names are accepted: no attribute access, index, conversion or
    format spec, so a template can never reach beyond the values it is given.
    """
    if not template:
        raise AgentError("settings.command is empty or not set; the command backend needs an argv")
    return [_render_one(element, index, values) for index, element in enumerate(template)]


def _render_one(element: str, index: int, values: Mapping[str, str]) -> str:
    try:
        parts = list(string.Formatter().parse(element))
    except ValueError as exc:
        raise AgentError(
            f"settings.command[{index}] {element!r} is malformed ({exc}); "
            "write {{ and }} for literal braces"
        ) from exc
    out: list[str] = []
    for literal, name, spec, conversion in parts:
        out.append(literal)
        if name is None:
            continue
        if name not in values or spec or conversion:
            field = "{" + name + (f"!{conversion}" if conversion else "")
            field += (f":{spec}" if spec else "") + "}"
            raise AgentError(
                f"unknown placeholder {field} in settings.command[{index}]; "
                f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
        out.append(values[name])
    return "".join(out)


def placeholder_values(request: AgentRequest, prompt_file: Path) -> dict[str, str]:
    return {
        "prompt": request.prompt,
        "prompt_file": str(prompt_file),
        "workdir": str(request.workdir),
        "task_id": request.task_id,
        "attempt_id": request.attempt_id,
        "project": request.project_id,
        "title": request.title,
        "log_file": str(request.log_path),
        "model": request.model or "",
    }


class CommandBackend:
    """Runs an argv template as the agent; see the module docstring."""

    name = "command"

    def __init__(self, *, environ: Mapping[str, str], grace_s: float = 5.0) -> None:
        """``environ`` is the base environment of every agent (the caller reads the
        real one); ``grace_s`` is how long SIGTERM gets before SIGKILL."""
        if grace_s < 0:
            raise ConfigError(f"command backend: grace_s must be >= 0, got {grace_s}")
        self._environ = dict(environ)
        self._grace_s = grace_s

    def check(self) -> None:
        # Templates are per task and validated per attempt; what must hold here
        # is the platform: process groups are how agents are stopped.
        if not hasattr(os, "killpg") or not hasattr(os, "setsid"):
            raise ConfigError("the command backend needs POSIX process groups (Linux, macOS)")

    async def run(self, request: AgentRequest, reporter: AttemptReporter) -> AgentResult:
        prompt_file = prompt_file_path(request.log_path)
        try:
            argv = render_argv(request.settings.command, placeholder_values(request, prompt_file))
        except AgentError as exc:
            return _failed(exc.message, exception=_CONFIG_ERROR)
        if not request.workdir.is_dir():
            return _failed(
                f"workdir {request.workdir} does not exist or is not a directory",
                exception=_CONFIG_ERROR,
            )
        try:
            request.log_path.parent.mkdir(parents=True, exist_ok=True)
            prompt_file.write_text(request.prompt, encoding="utf-8", newline="")
            log = request.log_path.open("ab", buffering=0)
        except OSError as exc:
            return _failed(
                f"cannot write the attempt's files next to {request.log_path}: {exc}",
                exception=type(exc).__name__,
            )
        with log:
            return await self._run_logged(request, argv, reporter, log)

    async def _run_logged(
        self, request: AgentRequest, argv: list[str], reporter: AttemptReporter, log: BinaryIO
    ) -> AgentResult:
        _note(log, f"attempt {request.attempt_id}: exec {argv[0]} in {request.workdir}")
        start = log.tell()
        try:
            group = await ProcessGroup.spawn(
                argv, cwd=request.workdir, env=self._env(request), output=log.fileno()
            )
        except OSError as exc:
            message = _spawn_error(argv[0], exc)
            _note(log, message)
            return _failed(message, exception=type(exc).__name__)
        started = time.time()  # for the profile: the agent exists from here on
        try:
            reporter.process_started(group.pid, group.pgid, group.create_time)
            code = await group.wait()
            exited = time.time()
        except asyncio.CancelledError:
            _note(log, "stopping: cancelled")
            raise
        finally:
            # On every path, including a normal exit: whatever the agent left
            # running in its group must not outlive the attempt.
            await group.stop(self._grace_s)
        tail = _tail(request.log_path, start) if code != 0 else ""
        _note(log, _describe_exit(code))
        if code == 0:
            answer = _output(request.log_path, start) if request.output_schema else None
            return AgentResult(
                outcome=Outcome.SUCCEEDED,
                exit_code=0,
                text=answer,
                agent_started_at=started,
                exited_at=exited,
            )
        error = _describe_exit(code) + ("; last output:\n" + tail if tail else "")
        failure = FailureEvidence(exit_code=code, message=_last_words(error))
        return AgentResult(
            outcome=Outcome.FAILED,
            exit_code=code,
            error=error,
            failure=failure,
            agent_started_at=started,
            exited_at=exited,
        )

    def _env(self, request: AgentRequest) -> dict[str, str]:
        env = dict(self._environ)
        env.update(request.settings.env or {})
        env["TC_TASK_ID"] = request.task_id
        env["TC_ATTEMPT_ID"] = request.attempt_id
        env["TC_WORKDIR"] = str(request.workdir)
        env[RUN_MARKER_ENV] = run_marker(request)
        return env


def _failed(error: str, *, exception: str | None = None) -> AgentResult:
    failure = FailureEvidence(exception=exception, message=shorten(error))
    return AgentResult(outcome=Outcome.FAILED, error=error, failure=failure)


def _last_words(error: str) -> str:
    """``error`` on one line, its end kept when too long: the agent's last output is what
    output patterns look for."""
    flat = " ".join(error.split())
    return flat if len(flat) <= MAX_MESSAGE_CHARS else "…" + flat[-(MAX_MESSAGE_CHARS - 1) :]


def _note(log: BinaryIO, line: str) -> None:
    """Our own lines in the log, tagged so they stand out from the agent's."""
    log.write(_LOG_TAG + line.encode("utf-8", "replace") + b"\n")


def _spawn_error(executable: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        if os.sep not in executable:
            return f"executable not found: {executable!r} (searched the agent's PATH)"
        return (
            f"executable not found: {executable!r} (relative paths start at the workdir; "
            "a script's #! interpreter must exist too)"
        )
    if isinstance(exc, PermissionError):
        return f"executable {executable!r} cannot be run: permission denied"
    return f"cannot start {executable!r}: {exc}"


def _describe_exit(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "unknown signal"
    return f"killed by signal {-code} ({name})"


_ANSWER_BYTES = 256 * 1024


def _output(log_path: Path, start: int) -> str:
    """What the agent wrote in this attempt (its end, up to 256 KiB): a workflow step's
    structured output is read from it."""
    try:
        with log_path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(start, end - _ANSWER_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(log_path: Path, start: int) -> str:
    """The last few lines the agent wrote, for the error message."""
    try:
        with log_path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(start, end - _TAIL_BYTES))
            data = f.read()
    except OSError:
        return ""
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return "\n".join(lines[-_TAIL_LINES:])
