"""``tc worker``: run, on this machine, the attempts the leader queued for workers.

Design note. A worker decides nothing: it claims queued attempts of the projects it has
checkouts for, up to ``max_agents`` at once (``WorkQueue.claim``: SKIP LOCKED, so
workers never take one attempt twice), prepares each one's workspace from its own
checkout (a git worktree of its own, or the checkout itself), runs it with its local
backend, and writes back what the agent reports and its result. The leader follows
all of that and journals it (``adapters.agents.remote``). Reports are buffered and
written in order between two heartbeats (``beat_s``): a reporter must never block.

A heartbeat refreshes the worker's row and every attempt it runs, and brings back the
stops the leader asked for (the attempt is cancelled: its agent stopped as on a
timeout). A worker that restarts first kills what its previous run left (by the
attempts' run markers) and reports those attempts failed, so the leader retries them;
one that dies for good is given up by the leader once silent (``lost_after_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from trafficcontrol.domain.model import Outcome, ProjectId, ProjectSpec, TaskId, Usage
from trafficcontrol.errors import StoreError, TrafficControlError
from trafficcontrol.ports import (
    AgentBackend,
    AgentRequest,
    AgentResult,
    Clock,
    WorkQueue,
    WorkReport,
    Workspaces,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Reports:
    """An ``AttemptReporter`` that buffers what the agent says, numbered, for the queue."""

    pending: list[tuple[int, WorkReport]] = field(default_factory=list)
    count: int = 0

    def _add(self, report: WorkReport) -> None:
        self.count += 1
        self.pending.append((self.count, report))

    def process_started(self, pid: int, pgid: int, create_time: float) -> None:
        """A pid on this machine means nothing to the leader."""

    def session_started(self, session_id: str, *, report_no: int | None = None) -> None:
        self._add(WorkReport(kind="session", session_id=session_id))

    def rate_limit(
        self,
        window: str,
        status: str,
        utilization: float | None,
        resets_at: float | None,
        *,
        report_no: int | None = None,
    ) -> None:
        self._add(
            WorkReport(
                kind="rate_limit",
                window=window,
                status=status,
                utilization=utilization,
                resets_at=resets_at,
            )
        )

    def turn_usage(self, model: str | None, usage: Usage, *, report_no: int | None = None) -> None:
        self._add(WorkReport(kind="turn", model=model, usage=usage))


@dataclass
class _Running:
    request: AgentRequest
    task: asyncio.Task[None]
    reports: _Reports


class Worker:
    def __init__(
        self,
        *,
        queue: WorkQueue,
        backends: Mapping[str, AgentBackend],
        workspaces: Workspaces,
        checkouts: Mapping[str, Path],
        logs_dir: Path,
        host_id: str,
        max_agents: int,
        clock: Clock,
        kill_marked: Callable[[Collection[str]], set[str]],
        version: str = "",
        poll_s: float = 0.2,
        beat_s: float = 1.0,
    ) -> None:
        self._queue = queue
        self._backends = backends
        self._workspaces = workspaces
        self.checkouts = dict(checkouts)
        self._logs = logs_dir
        self.host_id = host_id
        self.max_agents = max_agents
        self._clock = clock
        self._kill_marked = kill_marked
        self._version = version
        self.poll_s = poll_s
        self.beat_s = beat_s
        self._running: dict[str, _Running] = {}
        self._stopping = False
        self._wake = asyncio.Event()
        self.ran = 0
        """Attempts this worker ran to their end."""

    def stop(self) -> None:
        """Stop claiming; stop the running agents (their attempts end as stopped)."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        projects = sorted(self.checkouts)
        await self._store(
            self._queue.register, self.host_id, projects, self.max_agents, self._version
        )
        await self._clean_up_after_a_restart()
        last_beat = float("-inf")
        try:
            while not self._stopping:
                free = self.max_agents - len(self._running)
                _ok, claimed = await self._store(
                    self._queue.claim, self.host_id, projects, sorted(self._backends), free
                )
                for backend, request in claimed or []:
                    self._start(backend, request)
                if self._clock.monotonic() - last_beat >= self.beat_s:
                    last_beat = self._clock.monotonic()
                    await self._beat()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
        finally:
            for running in list(self._running.values()):
                running.task.cancel()
            await asyncio.gather(*(r.task for r in self._running.values()), return_exceptions=True)
            await self._beat()

    async def _clean_up_after_a_restart(self) -> None:
        _ok, left = await self._store(self._queue.mine, self.host_id)
        if not left:
            return
        markers = [str(self._local_log(request)) for request in left]
        await asyncio.to_thread(self._kill_marked, markers)
        for request in left:
            result = AgentResult(
                outcome=Outcome.FAILED,
                error=f"worker {self.host_id} restarted while this attempt ran; its agent was"
                " stopped",
            )
            await self._store(self._queue.finish, self.host_id, request.attempt_id, result)
        log.warning("worker_restarted left=%d", len(left))

    def _start(self, backend: str, request: AgentRequest) -> None:
        reports = _Reports()
        task = asyncio.create_task(
            self._attempt(backend, request, reports), name=f"work:{request.attempt_id}"
        )
        self._running[request.attempt_id] = _Running(request, task, reports)

    async def _attempt(self, backend: str, request: AgentRequest, reports: _Reports) -> None:
        attempt_id = request.attempt_id
        try:
            try:
                local = await asyncio.to_thread(self._localised, request)
                result = await self._backends[backend].run(local, reports)
            except asyncio.CancelledError:
                result = AgentResult(outcome=Outcome.FAILED, error="stopped", stopped=True)
            except TrafficControlError as exc:
                result = AgentResult(outcome=Outcome.FAILED, error=exc.message)
            await self._flush(attempt_id, reports)
            _ok, finished = await self._store(self._queue.finish, self.host_id, attempt_id, result)
            if finished is False:
                log.warning("work_result_dropped attempt=%s (the leader gave up on it)", attempt_id)
            self.ran += 1
        finally:
            self._running.pop(attempt_id, None)
            self._wake.set()

    def _localised(self, request: AgentRequest) -> AgentRequest:
        """The request with this machine's workspace and log file (blocking: git)."""
        checkout = self.checkouts.get(request.project_id)
        if checkout is None:
            raise TrafficControlError(
                f"worker {self.host_id} has no checkout of project {request.project_id!r}"
            )
        project = ProjectSpec(
            id=ProjectId(request.project_id),
            path=str(checkout),
            is_git=(checkout / ".git").exists(),
        )
        if project.is_git:
            workspace = self._workspaces.prepare(
                project, TaskId(request.task_id), request.attempt_no
            )
            workdir = workspace.path
        else:
            workdir = checkout
        log_path = self._local_log(request)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return replace(request, workdir=workdir, log_path=log_path)

    def _local_log(self, request: AgentRequest) -> Path:
        return self._logs / request.task_id / f"{request.attempt_no}{request.log_path.suffix}"

    async def _beat(self) -> None:
        for attempt_id, running in list(self._running.items()):
            await self._flush(attempt_id, running.reports)
        _ok, stops = await self._store(self._queue.beat, self.host_id, sorted(self._running))
        for attempt_id, reason in (stops or {}).items():
            stopping = self._running.get(attempt_id)
            if stopping is not None and not stopping.task.done():
                log.info("work_stop attempt=%s reason=%s", attempt_id, reason)
                stopping.task.cancel()

    async def _flush(self, attempt_id: str, reports: _Reports) -> None:
        while reports.pending:
            n, report = reports.pending[0]
            ok, _none = await self._store(self._queue.report, attempt_id, n, report)
            if not ok:
                return
            reports.pending.pop(0)

    async def _store(self, fn: Callable[..., T], *args: object) -> tuple[bool, T | None]:
        """A store call in a thread: (True, its value), or (False, None) while the store
        is unavailable (logged; the caller tries again at its next turn)."""
        try:
            return True, await asyncio.to_thread(fn, *args)
        except StoreError as exc:
            if not exc.retryable:
                raise
            log.warning("worker_store_unavailable error=%r", exc.message)
            return False, None
