"""``SupervisedBackend``: attempts run by a real supervisor process; its files.

The supervisor is the real ``python -m trafficcontrol.cli.supervise`` with the real
``command`` backend and real agents (``tests/agents/agent.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import msgspec
import psutil
import pytest

from tests.helpers import agent_argv, agent_request
from trafficcontrol.adapters.agents.command import CommandBackend
from trafficcontrol.adapters.agents.process_group import marked_processes
from trafficcontrol.adapters.agents.supervised import SUPERVISOR_LOST, SupervisedBackend
from trafficcontrol.adapters.agents.supervision import (
    AttemptFiles,
    ReportReader,
    SessionReport,
    SupervisionError,
    TurnReport,
    encode_report,
    read_exit_record,
)
from trafficcontrol.domain.model import AgentSettings, Outcome, Usage
from trafficcontrol.ports import AgentRequest, Leftover
from trafficcontrol.testing.fakes import RecordingReporter


def backend() -> SupervisedBackend:
    inner = CommandBackend(environ=os.environ, grace_s=1.0)
    return SupervisedBackend(inner, environ=os.environ, grace_s=1.0, poll_s=0.02)


def request(tmp_path: Path, *flags: str) -> AgentRequest:
    return agent_request(
        tmp_path,
        title="t",
        prompt="p",
        settings=AgentSettings(command=agent_argv(*flags)),
        model=None,
        log_name="1.log",
    )


async def test_an_attempt_runs_in_a_supervisor_that_records_its_end(tmp_path: Path) -> None:
    reporter = RecordingReporter()
    req = request(tmp_path, "--write", "out.txt=done")

    result = await backend().run(req, reporter)

    assert result.outcome is Outcome.SUCCEEDED and result.exit_code == 0
    assert (tmp_path / "out.txt").read_text() == "done"
    ((pid, pgid, _created),) = reporter.processes
    assert pid == pgid, "the supervisor leads a group of its own"
    assert pid != os.getpid()
    record = read_exit_record(AttemptFiles(req.log_path).exit)
    assert record is not None and record.outcome is Outcome.SUCCEEDED and not record.stopped
    assert "agent running in" in req.log_path.read_text(), "the agent's output, in the log"
    assert not AttemptFiles(req.log_path).spec.exists(), "the spec is removed at the end"


async def test_a_failing_agent_fails_with_its_exit_code(tmp_path: Path) -> None:
    result = await backend().run(request(tmp_path, "--exit", "3"), RecordingReporter())

    assert result.outcome is Outcome.FAILED and result.exit_code == 3
    assert result.failure is not None and result.failure.exit_code == 3


async def test_cancel_stops_the_supervisor_agent_and_grandchild(tmp_path: Path) -> None:
    grandchild = tmp_path / "gc.pid"
    started = tmp_path / "started"
    req = request(tmp_path, "--started", str(started), "--grandchild", str(grandchild), "--block")
    job = asyncio.create_task(backend().run(req, RecordingReporter()))
    await asyncio.wait_for(_appears(started), timeout=30)
    gc_pid = int(grandchild.read_text())

    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job

    assert marked_processes(str(req.log_path)) == []
    assert not psutil.pid_exists(gc_pid) or psutil.Process(gc_pid).status() == "zombie"
    record = read_exit_record(AttemptFiles(req.log_path).exit)
    assert record is not None and record.stopped, "the supervisor says it stopped the agent"


async def test_a_supervisor_that_cannot_run_the_spec_is_a_lost_attempt(tmp_path: Path) -> None:
    broken = SupervisedBackend(
        CommandBackend(environ=os.environ), environ=os.environ, python="/bin/false"
    )
    result = await broken.run(request(tmp_path), RecordingReporter())

    assert result.outcome is Outcome.FAILED
    assert result.failure is not None and result.failure.exception == SUPERVISOR_LOST
    assert "without an exit record" in (result.error or "")


def write_reports(path: Path, *reports: SessionReport | TurnReport, partial: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(encode_report(r) for r in reports) + partial)


def test_reports_are_read_on_from_a_line_and_a_partial_line_waits(tmp_path: Path) -> None:
    path = tmp_path / "r"
    turn = TurnReport(model="m", usage=Usage(input_tokens=5))
    write_reports(path, SessionReport(session_id="s"), turn, turn, partial=b'{"type":"tu')
    reader = ReportReader(path, after=1)

    assert reader.read() == [(2, turn), (3, turn)]
    with path.open("ab") as f:
        f.write(b'rn","model":null,"usage":{}}\nnot json\n')
    assert reader.read() == [(4, TurnReport(model=None, usage=Usage()))]
    assert reader.bad == 1 and reader.number == 5


async def test_adopting_a_finished_attempt_relays_only_the_reports_not_journaled(
    tmp_path: Path,
) -> None:
    req = request(tmp_path, "--write", "x=y")
    await backend().run(req, RecordingReporter())
    files = AttemptFiles(req.log_path)
    turn = TurnReport(model="sonnet", usage=Usage(input_tokens=7, output_tokens=2))
    write_reports(files.reports, SessionReport(session_id="abc"), turn, turn)

    reporter = RecordingReporter()
    leftover = backend().find(req.log_path, None, None)
    assert leftover == Leftover(log_path=req.log_path, pid=None, create_time=None, finished=True)
    result = await backend().adopt(leftover, reporter, after_report=2)

    assert result.outcome is Outcome.SUCCEEDED
    assert reporter.sessions == [] and reporter.turns == [("sonnet", turn.usage)]


def test_find_tells_running_finished_and_gone_apart(tmp_path: Path) -> None:
    files = AttemptFiles(tmp_path / "logs" / "1.log")
    files.log.parent.mkdir(parents=True)
    assert backend().find(files.log, None, None) is None, "no spec: never supervised"
    files.spec.write_text("{}")
    me = psutil.Process()
    files.shim.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))
    found = backend().find(files.log, None, None)
    assert found is not None and found.pid == me.pid and not found.finished
    files.shim.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time() - 5}))
    assert backend().find(files.log, None, None) is None, "a reused pid is not our supervisor"


def test_a_malformed_exit_record_is_an_error_naming_the_file(tmp_path: Path) -> None:
    files = AttemptFiles(tmp_path / "1.log")
    files.exit.write_bytes(b'{"format": 1, "outcome": "maybe"}')
    with pytest.raises(SupervisionError, match=r"1\.log\.exit: malformed"):
        backend().find(files.log, None, None)
    files.exit.write_bytes(msgspec.json.encode({"format": 99}))
    with pytest.raises(SupervisionError, match=r"1\.log\.exit"):
        backend().find(files.log, None, None)


async def _appears(path: Path) -> None:
    """Polls: the agent, another process, gives no other signal that it runs."""
    for _ in range(3000):
        if path.exists():
            return
        await asyncio.sleep(0.01)


async def test_a_supervisor_launched_after_its_attempt_was_given_up_starts_no_agent(
    tmp_path: Path,
) -> None:
    # A later orchestrator found no supervisor and gave the attempt up (find fenced it);
    # the one that dispatched it, stopped meanwhile, then launches it after all.
    req = request(tmp_path, "--write", "out.txt=ran")
    assert backend().find(req.log_path, None, None) is None
    assert AttemptFiles(req.log_path).fence.exists()
    result = await backend().run(req, RecordingReporter())
    assert result.outcome is Outcome.INTERRUPTED, result
    assert result.error is not None and "given this attempt up" in result.error
    assert not (tmp_path / "out.txt").exists(), "the agent never ran"
