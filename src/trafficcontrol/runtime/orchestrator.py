"""The orchestrator: the loop of DESIGN.md around the pure core.

Design note. One asyncio task owns the state: it asks ``decide`` for commands,
journals them as events, acts on them (start or stop agents), then waits for events
from agents, timers and other processes, commits them as one batch (group commit)
and folds them in. Agents run as named asyncio tasks in an ``AgentPool`` and talk to
the loop only through the inbox. The journal is touched from one worker thread only,
so the SQLite connection is never shared between threads at once.

Shutdown (SIGINT/SIGTERM, or ``stop()``): every running attempt gets a journaled
stop request, its agent is stopped (process group: SIGTERM, grace, SIGKILL) and its
end is journaled as ``interrupted``, so the next start re-queues it. A crash skips
all of that; the next start finds the attempts still running in the journal, kills
any process group that outlived us (matched by pid and start time) and journals
them as interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from trafficcontrol.domain import snapshot
from trafficcontrol.domain.capacity.tracker import CapacityConfig
from trafficcontrol.domain.decide import (
    SchedulerConfig,
    decide,
)
from trafficcontrol.domain.events import (
    AnyEvent,
    AttemptDispatched,
    AttemptStopRequested,
    CapacityConfigured,
    OrchestratorStarted,
    OrchestratorStopped,
    ResilienceConfigured,
    RolledBack,
)
from trafficcontrol.domain.model import AttemptId, StopReason, TaskState
from trafficcontrol.domain.requests import (
    RollbackRequest,
    SnapshotRequest,
    plan,
    request_decoder,
)
from trafficcontrol.domain.resilience import ResilienceConfig
from trafficcontrol.domain.rollback import describe_rollback, plan_rollback
from trafficcontrol.domain.state import State, apply
from trafficcontrol.errors import ConfigError, StoreError, TrafficControlError
from trafficcontrol.ports import AgentBackend, Clock, Journal, RequestResult, Workspaces
from trafficcontrol.runtime.pool import AgentPool
from trafficcontrol.runtime.recovery import LeftoverKiller, MarkedKiller, interrupt_leftovers
from trafficcontrol.runtime.snapshotter import Snapshotter

log = logging.getLogger(__name__)
T = TypeVar("T")


class Orchestrator:
    def __init__(
        self,
        *,
        journal: Journal,
        backends: Mapping[str, AgentBackend],
        workspaces: Workspaces,
        clock: Clock,
        scheduler: SchedulerConfig,
        logs_dir: Path,
        instance: str,
        kill_leftover: LeftoverKiller,
        kill_marked: MarkedKiller,
        request_poll_s: float = 0.2,
        record_latency: bool = False,
        snapshotter: Snapshotter | None = None,
        capacity: CapacityConfig | None = None,
        resilience: ResilienceConfig | None = None,
    ) -> None:
        self._journal = journal
        self._capacity = capacity
        self._resilience = resilience
        self._backends = backends
        self._clock = clock
        self.scheduler = scheduler
        self.instance = instance
        self._kill_leftover = kill_leftover
        self._kill_marked = kill_marked
        self._request_poll_s = request_poll_s
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self.state = State()
        self.pool = AgentPool(
            backends=backends,
            workspaces=workspaces,
            clock=clock,
            logs_dir=logs_dir,
            state=self.state,
            record_latency=record_latency,
        )
        self.snapshotter = snapshotter
        self._stopping = False
        self._last_poll = float("-inf")

    # -- lifecycle --------------------------------------------------------------------
    def recover(self, base: State | None = None) -> State:
        """Fold the journal into ``base`` (a restored snapshot) or into a fresh state."""
        if base is not None:
            self.state = self.pool.state = base
        for _seq, event in self._journal.read(after=self.state.seq):
            apply(self.state, event)
        return self.state

    def check_backends(self) -> None:
        """Fail before anything runs when a backend that queued work needs is unusable."""
        needed: set[str] = set()
        for record in self.state.tasks.values():
            if not record.state.terminal:
                project = self.state.projects[record.spec.project]
                needed.add(record.spec.agent or project.agent or self.scheduler.default_backend)
        for name in sorted(needed):
            backend = self._backends.get(name)
            if backend is None:
                raise ConfigError(f"no agent backend named {name!r} is configured")
            backend.check()

    def stop(self) -> None:
        """Ask for a graceful shutdown. Idempotent; safe from a signal handler."""
        self._stopping = True
        self.pool.inbox.poke()

    async def run(self, *, until_idle: bool = True) -> None:
        try:
            await self._start()
            while True:
                await self._step()
                if self._stopping or (until_idle and self._idle()):
                    break
                if self.snapshotter is not None:
                    self.snapshotter.maybe_start(self.state)
                await self._wait()
            await self._shutdown()
        finally:
            await self.pool.cancel_all()
            self._io.shutdown(wait=True)

    async def _start(self) -> None:
        previous_clean = not self.state.running_orchestrator
        events: list[AnyEvent] = list(
            await asyncio.to_thread(
                interrupt_leftovers,
                self.state,
                self._kill_leftover,
                self._clock.now(),
                self._kill_marked,
            )
        )
        if self._capacity is not None and self._capacity != self.state.capacity.config:
            events.append(CapacityConfigured(at=self._clock.now(), config=self._capacity))
        if self._resilience is not None and self._resilience != self.state.resilience.config:
            events.append(ResilienceConfigured(at=self._clock.now(), config=self._resilience))
        events.append(
            OrchestratorStarted(
                at=self._clock.now(),
                instance=self.instance,
                pid=os.getpid(),
                previous_clean=previous_clean,
            )
        )
        await self._commit(events)

    # -- one turn of the loop ---------------------------------------------------------
    async def _step(self) -> None:
        """Fold what agents reported, decide, journal both in one transaction, then act.

        The agents' events are folded before they are durable so that ``decide``
        sees them; nothing outside the process learns of them until the commit
        returns (waiters are acknowledged, agents started or stopped only after it),
        and a failed commit ends the run, so the journal stays the truth.
        """
        if self._clock.monotonic() - self._last_poll >= self._request_poll_s:
            self._last_poll = self._clock.monotonic()
            await self._serve_requests()
        events, waiters = self.pool.inbox.take()
        for event in events:
            apply(self.state, event)
        decision = decide(self.state, self._clock.now(), self.scheduler)
        self._next_wakeup = decision.next_wakeup
        starts: list[AttemptDispatched] = []
        stops: list[AttemptStopRequested] = []
        if decision.commands and not self._stopping:
            now = self._clock.now()
            for command in decision.commands:
                event = self.pool.command_event(command, now)
                if isinstance(event, AttemptDispatched):
                    starts.append(event)
                elif isinstance(event, AttemptStopRequested):
                    stops.append(event)
                apply(self.state, event)
                events.append(event)
        await self._append(events)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        for stop in stops:
            self.pool.stop(stop.attempt_id, stop.reason)
        for start in starts:
            self.pool.start(start)

    async def _serve_requests(self) -> None:
        requests = await self._blocking(self._journal.take_requests)
        for request in requests:
            try:
                decoded = request_decoder.decode(request.body)
                match decoded:
                    case SnapshotRequest():
                        result = await self._snapshot_now()
                    case RollbackRequest():
                        result = await self._rollback(decoded)
                    case _:
                        event = plan(self.state, decoded, self._clock.now())
                        if event is not None:
                            await self._commit([event])
                        message = "accepted" if event else "no change"
                        result = RequestResult(ok=True, message=message)
            except TrafficControlError as exc:
                problems = getattr(exc, "problems", [exc.message])
                result = RequestResult(ok=False, message=exc.message, details=problems)
            except ValueError as exc:  # msgspec.DecodeError: a malformed request row
                result = RequestResult(ok=False, message=f"malformed request: {exc}")
            await self._blocking(self._journal.finish_request, request.id, result)

    async def _snapshot_now(self) -> RequestResult:
        if self.snapshotter is None:
            return RequestResult(ok=False, message="snapshots are off (snapshot_interval_s = 0)")
        record = await self.snapshotter.take(self.state)
        if record is None:
            return RequestResult(ok=False, message=self.snapshotter.last_error or "failed")
        return RequestResult(
            ok=True, message=f"snapshot {record.version} written (seq {record.seq}): {record.path}"
        )

    async def _rollback(self, request: RollbackRequest) -> RequestResult:
        """Stop the agents the rollback affects, then journal ``RolledBack``."""
        if self.snapshotter is None:
            return RequestResult(ok=False, message="snapshots are off (snapshot_interval_s = 0)")
        _record, payload = await asyncio.to_thread(self.snapshotter.files.read, request.version)
        try:
            data = snapshot.decode(payload)
        except snapshot.SnapshotSchemaError as exc:
            return RequestResult(ok=False, message=f"snapshot {request.version}: {exc}")
        rollback = plan_rollback(self.state, data, request.version)
        details = describe_rollback(rollback)
        if request.dry_run:
            return RequestResult(ok=True, message="dry run: nothing changed", details=details)
        now = self._clock.now()
        await self._commit(
            [
                AttemptStopRequested(at=now, attempt_id=aid, reason=StopReason.ROLLBACK)
                for aid in rollback.stops
                if self.state.running[aid].stop_reason is None
            ]
        )
        for aid in rollback.stops:
            self.pool.stop(aid, StopReason.ROLLBACK)
        await self.pool.wait_for(rollback.stops)
        events, waiters = self.pool.inbox.take()
        await self._commit(events)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        await self._commit(
            [RolledBack(at=self._clock.now(), version=request.version, snapshot=data)]
        )
        return RequestResult(
            ok=True, message=f"rolled back to snapshot {request.version}", details=details
        )

    def _idle(self) -> bool:
        counts = self.state.counts
        return (
            not self.state.running
            and not counts[TaskState.READY]
            and not counts[TaskState.WAITING]
            and not self.pool.inbox.pending()
        )

    async def _wait(self) -> None:
        timeout = self._request_poll_s
        if self._next_wakeup is not None:
            timeout = min(timeout, max(0.0, self._next_wakeup - self._clock.now()))
        await self.pool.inbox.wait(timeout)

    async def _shutdown(self) -> None:
        if self._stopping:
            now = self._clock.now()
            stops: list[AnyEvent] = [
                AttemptStopRequested(at=now, attempt_id=aid, reason=StopReason.SHUTDOWN)
                for aid, attempt in self.state.running.items()
                if attempt.stop_reason is None
            ]
            await self._commit(stops)
            for aid in list(self.state.running):
                self.pool.stop(aid, StopReason.SHUTDOWN)
            await self.pool.wait_all()
        events, waiters = self.pool.inbox.take()
        events.append(OrchestratorStopped(at=self._clock.now(), instance=self.instance))
        await self._commit(events)
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self.snapshotter is not None:
            await self.snapshotter.drain()
            await self.snapshotter.take(self.state)

    # -- journal ------------------------------------------------------------------------
    async def _commit(self, events: list[AnyEvent]) -> None:
        """Journal, then fold."""
        if not events:
            return
        last = await self._blocking(self._journal.append, events)
        for event in events:
            apply(self.state, event)
        self._check_seq(last)

    async def _append(self, events: list[AnyEvent]) -> None:
        """Journal events that are already folded."""
        if events:
            self._check_seq(await self._blocking(self._journal.append, events))

    def _check_seq(self, last: int) -> None:
        if last != self.state.seq:
            raise StoreError(
                f"journal sequence {last} does not match the state's {self.state.seq}:"
                " another process wrote to the journal while this orchestrator ran"
            )

    async def _blocking(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def running_attempts(self) -> list[AttemptId]:
        return list(self.state.running)
