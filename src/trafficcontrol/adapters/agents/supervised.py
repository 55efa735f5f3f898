"""Attempts run under a supervisor process that outlives the orchestrator.

Design note
-----------
``SupervisedBackend`` wraps a real backend (``command``, ``claude``). Its ``run``
does not run the agent here: it writes the request as the attempt's spec, starts the
supervisor (``python -m trafficcontrol.cli.supervise SPEC``, see ``shim``) in a
session of its own with the orchestrator's environment, and *follows* it: it relays
the supervisor's numbered reports to the reporter as they are appended, and when the
supervisor exits it returns the attempt's result from the exit record. The journaled
process is the supervisor's (pid and start time), so recovery finds it.

A restarted orchestrator calls ``find`` for every attempt its journal says runs: an
exit record means the agent ended while no orchestrator watched; a live supervisor
(the journaled pid, or the one its ``.shim`` file names, with the same start time)
means it still runs. Either is *adopted*: ``adopt`` follows it exactly as ``run``
does, from the first report the journal lacks, so the attempt ends once, with its
real outcome, and no report is counted twice. Only an attempt whose supervisor is
gone without an exit record is the runtime's to interrupt (``on_interrupt``).

Cancellation (cancel, timeout, shutdown) is asked of the supervisor with SIGTERM; it
stops the agent by escalation and exits. If it is not gone within the grace period
plus a margin, its group gets SIGKILL. Either way, whatever still carries the
attempt's run marker is then stopped too (what left the agent's group). An attempt
``detach``-ed first is only let go: its supervisor and agent run on for the next
orchestrator to adopt (``tc run --leave-agents-running``).

Waiting on a supervisor that is not our child (adopted) uses a pidfd where the
platform has one (woken by the kernel at exit, immune to pid reuse), else polling.
Reports are read every ``poll_s`` and once more at the end.

Rejected: a pipe from the supervisor for the reports (lost with the orchestrator; an
adopted attempt would need the file anyway), and keeping the agent in-process with a
re-parenting trick (``PR_SET_CHILD_SUBREAPER``): it cannot survive its parent's death.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from trafficcontrol.adapters.agents.launcher import LauncherError, SupervisorLauncher
from trafficcontrol.adapters.agents.process_group import (
    RUN_MARKER_ENV,
    alive_since,
    create_time_of,
    signal_group,
    stop_marked,
    to_the_end,
)
from trafficcontrol.adapters.agents.supervision import (
    AttemptFiles,
    ProcessReport,
    RateLimitReport,
    ReportReader,
    SessionReport,
    ShimId,
    SupervisionError,
    TurnReport,
    read_exit_record,
    read_shim_id,
    result_of,
    spec_of,
    write_shim_id,
    write_spec,
)
from trafficcontrol.domain.model import FailureEvidence, Outcome
from trafficcontrol.errors import AgentError
from trafficcontrol.ports import (
    AgentBackend,
    AgentRequest,
    AgentResult,
    AttemptReporter,
    Leftover,
    SessionHandoff,
)

SHIM_MODULE = "trafficcontrol.cli.supervise"
SUPERVISOR_LOST = "SupervisorLost"
"""The evidence's exception when a supervisor exited without an exit record."""
_KILL_MARGIN_S = 5.0
"""Beyond the grace period: how long a stopping supervisor may take to stop its agent
and exit before it is killed (it escalates to SIGKILL itself after the grace)."""


log = logging.getLogger(__name__)


class SupervisedBackend:
    """Runs ``inner``'s attempts under a supervisor process (module notes)."""

    def __init__(
        self,
        inner: AgentBackend,
        *,
        environ: Mapping[str, str],
        grace_s: float = 5.0,
        cli_path: str | None = None,
        python: str = sys.executable,
        poll_s: float = 0.05,
        launcher: SupervisorLauncher | None = None,
        preload: tuple[str, ...] = (),
    ) -> None:
        """``environ`` is the supervisor's environment, and so the agent's base one;
        ``cli_path`` is passed on to the claude backend."""
        self.name = inner.name
        self.inner = inner
        self._environ = dict(environ)
        self._grace_s = grace_s
        self._cli_path = cli_path
        self._python = python
        self._poll_s = poll_s
        self._launcher = launcher
        self._preload = preload
        self._detached: set[str] = set()

    def check(self) -> None:
        self.inner.check()

    def detach(self, log_path: Path) -> None:
        self._detached.add(str(log_path))

    # -- run ---------------------------------------------------------------------------
    async def run(self, request: AgentRequest, reporter: AttemptReporter) -> AgentResult:
        files = AttemptFiles(request.log_path)
        try:
            files.log.parent.mkdir(parents=True, exist_ok=True)
            spec = spec_of(
                request, backend=self.name, grace_s=self._grace_s, cli_path=self._cli_path
            )
            write_spec(files.spec, spec)
            stderr = files.stderr.open("ab")
        except OSError as e:
            raise AgentError(f"cannot write the attempt's files next to {files.log}: {e}") from e
        env = {**self._environ, RUN_MARKER_ENV: str(files.log)}
        shim: _AdoptedShim | _ChildShim | None = None
        with stderr:
            if self._launcher is not None:
                shim = await self._forked(files, env)
            if shim is None:
                shim = await self._spawned(files, env, stderr)
        # Written here as well as by the supervisor: a crash before its pid is journaled
        # must not leave a running supervisor that nobody can find.
        with contextlib.suppress(OSError):
            write_shim_id(files.shim, ShimId(pid=shim.pid, create_time=shim.create_time))
        reporter.process_started(shim.pid, shim.pid, shim.create_time)
        return await self._follow(files, shim, reporter, after=0)

    async def _forked(self, files: AttemptFiles, env: dict[str, str]) -> _AdoptedShim | None:
        """A supervisor forked by the launcher (``launcher``); None when it failed."""
        assert self._launcher is not None
        try:
            pid = await self._launcher.launch(
                files.spec, environ=env, cwd=files.log.parent, stderr=files.stderr
            )
        except LauncherError as exc:
            log.warning("supervisor launcher failed, starting one directly: %s", exc)
            return None
        # Not our child: followed through a pidfd. If it is already gone (a fast agent,
        # reaped by the launcher), create_time is 0.0 and its exit record is read.
        return _AdoptedShim.of(pid, create_time_of(pid))

    async def _spawned(
        self, files: AttemptFiles, env: dict[str, str], stderr: BinaryIO
    ) -> _ChildShim:
        try:
            process = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                SHIM_MODULE,
                str(files.spec),
                cwd=files.log.parent,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        except OSError as e:
            raise AgentError(f"cannot start the attempt's supervisor ({self._python}): {e}") from e
        return _ChildShim(process, create_time_of(process.pid))

    async def warm(self) -> None:
        """Start the launcher now, and have it import what this backend's supervisors
        need, so the first attempts do not wait for either."""
        if self._launcher is not None:
            try:
                await self._launcher.preload(self._preload, self._environ)
            except LauncherError as exc:
                log.warning("supervisor launcher: %s (supervisors start directly)", exc)

    async def aclose(self) -> None:
        """End the launcher, if any (the supervisors it forked run on)."""
        if self._launcher is not None:
            await self._launcher.close()

    # -- adoption ----------------------------------------------------------------------
    def find(self, log_path: Path, pid: int | None, create_time: float | None) -> Leftover | None:
        """As the port says; and an attempt found without a supervisor is fenced first:
        one still being launched (by a stopped orchestrator, or a dead one's launcher)
        either is found on the second look or will not start its agent."""
        files = AttemptFiles(log_path)
        found = self._look(files, pid, create_time)
        if found is not None:
            return found
        try:
            files.fence.parent.mkdir(parents=True, exist_ok=True)
            files.fence.touch()
        except OSError as exc:
            raise AgentError(f"cannot fence the attempt logging to {log_path}: {exc}") from exc
        return self._look(files, pid, create_time)

    def _look(
        self, files: AttemptFiles, pid: int | None, create_time: float | None
    ) -> Leftover | None:
        log_path = files.log
        if read_exit_record(files.exit) is not None:
            return Leftover(log_path=log_path, pid=None, create_time=None, finished=True)
        if not files.shim.exists() and not files.spec.exists():
            return None  # not started under a supervisor (or long gone)
        candidates = [(pid, create_time)] if pid is not None and create_time else []
        shim = read_shim_id(files.shim)
        if shim is not None:
            candidates.append((shim.pid, shim.create_time))
        for cand_pid, cand_time in candidates:
            if alive_since(cand_pid, cand_time):
                return Leftover(
                    log_path=log_path, pid=cand_pid, create_time=cand_time, finished=False
                )
        # It may have written its record between the first look and now.
        if read_exit_record(files.exit) is not None:
            return Leftover(log_path=log_path, pid=None, create_time=None, finished=True)
        return None

    async def adopt(
        self, leftover: Leftover, reporter: AttemptReporter, *, after_report: int
    ) -> AgentResult:
        files = AttemptFiles(leftover.log_path)
        shim: _Shim
        if leftover.finished or leftover.pid is None or leftover.create_time is None:
            shim = _GoneShim()
        else:
            shim = _AdoptedShim.of(leftover.pid, leftover.create_time)
        return await self._follow(files, shim, reporter, after=after_report)

    # -- following -----------------------------------------------------------------------
    async def _follow(
        self, files: AttemptFiles, shim: _Shim, reporter: AttemptReporter, *, after: int
    ) -> AgentResult:
        reader = ReportReader(files.reports, after=after)
        try:
            while not await shim.wait(self._poll_s):
                _relay(reader, reporter)
        except asyncio.CancelledError:
            if self._take_detached(files):
                shim.close()
                raise
            await to_the_end(self._stop(shim, files))
            raise
        shim.close()
        _relay(reader, reporter)
        try:
            record = read_exit_record(files.exit)
        except SupervisionError as e:
            return _lost(f"{e.message}; the attempt's end is unknown", exit_code=shim.returncode)
        if record is None:
            return _lost(
                f"its supervisor exited (status {shim.returncode}) without an exit record;"
                f" see {files.stderr}",
                exit_code=shim.returncode,
            )
        for leftover in (files.spec, files.shim):
            with contextlib.suppress(OSError):
                leftover.unlink()
        return result_of(record)

    def _take_detached(self, files: AttemptFiles) -> bool:
        key = str(files.log)
        if key in self._detached:
            self._detached.discard(key)
            return True
        return False

    async def _stop(self, shim: _Shim, files: AttemptFiles) -> None:
        """SIGTERM the supervisor; SIGKILL its group if it does not exit in time; then
        whatever still carries the run marker."""
        shim.signal(signal.SIGTERM)
        if not await shim.wait(self._grace_s + _KILL_MARGIN_S):
            shim.signal(signal.SIGKILL)
            await shim.wait(_KILL_MARGIN_S)
        shim.close()
        await stop_marked(str(files.log), self._grace_s)


def _relay(reader: ReportReader, reporter: AttemptReporter) -> None:
    for number, report in reader.read():
        match report:
            case SessionReport():
                reporter.session_started(report.session_id, report_no=number)
            case TurnReport():
                reporter.turn_usage(report.model, report.usage, report_no=number)
            case RateLimitReport():
                reporter.rate_limit(
                    report.window,
                    report.status,
                    report.utilization,
                    report.resets_at,
                    report_no=number,
                )
            case ProcessReport():
                pass  # the agent's own process: the supervisor's is the one journaled


def _lost(error: str, *, exit_code: int | None) -> AgentResult:
    return AgentResult(
        outcome=Outcome.FAILED,
        exit_code=exit_code,
        error=error,
        failure=FailureEvidence(
            exception=SUPERVISOR_LOST, exit_code=exit_code, message=error[:300]
        ),
    )


# -- supervisors we wait on ------------------------------------------------------------------
class _Shim(Protocol):
    @property
    def returncode(self) -> int | None: ...

    async def wait(self, timeout: float) -> bool:
        """Whether it has exited, waiting up to ``timeout`` seconds for it."""
        ...

    def signal(self, signum: int) -> None: ...

    def close(self) -> None: ...


class _ChildShim:
    """A supervisor this orchestrator started: its child, reaped by asyncio."""

    def __init__(self, process: asyncio.subprocess.Process, create_time: float) -> None:
        self._process = process
        self.pid = process.pid
        self.create_time = create_time
        self._waiter: asyncio.Task[int] | None = None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self, timeout: float) -> bool:
        if self._process.returncode is not None:
            return True
        if self._waiter is None:  # one waiter for every poll: none left behind
            self._waiter = asyncio.ensure_future(self._process.wait())
        await asyncio.wait({self._waiter}, timeout=timeout)
        return self._process.returncode is not None

    def signal(self, signum: int) -> None:
        if self._process.returncode is None:
            signal_group(self._process.pid, signum)

    def close(self) -> None:
        pass


class _GoneShim:
    """A supervisor that has already written its exit record."""

    returncode: int | None = None

    async def wait(self, timeout: float) -> bool:
        return True

    def signal(self, signum: int) -> None:
        pass

    def close(self) -> None:
        pass


class _AdoptedShim:
    """A supervisor started by an earlier orchestrator: not our child, so its exit is
    seen through a pidfd (or by polling where there is none); init reaps it."""

    returncode: int | None = None

    def __init__(self, pid: int, create_time: float, pidfd: int | None) -> None:
        self.pid = pid
        self.create_time = create_time
        self._pidfd = pidfd
        self._exited: asyncio.Future[None] | None = None

    @classmethod
    def of(cls, pid: int, create_time: float) -> _AdoptedShim:
        pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(pid)
        shim = cls(pid, create_time, pidfd)
        if pidfd is not None and not alive_since(pid, create_time):
            shim.close()  # the pid was reused between find and here: it is gone
            shim._pidfd = None
        return shim

    def _gone(self) -> bool:
        return not alive_since(self.pid, self.create_time)

    async def wait(self, timeout: float) -> bool:
        if self._pidfd is None:
            if self._gone():
                return True
            await asyncio.sleep(timeout)  # no pidfd: polling is the only way to learn it
            return self._gone()
        if self._exited is None:
            loop = asyncio.get_running_loop()
            self._exited = loop.create_future()
            loop.add_reader(self._pidfd, self._on_exit)
        await asyncio.wait({self._exited}, timeout=timeout)
        return self._exited.done()

    def _on_exit(self) -> None:
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(None)
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)

    def signal(self, signum: int) -> None:
        if self._pidfd is not None and hasattr(signal, "pidfd_send_signal"):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._pidfd, signum)
            return
        if not self._gone():
            signal_group(self.pid, signum)

    def close(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class SupervisedHandoffBackend(SupervisedBackend):
    """A supervised backend whose sessions can be rotated: the handoff turn is short and
    runs in the orchestrator, as the wrapped backend does it (``ports.SessionHandoff``)."""

    def __init__(self, inner: AgentBackend, **kwargs: Any) -> None:
        assert isinstance(inner, SessionHandoff)
        super().__init__(inner, **kwargs)
        self._handoff: SessionHandoff = inner

    async def handoff(
        self, request: AgentRequest, session_id: str, prompt: str, reporter: AttemptReporter
    ) -> str | None:
        return await self._handoff.handoff(request, session_id, prompt, reporter)

    def handoff_from_log(self, log_path: Path) -> str | None:
        return self._handoff.handoff_from_log(log_path)


def supervised(inner: AgentBackend, **kwargs: Any) -> SupervisedBackend:
    """``inner`` under supervisors, keeping its session handoff when it has one."""
    if isinstance(inner, SessionHandoff):
        return SupervisedHandoffBackend(inner, **kwargs)
    return SupervisedBackend(inner, **kwargs)
