"""What an attempt's supervisor leaves on disk, shared by the supervisor and the
orchestrator: the files, their formats and how they are written.

Next to the attempt's log ``<logs>/<task>/<n>.log`` (``.jsonl`` for claude):

- ``<log>.spec`` — the request the supervisor runs (written by the orchestrator, 0600);
- ``<log>.shim`` — the supervisor's pid and start time, written as it starts, so a
  restarted orchestrator finds it even when its pid never reached the journal;
- ``<log>.reports`` — what the agent reported while it ran (session, turns, rate-limit
  events), one JSON object per line, numbered from 1. A line without its newline is
  being written (or was cut by a kill) and is not read;
- ``<log>.exit`` — the exit record: the attempt's result, written atomically (temp
  file, fsync, rename, fsync the directory) when the agent has ended. Its presence is
  what "the agent finished" means to a recovering orchestrator;
- ``<log>.supervisor`` — the supervisor's own stderr (a crash of the supervisor).

Every reader validates what it reads: a malformed file is a ``SupervisionError``
naming the file, never a crash of the orchestrator.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec

from trafficcontrol.domain.model import (
    AgentSettings,
    AttemptId,
    FailureEvidence,
    LimitHit,
    Outcome,
    ProjectId,
    TaskId,
    Usage,
)
from trafficcontrol.errors import AgentError
from trafficcontrol.ports import AgentRequest, AgentResult

_T = TypeVar("_T")
FORMAT = 1
"""Version of the spec and exit record formats; a reader refuses any other."""


class SupervisionError(AgentError):
    """A supervisor's file is missing, unreadable or malformed (the message names it)."""


@dataclass(frozen=True, slots=True)
class AttemptFiles:
    """The supervisor's files of one attempt (module notes)."""

    log: Path

    @property
    def spec(self) -> Path:
        return self.log.with_name(self.log.name + ".spec")

    @property
    def shim(self) -> Path:
        return self.log.with_name(self.log.name + ".shim")

    @property
    def reports(self) -> Path:
        return self.log.with_name(self.log.name + ".reports")

    @property
    def exit(self) -> Path:
        return self.log.with_name(self.log.name + ".exit")

    @property
    def stderr(self) -> Path:
        return self.log.with_name(self.log.name + ".supervisor")

    @property
    def fence(self) -> Path:
        """Made by an orchestrator that found no supervisor and gives the attempt up: a
        supervisor launched late (by an orchestrator that was stopped, or by its launcher
        after it died) sees it and does not start the agent (``shim.supervise``)."""
        return self.log.with_name(self.log.name + ".fenced")


# -- the spec: what the supervisor runs ---------------------------------------------------
class Spec(msgspec.Struct, frozen=True, kw_only=True):
    """An ``AgentRequest`` and the backend to run it with. The environment is not here:
    it is the supervisor's own (secrets never reach a file)."""

    format: int
    backend: str
    grace_s: float
    attempt_id: str
    task_id: str
    project_id: str
    attempt_no: int
    title: str
    prompt: str
    workdir: str
    log_path: str
    model: str | None
    settings: AgentSettings
    resume_session_id: str | None = None
    output_schema: dict[str, object] | None = None
    cli_path: str | None = None
    """The claude backend's CLI, when configured."""


def spec_of(request: AgentRequest, *, backend: str, grace_s: float, cli_path: str | None) -> Spec:
    return Spec(
        format=FORMAT,
        backend=backend,
        grace_s=grace_s,
        attempt_id=request.attempt_id,
        task_id=request.task_id,
        project_id=request.project_id,
        attempt_no=request.attempt_no,
        title=request.title,
        prompt=request.prompt,
        workdir=str(request.workdir),
        log_path=str(request.log_path),
        model=request.model,
        settings=request.settings,
        resume_session_id=request.resume_session_id,
        output_schema=request.output_schema,
        cli_path=cli_path,
    )


def request_of(spec: Spec) -> AgentRequest:
    return AgentRequest(
        attempt_id=AttemptId(spec.attempt_id),
        task_id=TaskId(spec.task_id),
        project_id=ProjectId(spec.project_id),
        attempt_no=spec.attempt_no,
        title=spec.title,
        prompt=spec.prompt,
        workdir=Path(spec.workdir),
        log_path=Path(spec.log_path),
        model=spec.model,
        settings=spec.settings,
        resume_session_id=spec.resume_session_id,
        output_schema=spec.output_schema,
    )


def write_spec(path: Path, spec: Spec) -> None:
    """Atomically, readable by the owner only (it holds the prompt)."""
    write_atomically(path, msgspec.json.encode(spec), mode=0o600, sync=False)


def read_spec(path: Path) -> Spec:
    spec = _decode(path, Spec)
    if spec.format != FORMAT:
        raise SupervisionError(f"{path}: spec format {spec.format}, this version reads {FORMAT}")
    return spec


# -- the supervisor's identity --------------------------------------------------------------
class ShimId(msgspec.Struct, frozen=True, kw_only=True):
    pid: int
    create_time: float


def write_shim_id(path: Path, shim: ShimId) -> None:
    write_atomically(path, msgspec.json.encode(shim), mode=0o600, sync=False)


def read_shim_id(path: Path) -> ShimId | None:
    """None when the supervisor never wrote it (it died first, or never started)."""
    if not path.exists():
        return None
    return _decode(path, ShimId)


# -- reports ---------------------------------------------------------------------------
class SessionReport(msgspec.Struct, frozen=True, tag="session"):
    session_id: str


class TurnReport(msgspec.Struct, frozen=True, tag="turn"):
    model: str | None
    usage: Usage


class RateLimitReport(msgspec.Struct, frozen=True, tag="rate_limit"):
    window: str
    status: str
    utilization: float | None = None
    resets_at: float | None = None


class ProcessReport(msgspec.Struct, frozen=True, tag="process"):
    """The agent's own process (the supervisor's is what recovery looks for)."""

    pid: int
    pgid: int
    create_time: float


Report = SessionReport | TurnReport | RateLimitReport | ProcessReport
_report_encoder = msgspec.json.Encoder()
_report_decoder = msgspec.json.Decoder(Report)


def encode_report(report: Report) -> bytes:
    return _report_encoder.encode(report) + b"\n"


class ReportReader:
    """Reads an attempt's report file on from where it was left, line by line.

    Only complete lines are read; ``number`` is the number of the last line read.
    A malformed complete line is skipped and counted (``bad``): the reports are
    evidence, and one bad line must not lose the attempt's end.
    """

    def __init__(self, path: Path, *, after: int = 0) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""
        self.number = 0
        self.bad = 0
        self._skip = after

    def read(self) -> list[tuple[int, Report]]:
        """The reports appended since the last call, with their line numbers."""
        try:
            with self._path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        out: list[tuple[int, Report]] = []
        for line in lines:
            self.number += 1
            if self.number <= self._skip:
                continue
            try:
                out.append((self.number, _report_decoder.decode(line)))
            except msgspec.DecodeError:
                self.bad += 1
        return out


# -- the exit record ---------------------------------------------------------------------
class ExitRecord(msgspec.Struct, frozen=True, kw_only=True):
    """How the attempt ended, as its supervisor saw it."""

    format: int
    ended_at: float
    stopped: bool
    """The supervisor was told to stop and stopped the agent: the orchestrator that
    asked decides the outcome (cancelled, timed out, interrupted)."""
    outcome: Outcome
    exit_code: int | None = None
    error: str | None = None
    usage: Usage | None = None
    session_id: str | None = None
    simulated: bool = False
    limit_hit: LimitHit | None = None
    failure: FailureEvidence | None = None
    text: str | None = None
    agent_started_at: float | None = None
    first_output_at: float | None = None
    exited_at: float | None = None


def exit_record_of(result: AgentResult, *, ended_at: float, stopped: bool) -> ExitRecord:
    return ExitRecord(
        format=FORMAT,
        ended_at=ended_at,
        stopped=stopped,
        outcome=result.outcome,
        exit_code=result.exit_code,
        error=result.error,
        usage=result.usage,
        session_id=result.session_id,
        simulated=result.simulated,
        limit_hit=result.limit_hit,
        failure=result.failure,
        text=result.text,
        agent_started_at=result.agent_started_at,
        first_output_at=result.first_output_at,
        exited_at=result.exited_at,
    )


def result_of(record: ExitRecord) -> AgentResult:
    return AgentResult(
        outcome=record.outcome,
        exit_code=record.exit_code,
        error=record.error,
        usage=record.usage,
        session_id=record.session_id,
        simulated=record.simulated,
        limit_hit=record.limit_hit,
        failure=record.failure,
        text=record.text,
        agent_started_at=record.agent_started_at,
        first_output_at=record.first_output_at,
        exited_at=record.exited_at,
    )


def write_exit_record(path: Path, record: ExitRecord) -> None:
    write_atomically(path, msgspec.json.encode(record), mode=0o600, sync=True)


def read_exit_record(path: Path) -> ExitRecord | None:
    """None when there is none (the agent has not ended, or its supervisor died)."""
    if not path.exists():
        return None
    record = _decode(path, ExitRecord)
    if record.format != FORMAT:
        raise SupervisionError(f"{path}: exit record format {record.format}, expected {FORMAT}")
    return record


# -- files ---------------------------------------------------------------------------------
def write_atomically(path: Path, data: bytes, *, mode: int, sync: bool) -> None:
    """Write ``data`` to ``path`` so that a reader sees all of it or nothing: a temp file,
    renamed over; with ``sync``, fsynced (file and directory) so a power cut keeps it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _decode(path: Path, kind: type[_T]) -> _T:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SupervisionError(f"cannot read {path}: {e}") from e
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as e:
        raise SupervisionError(f"{path}: malformed ({e})") from e
