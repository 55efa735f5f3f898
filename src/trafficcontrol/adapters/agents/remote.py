"""The ``<backend>@workers`` backends: attempts run by ``tc worker`` on other machines.

Design note. The leader still decides everything (what runs, when, on which model,
within which capacity and locks); only the agent runs elsewhere. ``run`` queues the
fully resolved request (``ports.WorkQueue``) and follows it: every report a worker
appends is relayed to the reporter with its number (journaled as ``report_no``, so a
leader that takes over reads on from the first one not journaled), and the worker's
result is the attempt's. The worker prepares the workspace from its own checkout
(``prepares_workspace``), so nothing here touches a git repository.

- A worker silent for ``lost_after_s`` (store clock) about a claimed attempt has it
  given up: the attempt fails with ``FailureEvidence(idle_s=...)``, classed transient,
  so the retry policy runs it again, on whichever worker claims it. An attempt no
  worker claims waits queued: the leader's limits already count it as running.
- Cancellation asks the worker to stop it (the row's ``stop``), waits up to
  ``stop_wait_s`` for its end, then re-raises, as the contract says.
- After a failover the new leader adopts the attempt by its log path (``find``,
  ``adopt``): queued, running or done, it is followed, never queued again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from trafficcontrol.domain.model import WORKERS, FailureEvidence, Outcome
from trafficcontrol.errors import StoreError
from trafficcontrol.ports import (
    AgentRequest,
    AgentResult,
    AttemptReporter,
    Clock,
    Leftover,
    WorkProgress,
    WorkQueue,
    WorkReport,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class RemoteBackend:
    prepares_workspace = True
    """The worker makes the workspace from its own checkout (the leader makes none)."""

    def __init__(
        self,
        local: str,
        queue: WorkQueue,
        clock: Clock,
        *,
        epoch: int = 0,
        poll_s: float = 0.1,
        lost_after_s: float = 15.0,
        stop_wait_s: float = 10.0,
    ) -> None:
        self.local = local
        """The backend the worker runs (claude, command, sim)."""
        self.name = local + WORKERS
        self._queue = queue
        self._clock = clock
        self.epoch = epoch
        self.poll_s = poll_s
        self.lost_after_s = lost_after_s
        self.stop_wait_s = stop_wait_s
        self._detached: set[str] = set()
        self._adoptable: dict[str, str] = {}
        """Log path -> attempt id of what ``find`` found (``adopt`` follows it)."""

    def check(self) -> None:
        """Workers check their own backends; here only the store must be reachable."""

    async def run(self, request: AgentRequest, reporter: AttemptReporter) -> AgentResult:
        await self._call(self._queue.put, request, self.local, self.epoch)
        return await self._follow(request.attempt_id, str(request.log_path), reporter, after=0)

    # -- adoption ------------------------------------------------------------------------
    def find(self, log_path: Path, pid: int | None, create_time: float | None) -> Leftover | None:
        found = self._queue.find(str(log_path))
        if found is None:
            return None
        attempt_id, state = found
        self._adoptable[str(log_path)] = attempt_id
        return Leftover(log_path=log_path, pid=None, create_time=None, finished=state == "done")

    async def adopt(
        self, leftover: Leftover, reporter: AttemptReporter, *, after_report: int
    ) -> AgentResult:
        attempt_id = self._adoptable.pop(str(leftover.log_path))
        return await self._follow(attempt_id, str(leftover.log_path), reporter, after=after_report)

    def detach(self, log_path: Path) -> None:
        self._detached.add(str(log_path))

    # -- following -------------------------------------------------------------------------
    async def _follow(
        self, attempt_id: str, log_path: str, reporter: AttemptReporter, *, after: int
    ) -> AgentResult:
        try:
            while True:
                progress = await self._call(self._queue.progress, attempt_id, after)
                if progress is None:
                    raise StoreError(f"attempt {attempt_id} is not in the work queue")
                after = _relay(progress, reporter, after)
                if progress.state == "done" and progress.result is not None:
                    return progress.result
                if progress.silent_s is not None and progress.silent_s > self.lost_after_s:
                    given = await self._call(
                        self._queue.give_up, attempt_id, self._lost(progress), self.lost_after_s
                    )
                    if given is not None:
                        return given
                await self._clock.sleep(self.poll_s)
        except asyncio.CancelledError:
            if log_path in self._detached:
                raise  # let go: the next leader follows it
            await self._stop(attempt_id)
            raise

    async def _stop(self, attempt_id: str) -> None:
        try:
            await asyncio.to_thread(self._queue.ask_stop, attempt_id, "stopped by the leader")
            waited = 0.0
            while waited < self.stop_wait_s:
                progress = await asyncio.to_thread(self._queue.progress, attempt_id, 1 << 30)
                if progress is None or progress.state == "done":
                    return
                await asyncio.sleep(self.poll_s)
                waited += self.poll_s
        except StoreError as exc:  # the stop stays asked: the worker sees it when it can
            log.warning("remote_stop_failed attempt=%s error=%r", attempt_id, exc.message)

    def _lost(self, progress: WorkProgress) -> AgentResult:
        worker = progress.worker or "no worker"
        return AgentResult(
            outcome=Outcome.FAILED,
            error=f"{worker} stopped reporting on this attempt for {self.lost_after_s:g}s",
            failure=FailureEvidence(idle_s=self.lost_after_s),
        )

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """A store call in a thread; while the store is unavailable, tried again (the
        agent runs on meanwhile: nothing is lost by waiting)."""
        delay = self.poll_s
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except StoreError as exc:
                if not exc.retryable:
                    raise
                log.warning("work_queue_unavailable error=%r", exc.message)
                await self._clock.sleep(delay)
                delay = min(delay * 2, 2.0)


def _relay(progress: WorkProgress, reporter: AttemptReporter, after: int) -> int:
    for n, report in progress.reports:
        _report(reporter, report, n)
        after = n
    return after


def _report(reporter: AttemptReporter, report: WorkReport, n: int) -> None:
    if report.kind == "session" and report.session_id is not None:
        reporter.session_started(report.session_id, report_no=n)
    elif report.kind == "rate_limit" and report.window is not None:
        reporter.rate_limit(
            report.window,
            report.status or "",
            report.utilization,
            report.resets_at,
            report_no=n,
        )
    elif report.kind == "turn" and report.usage is not None:
        reporter.turn_usage(report.model, report.usage, report_no=n)
