"""The supervisor ("shim") of one attempt: a small process that runs the agent and
outlives the orchestrator.

Design note
-----------
The orchestrator starts one shim per attempt (``supervised.SupervisedBackend``), in a
session and process group of its own, with stdin, stdout and stderr on files, never
on the orchestrator's pipes: when the orchestrator dies (SIGKILL, OOM) nothing the
shim holds breaks, and it needs nothing from it to finish. The shim runs the
attempt with the real backend (``command`` or ``claude``) exactly as the orchestrator
used to in-process: the backend owns the agent's process group and pipes, writes
the attempt's log, and stops the agent by escalation when cancelled.

What the backend reports (session, turn usage, rate-limit events) is appended to
the attempt's report file, one numbered line each, so whichever orchestrator
follows the attempt — the one that started it, or one that adopted it after a
crash — reads each report once, from where the journal left off. When the agent
has ended, the result is written as the exit record, atomically and fsynced; then
the shim exits. The exit record is the one place an attempt's end is decided.

SIGTERM (or SIGINT) asks the shim to stop: it cancels the run, which stops the agent
(SIGTERM to its group, grace, SIGKILL), and writes an exit record marked
``stopped``; the orchestrator that asked records the outcome (cancelled, timed out,
interrupted). A stop that arrives after the agent ended changes nothing.

Invariants: the exit record is written at most once and only after the agent's
process group is stopped; a report line is complete or not read
(``supervision.ReportReader``). Not covered: a SIGKILL of the shim itself — then there
is no exit record, and the orchestrator falls back to the attempt's ``on_interrupt``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import BinaryIO

from trafficcontrol.adapters.agents.process_group import create_time_of
from trafficcontrol.adapters.agents.supervision import (
    AttemptFiles,
    ExitRecord,
    ProcessReport,
    RateLimitReport,
    Report,
    SessionReport,
    ShimId,
    Spec,
    TurnReport,
    encode_report,
    exit_record_of,
    request_of,
    write_exit_record,
    write_shim_id,
)
from trafficcontrol.domain.model import FailureEvidence, Outcome, Usage
from trafficcontrol.errors import TrafficControlError
from trafficcontrol.ports import AgentBackend, AgentResult

log = logging.getLogger(__name__)


class FileReporter:
    """An ``AttemptReporter`` that appends each report as one line of the report file.

    Unbuffered: each line is one ``write`` of a complete line, so a reader never sees
    half of it unless the shim is killed inside that write (then the line has no
    newline and is not read).
    """

    def __init__(self, path: Path) -> None:
        self._file: BinaryIO = path.open("ab", buffering=0)

    def _write(self, report: Report) -> None:
        self._file.write(encode_report(report))

    def process_started(self, pid: int, pgid: int, create_time: float) -> None:
        self._write(ProcessReport(pid=pid, pgid=pgid, create_time=create_time))

    def session_started(self, session_id: str, *, report_no: int | None = None) -> None:
        self._write(SessionReport(session_id=session_id))

    def rate_limit(
        self,
        window: str,
        status: str,
        utilization: float | None,
        resets_at: float | None,
        *,
        report_no: int | None = None,
    ) -> None:
        self._write(
            RateLimitReport(
                window=window, status=status, utilization=utilization, resets_at=resets_at
            )
        )

    def turn_usage(self, model: str | None, usage: Usage, *, report_no: int | None = None) -> None:
        self._write(TurnReport(model=model, usage=usage))

    def close(self) -> None:
        self._file.close()


async def supervise(spec: Spec, backend: AgentBackend) -> ExitRecord:
    """Run the attempt ``spec`` describes with ``backend`` and write its exit record."""
    files = AttemptFiles(Path(spec.log_path))
    pid = os.getpid()
    # Who we are, for an orchestrator that restarts before our pid reached its journal.
    write_shim_id(files.shim, ShimId(pid=pid, create_time=create_time_of(pid)))
    # Then, and only then, whether a later orchestrator gave the attempt up: it makes the
    # fence and then looks for this file, we make this file and then look for the fence,
    # so at least one of us sees the other (``supervised.SupervisedBackend.find``).
    if files.fence.exists():
        record = exit_record_of(
            AgentResult(
                outcome=Outcome.INTERRUPTED,
                error="not started: a later orchestrator had given this attempt up",
            ),
            ended_at=time.time(),
            stopped=False,
        )
        write_exit_record(files.exit, record)
        return record
    reporter = FileReporter(files.reports)
    run = asyncio.create_task(backend.run(request_of(spec), reporter), name="attempt")
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, run.cancel)
    stopped = False
    try:
        result = await run
    except asyncio.CancelledError:
        stopped = True
        result = AgentResult(outcome=Outcome.INTERRUPTED, error="stopped by its supervisor")
    except TrafficControlError as exc:
        result = AgentResult(
            outcome=Outcome.FAILED,
            error=exc.message,
            failure=FailureEvidence(exception=type(exc).__name__, message=exc.message[:300]),
        )
    except Exception as exc:  # an adapter bug must still end the attempt with a record
        log.exception("agent adapter crashed in the supervisor")
        result = AgentResult(
            outcome=Outcome.FAILED,
            error=f"agent adapter crashed: {exc!r}",
            failure=FailureEvidence(exception=type(exc).__name__, message=str(exc)[:300]),
        )
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        reporter.close()
    record = exit_record_of(result, ended_at=time.time(), stopped=stopped)
    write_exit_record(files.exit, record)
    return record
