"""Requests from other processes (``tc submit``, cancel, retry, snapshot, rollback).

Design note. Other processes hand their mutations to a running orchestrator as
requests left in the journal (``Journal.take_requests``); the loop serves them between
turns, only while the store is up. Most requests are planned into one event
(``domain.requests.plan``), folded, and answered once it is journaled, like every
intent. Two act at once instead: a snapshot flushes the buffer first (it never runs
ahead of the journal), and a rollback journals the stops of the agents it affects,
waits for their ends and journals ``RolledBack``. Our errors (a retryable
``StoreError`` among them) and malformed rows become the request's answer; a
non-retryable ``StoreError`` ends the run. It is a module of its own because it is a
protocol with outsiders, not a part of the loop's turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from trafficcontrol.domain import snapshot
from trafficcontrol.domain.events import AttemptStopRequested, RolledBack
from trafficcontrol.domain.model import StopReason
from trafficcontrol.domain.requests import (
    HandoffRequest,
    RollbackRequest,
    SampleRequest,
    SnapshotRequest,
    plan,
    request_decoder,
)
from trafficcontrol.domain.rollback import describe_rollback, plan_rollback
from trafficcontrol.domain.state import State
from trafficcontrol.errors import StoreError, TrafficControlError
from trafficcontrol.ports import Clock, RequestResult
from trafficcontrol.runtime.pool import AgentPool
from trafficcontrol.runtime.sampler import Sampler
from trafficcontrol.runtime.snapshotter import Snapshotter
from trafficcontrol.runtime.store_buffer import StoreBuffer


class RequestsServer:
    """Takes the pending requests from the journal and answers each (module notes)."""

    def __init__(
        self,
        *,
        buffer: StoreBuffer,
        pool: AgentPool,
        clock: Clock,
        snapshotter: Snapshotter | None,
    ) -> None:
        self._buffer = buffer
        self._pool = pool
        self._clock = clock
        self._snapshotter = snapshotter
        self.sampler: Sampler | None = None
        """``tc profile --sample`` (``runtime.sampler``); set by the orchestrator."""
        self.handoff: Callable[[], RequestResult] | None = None
        """``tc handoff``; set by the orchestrator."""

    async def serve(self, state: State) -> None:
        buffer = self._buffer
        try:
            requests = await buffer.take_requests()
        except StoreError as exc:
            buffer.store_failed(exc)
            return
        for request in requests:
            try:
                decoded = request_decoder.decode(request.body)
                match decoded:
                    case SnapshotRequest():
                        result = await self._snapshot_now(state)
                    case RollbackRequest():
                        result = await self._rollback(state, decoded)
                    case SampleRequest():
                        result = self._sample(decoded.seconds)
                    case HandoffRequest():
                        result = self._handoff()
                    case _:
                        event = plan(state, decoded, self._clock.now())
                        if event is not None:
                            buffer.fold([event])  # answered once journaled
                        message = "accepted" if event else "no change"
                        result = RequestResult(ok=True, message=message)
            except StoreError as exc:
                if not exc.retryable:
                    raise
                result = RequestResult(ok=False, message=f"journal unavailable: {exc.message}")
            except TrafficControlError as exc:
                problems = getattr(exc, "problems", [exc.message])
                result = RequestResult(ok=False, message=exc.message, details=problems)
            except ValueError as exc:  # msgspec.DecodeError: a malformed request row
                result = RequestResult(ok=False, message=f"malformed request: {exc}")
            buffer.deferred.answers.append((request.id, result))

    def _handoff(self) -> RequestResult:
        if self.handoff is None:
            return RequestResult(ok=False, message="this orchestrator cannot hand off")
        return self.handoff()

    def _sample(self, seconds: float) -> RequestResult:
        if self.sampler is None:
            return RequestResult(ok=False, message="this orchestrator cannot sample itself")
        try:
            html, speedscope = self.sampler.start(seconds)
        except ValueError as exc:
            return RequestResult(ok=False, message=f"sample: {exc}")
        return RequestResult(
            ok=True,
            message=f"sampling the orchestrator for {seconds:g} s",
            details=[str(html), str(speedscope)],
        )

    async def _snapshot_now(self, state: State) -> RequestResult:
        if self._snapshotter is None:
            return RequestResult(ok=False, message="snapshots are off (snapshot_interval_s = 0)")
        await self._buffer.flush_or_raise()  # a snapshot never runs ahead of the journal
        record = await self._snapshotter.take(state)
        if record is None:
            return RequestResult(ok=False, message=self._snapshotter.last_error or "failed")
        return RequestResult(
            ok=True, message=f"snapshot {record.version} written (seq {record.seq}): {record.path}"
        )

    async def _rollback(self, state: State, request: RollbackRequest) -> RequestResult:
        """Stop the agents the rollback affects, then journal ``RolledBack``."""
        if self._snapshotter is None:
            return RequestResult(ok=False, message="snapshots are off (snapshot_interval_s = 0)")
        _record, payload = await asyncio.to_thread(self._snapshotter.files.read, request.version)
        try:
            data = snapshot.decode(payload)
        except snapshot.SnapshotSchemaError as exc:
            return RequestResult(ok=False, message=f"snapshot {request.version}: {exc}")
        rollback = plan_rollback(state, data, request.version)
        details = describe_rollback(rollback)
        if request.dry_run:
            return RequestResult(ok=True, message="dry run: nothing changed", details=details)
        now = self._clock.now()
        await self._buffer.commit(
            [
                AttemptStopRequested(at=now, attempt_id=aid, reason=StopReason.ROLLBACK)
                for aid in rollback.stops
                if state.running[aid].stop_reason is None
            ]
        )
        for aid in rollback.stops:
            self._pool.stop(aid, StopReason.ROLLBACK)
        await self._pool.wait_for(rollback.stops)
        events, waiters = self._pool.inbox.take()
        self._buffer.fold(events, waiters)
        await self._buffer.commit(
            [RolledBack(at=self._clock.now(), version=request.version, snapshot=data)]
        )
        return RequestResult(
            ok=True, message=f"rolled back to snapshot {request.version}", details=details
        )
