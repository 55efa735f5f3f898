"""The warm supervisor launcher: supervisors forked from it behave as directly started
ones (own session, stdio on files, the agent carries its run marker), outlive the
launcher and the orchestrator, and any launcher failure falls back to a direct start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from tests.helpers import agent_argv, agent_request
from trafficcontrol.adapters.agents.command import CommandBackend
from trafficcontrol.adapters.agents.launcher import (
    LAUNCHER_FLAG,
    LAUNCHER_MODULE,
    SupervisorLauncher,
)
from trafficcontrol.adapters.agents.process_group import (
    RUN_MARKER_ENV,
    marked_processes,
    stop_marked,
)
from trafficcontrol.adapters.agents.supervised import SupervisedBackend
from trafficcontrol.adapters.agents.supervision import AttemptFiles, read_exit_record, read_shim_id
from trafficcontrol.domain.model import AgentSettings, Outcome
from trafficcontrol.ports import AgentRequest
from trafficcontrol.testing.fakes import RecordingReporter


def backend(launcher: SupervisorLauncher) -> SupervisedBackend:
    inner = CommandBackend(environ=os.environ, grace_s=1.0)
    return SupervisedBackend(
        inner,
        environ=os.environ,
        grace_s=1.0,
        poll_s=0.02,
        launcher=launcher,
        preload=("trafficcontrol.adapters.agents.command",),
    )


def request(tmp_path: Path, name: str, *flags: str) -> AgentRequest:
    (tmp_path / name).mkdir(exist_ok=True)
    return agent_request(
        tmp_path / name,
        title=name,
        prompt="p",
        settings=AgentSettings(command=agent_argv(*flags)),
        model=None,
        log_name="1.log",
    )


async def wait_for_file(path: Path) -> None:
    """The agent writes it once it runs (no other signal crosses the processes)."""
    for _ in range(1000):
        if path.exists():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


async def test_forked_supervisors_run_attempts_as_direct_ones_do(tmp_path: Path) -> None:
    launcher = SupervisorLauncher()
    supervised = backend(launcher)
    await supervised.warm()
    try:
        results = await asyncio.gather(
            *(
                supervised.run(
                    request(tmp_path, f"a{i}", "--write", f"out{i}.txt=ok"), RecordingReporter()
                )
                for i in range(5)
            )
        )
    finally:
        await supervised.aclose()
    assert [r.outcome for r in results] == [Outcome.SUCCEEDED] * 5
    assert launcher.forked == 5
    for i, result in enumerate(results):
        assert (tmp_path / f"a{i}" / f"out{i}.txt").read_text() == "ok"
        assert result.agent_started_at is not None and result.exited_at is not None
        assert result.exited_at >= result.agent_started_at


async def test_a_forked_supervisor_has_its_own_session_and_files_and_outlives_the_launcher(
    tmp_path: Path,
) -> None:
    launcher = SupervisorLauncher()
    supervised = backend(launcher)
    started = tmp_path / "started"
    req = request(tmp_path, "a", "--started", str(started), "--block")
    reporter = RecordingReporter()
    job = asyncio.create_task(supervised.run(req, reporter))
    await wait_for_file(started)
    ((pid, pgid, _created),) = reporter.processes
    shim_id = read_shim_id(AttemptFiles(req.log_path).shim)
    assert shim_id is not None and shim_id.pid == pid == pgid
    assert os.getsid(pid) == pid, "a session of its own"
    for fd in (0, 1, 2):
        assert not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"), fd
    # The agent it started carries the attempt's run marker; the launcher does not.
    agents = marked_processes(str(req.log_path))
    assert agents and all(p.pid != pid for p in agents)
    parent = psutil.Process(pid).parent()
    assert parent is not None and LAUNCHER_FLAG in parent.cmdline(), "forked by the launcher"
    assert RUN_MARKER_ENV not in parent.environ()

    job.cancel()  # the orchestrator lets go of it; then the launcher goes away
    with contextlib.suppress(asyncio.CancelledError):
        await job
    # Cancelling stopped it (that is what a cancel does); start another and close the
    # launcher under it: the supervisor and its agent run on.
    started2 = tmp_path / "started2"
    req2 = request(tmp_path, "b", "--started", str(started2), "--block")
    reporter2 = RecordingReporter()
    job2 = asyncio.create_task(supervised.run(req2, reporter2))
    await wait_for_file(started2)
    await supervised.aclose()
    parent.wait(10)
    ((pid2, _pgid, _c),) = reporter2.processes
    assert psutil.Process(pid2).is_running()
    assert marked_processes(str(req2.log_path)), "its agent runs on"
    await stop_marked(str(req2.log_path), 1.0)  # the agent ends; the supervisor records it
    result = await asyncio.wait_for(job2, timeout=30)
    assert result.outcome is Outcome.FAILED  # killed by a signal, not by its supervisor
    record = read_exit_record(AttemptFiles(req2.log_path).exit)
    assert record is not None


async def test_stopping_one_attempt_never_stops_the_launcher(tmp_path: Path) -> None:
    launcher = SupervisorLauncher()
    supervised = backend(launcher)
    try:
        first = await supervised.run(request(tmp_path, "a", "--exit", "0"), RecordingReporter())
        await stop_marked(str(request(tmp_path, "a").log_path), 1.0)
        second = await supervised.run(request(tmp_path, "b", "--exit", "0"), RecordingReporter())
    finally:
        await supervised.aclose()
    assert first.outcome is second.outcome is Outcome.SUCCEEDED
    assert launcher.forked == 2, "the second came from the same launcher"


async def test_a_launcher_that_cannot_start_falls_back_to_a_direct_start(tmp_path: Path) -> None:
    launcher = SupervisorLauncher(python=str(tmp_path / "no-such-python"))
    supervised = backend(launcher)
    await supervised.warm()  # logged, not raised
    result = await supervised.run(request(tmp_path, "a", "--exit", "0"), RecordingReporter())
    await supervised.aclose()
    assert result.outcome is Outcome.SUCCEEDED
    assert launcher.forked == 0


def test_the_launcher_answers_a_bad_request_and_exits_at_end_of_file() -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-m", LAUNCHER_MODULE, LAUNCHER_FLAG],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != RUN_MARKER_ENV},
    )
    out, _err = launcher.communicate(b'{"spec": 1}\nnot json\n{"preload": ["json"]}\n', timeout=30)
    answers = [json.loads(line) for line in out.splitlines()]
    assert [("error" in a) for a in answers] == [True, True, False]
    assert "bad request" in answers[0]["error"]
    assert answers[2] == {"ok": True}
    assert launcher.returncode == 0
