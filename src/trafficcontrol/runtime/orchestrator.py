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

Store outages. Every turn folds what it learned into the state and keeps those
events in ``_unsent`` with what waits for them to be durable (acknowledgements,
agents to start or stop, answers to requests); one ``append`` writes the lot, then
the loop acts. When that append fails with a retryable ``StoreError`` (a locked or
unreachable journal) the orchestrator degrades instead of dying:

- the running agents go on; their events are folded and added to the buffer, and
  the append is retried with backoff (``runtime.watchdog.StoreWatch``);
- nothing new is acted on: no ``decide`` (so no dispatch, no timeout or hung kill),
  no requests from other processes; what the failed batch had decided waits, folded,
  until it is journaled;
- when an append succeeds, the buffer goes in order in one batch followed by one
  ``StoreOutage`` event (start, end, buffered events, failed writes): the journal
  cannot record the outage while it lasts, so its summary comes after. Then the
  deferred actions run and normal turns resume;
- the buffer is bounded (``store_buffer_events``). At the bound every running agent
  is stopped (``StopReason.STORE_OUTAGE``, re-queued like a shutdown) — the one
  action, with shutdown, taken before its intent is durable; the intent still goes
  into the journal before the agent's end. The bound is then exceeded by at most the
  stop and the end of each agent, and nothing is ever dropped.

Rejected alternatives at the bound: dropping or coalescing events (turn usage,
rate-limit reports) loses facts the capacity ledger is built from; blocking the
agents' reporters breaks the adapters' never-block contract; exiting loses every
buffered fact, while a stopped agent loses little (a claude attempt resumes its
session, its worktree stays). A non-retryable ``StoreError`` (a corrupt row,
another writer on the journal) still ends the run at once. At shutdown the buffer is
retried for ``store_shutdown_wait_s``; after that the run ends with an error and the
next start recovers from the journal as after a crash (attempts whose end was lost
run again).

Hung agents: an attempt whose log has not grown for ``hung_after_s`` gets a
journaled stop (``StopReason.HUNG``); its agent is killed as on a timeout and the
attempt fails with ``FailureEvidence(idle_s=...)``, which the failure table classes
transient, so it is retried (``runtime.watchdog.HungWatch``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
    AttemptFinished,
    AttemptStopRequested,
    CapacityConfigured,
    OrchestratorStarted,
    OrchestratorStopped,
    ResilienceConfigured,
    RolledBack,
    TaskSplit,
)
from trafficcontrol.domain.model import AttemptId, Outcome, StopReason, TaskId, TaskState
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
from trafficcontrol.runtime.lead import Lead
from trafficcontrol.runtime.pool import AgentPool
from trafficcontrol.runtime.recovery import LeftoverKiller, MarkedKiller, interrupt_leftovers
from trafficcontrol.runtime.snapshotter import Snapshotter
from trafficcontrol.runtime.watchdog import Health, HungWatch, StoreStatus, StoreWatch

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class _Deferred:
    """What waits for the buffered events to be journaled."""

    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    stops: list[tuple[AttemptId, StopReason, float | None]] = field(default_factory=list)
    """(attempt, reason, idle seconds when hung)."""
    starts: list[AttemptDispatched] = field(default_factory=list)
    answers: list[tuple[int, RequestResult]] = field(default_factory=list)
    """Answers to requests from other processes."""


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
        lead: Lead | None = None,
        store_buffer_events: int = 10_000,
        store_retry_max_s: float = 5.0,
        store_shutdown_wait_s: float = 60.0,
        hung_after_s: float | None = None,
    ) -> None:
        self._journal = journal
        self._capacity = capacity
        self._resilience = resilience
        self.lead = lead
        """The optional lead agent (``runtime.lead``); its consults run as their own tasks."""
        self._consults: set[asyncio.Task[None]] = set()
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
            rotation=scheduler.rotation,
        )
        self.snapshotter = snapshotter
        self._stopping = False
        self._last_poll = float("-inf")
        self._next_wakeup: float | None = None
        self._store = StoreWatch(bound=store_buffer_events, retry_max_s=store_retry_max_s)
        self._shutdown_wait_s = store_shutdown_wait_s
        self._hung = HungWatch(hung_after_s)
        self._unsent: list[AnyEvent] = []
        """Events folded into the state but not yet journaled, in order."""
        self._deferred = _Deferred()

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

    def health(self) -> Health:
        """The degraded modes in force now (read-only; cheap enough to poll)."""
        store = self._store
        return Health(
            store=StoreStatus.OK if store.ok else StoreStatus.DEGRADED,
            store_since=store.since,
            store_errors=store.errors,
            store_last_error=store.last_error,
            store_outages=store.outages,
            buffered_events=len(self._unsent),
            buffer_bound=store.bound,
            dispatch_paused=not store.ok,
            agents_stopped=store.shed,
            hung_after_s=self._hung.hung_after_s,
            hung_killed=self._hung.killed,
        )

    async def run(self, *, until_idle: bool = True) -> None:
        try:
            await self._start()
            while True:
                await self._step()
                if self._stopping or (until_idle and self._idle()):
                    break
                if self.snapshotter is not None and self._store.ok and not self._unsent:
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
        sees them; nothing outside the process learns of them until the append
        returns (waiters are acknowledged, agents started or stopped only after it).
        While the store is down the turn only folds and buffers (module docstring).
        """
        if self._store.ok and self._clock.monotonic() - self._last_poll >= self._request_poll_s:
            self._last_poll = self._clock.monotonic()
            await self._serve_requests()
        events, waiters = self.pool.inbox.take()
        self._fold(events, waiters)
        self._next_wakeup = None
        if self.lead is not None:
            self.lead.observe(self.state, events)
            if self._store.ok and not self._stopping:
                self._consult_lead()
        if self._store.ok:
            self._decide()
        await self._flush()
        self._check_buffer()

    def _decide(self) -> None:
        """Ask ``decide`` and the hung watch; fold and buffer the intents, defer the acts."""
        decision = decide(self.state, self._clock.now(), self.scheduler)
        self._next_wakeup = decision.next_wakeup
        if self._stopping:
            return
        now = self._clock.now()
        deferred = self._deferred
        for command in decision.commands:
            event = self.pool.command_event(command, now)
            if isinstance(event, AttemptDispatched):
                deferred.starts.append(event)
            elif isinstance(event, AttemptStopRequested):
                deferred.stops.append((event.attempt_id, event.reason, None))
            self._fold([event])
        monotonic = self._clock.monotonic()
        if not self._hung.due(monotonic):
            return
        logs = {
            aid: attempt.log_path
            for aid, attempt in self.state.running.items()
            if attempt.stop_reason is None and self.pool.started(aid)
        }
        for aid, idle in self._hung.check(logs, monotonic):
            log.warning("agent_hung attempt=%s idle_s=%.1f", aid, idle)
            self._fold([AttemptStopRequested(at=now, attempt_id=aid, reason=StopReason.HUNG)])
            deferred.stops.append((aid, StopReason.HUNG, idle))

    def _consult_lead(self) -> None:
        """Start a triage consult (off the loop) for each task that wants one."""
        lead = self.lead
        assert lead is not None
        for purpose, wanted in (
            ("split", lead.wants_split(self.state)),
            ("triage", lead.wants_triage(self.state)),
        ):
            for task_id in wanted:
                lead.in_flight.add(task_id)
                job = asyncio.create_task(
                    self._consult(purpose, task_id), name=f"lead:{purpose}:{task_id}"
                )
                self._consults.add(job)
                job.add_done_callback(self._consults.discard)

    async def _consult(self, purpose: str, task_id: TaskId) -> None:
        lead = self.lead
        assert lead is not None
        events: list[AnyEvent] = []
        try:
            if purpose == "split":
                conventions = await asyncio.to_thread(self._conventions, task_id)
                events = await lead.split(self.state, task_id, conventions)
            else:
                events = await lead.triage(self.state, task_id)
        except Exception:  # the lead is advice: its failure must not stop the work
            log.exception("lead_consult_failed purpose=%s task=%s", purpose, task_id)
            if purpose == "split":  # run it as one task rather than wait for a lead
                events = [TaskSplit(at=self._clock.now(), task_id=task_id, children=[])]
        finally:
            lead.in_flight.discard(task_id)
        for event in events:
            self.pool.inbox.put(event)
        self.pool.inbox.poke()

    def _conventions(self, task_id: TaskId) -> str:
        """The project's conventions file (CLAUDE.md), which subtasks inherit."""
        project = self.state.projects[self.state.tasks[task_id].spec.project]
        try:
            return (Path(project.path) / "CLAUDE.md").read_text(encoding="utf-8")[:20_000]
        except OSError:
            return ""

    def _fold(
        self, events: list[AnyEvent], waiters: list[asyncio.Future[None]] | None = None
    ) -> None:
        """Fold events that are not journaled yet and buffer them for the next append."""
        for event in events:
            apply(self.state, event)
        self._unsent.extend(events)
        if waiters:
            self._deferred.waiters.extend(waiters)

    async def _serve_requests(self) -> None:
        try:
            requests = await self._blocking(self._journal.take_requests)
        except StoreError as exc:
            self._store_failed(exc)
            return
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
                            self._fold([event])  # answered once journaled
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
            self._deferred.answers.append((request.id, result))

    async def _snapshot_now(self) -> RequestResult:
        if self.snapshotter is None:
            return RequestResult(ok=False, message="snapshots are off (snapshot_interval_s = 0)")
        await self._flush_or_raise()  # a snapshot never runs ahead of the journal
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
        self._fold(events, waiters)
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
            and self._store.ok
            and not self._unsent
            and not self._consults
            and (
                self.lead is None
                or not (self.lead.wants_triage(self.state) or self.lead.wants_split(self.state))
            )
        )

    async def _wait(self) -> None:
        monotonic = self._clock.monotonic()
        retry_in = self._store.retry_in(monotonic)
        if retry_in is not None:  # the store is down: nothing to do before the next try
            await self.pool.inbox.wait(retry_in)
            return
        timeout = self._request_poll_s
        if self._next_wakeup is not None:
            timeout = min(timeout, max(0.0, self._next_wakeup - self._clock.now()))
        hung_at = self._hung.next_check()
        if hung_at is not None:
            timeout = min(timeout, max(0.0, hung_at - monotonic))
        await self.pool.inbox.wait(timeout)

    async def _shutdown(self) -> None:
        if self._stopping:
            now = self._clock.now()
            self._fold(
                [
                    AttemptStopRequested(at=now, attempt_id=aid, reason=StopReason.SHUTDOWN)
                    for aid, attempt in self.state.running.items()
                    if attempt.stop_reason is None
                ]
            )
            # Journal the stops first when the store lets us; stop the agents either way.
            await self._flush(force=True)
            self._stop_agents(StopReason.SHUTDOWN)
            await self.pool.wait_all()
        events, waiters = self.pool.inbox.take()
        self._fold(events, waiters)
        self._fold([OrchestratorStopped(at=self._clock.now(), instance=self.instance)])
        await self._flush_before_exit()
        if self.snapshotter is not None:
            await self.snapshotter.drain()
            await self.snapshotter.take(self.state)

    def _stop_agents(self, reason: StopReason, *, started_only: bool = False) -> None:
        """Stop the agents now, whether or not their stop intents (folded and buffered
        by the caller) are journaled yet: shutdown, and a full buffer while the store
        is down. At shutdown, attempts dispatched but never started end interrupted."""
        deferred = self._deferred
        stops, deferred.stops = deferred.stops, []
        for aid, why, idle in stops:
            self._stop(aid, why, idle)
        for aid, attempt in list(self.state.running.items()):
            rotating = attempt.stop_reason is StopReason.ROTATE  # its handoff is cut short
            self.pool.stop(aid, reason if rotating else attempt.stop_reason or reason)
        if not started_only:
            starts, deferred.starts = deferred.starts, []
            for start in starts:
                self.pool.inbox.put(_never_started(start, reason, self._clock.now()))

    def _stop(self, attempt_id: AttemptId, reason: StopReason, idle_s: float | None) -> None:
        if reason is StopReason.HUNG:
            self._hung.killed += 1
        self.pool.stop(attempt_id, reason, idle_s=idle_s)

    def _check_buffer(self) -> None:
        """At the buffer's bound, stop the agents: no event may be dropped (docstring).
        Attempts dispatched but not started yet start once the store is back."""
        store = self._store
        if store.ok or store.shed or len(self._unsent) < store.bound:
            return
        store.shed = True
        log.error(
            "store_buffer_full buffered=%d bound=%d: stopping the agents until the journal is back",
            len(self._unsent),
            store.bound,
        )
        now = self._clock.now()
        self._fold(
            [
                AttemptStopRequested(at=now, attempt_id=aid, reason=StopReason.STORE_OUTAGE)
                for aid, attempt in self.state.running.items()
                if attempt.stop_reason is None and self.pool.started(aid)
            ]
        )
        self._stop_agents(StopReason.STORE_OUTAGE, started_only=True)

    # -- journal ------------------------------------------------------------------------
    async def _flush(self, *, force: bool = False) -> bool:
        """Journal the buffer in one batch (plus the outage summary when the store was
        down), then act on what waited for it. False: the store is (still) unavailable.
        While it is down a try is made only when the backoff says so, or ``force``."""
        store = self._store
        if not force and not store.due(self._clock.monotonic()):
            return False
        buffered = len(self._unsent)
        batch = list(self._unsent)
        summary = None if store.ok else store.summary(self._clock.now(), buffered)
        if summary is not None:
            batch.append(summary)
        if batch:
            try:
                last = await self._blocking(self._journal.append, batch)
            except StoreError as exc:
                if not exc.retryable:
                    raise
                self._store_failed(exc)
                return False
            del self._unsent[:buffered]
            if summary is not None:
                apply(self.state, summary)
                store.recovered()
                log.warning(
                    "store_recovered outage_s=%.1f buffered=%d errors=%d",
                    summary.at - summary.started_at,
                    summary.buffered,
                    summary.errors,
                )
            self._check_seq(last)
        await self._act()
        return True

    async def _flush_or_raise(self) -> None:
        if not await self._flush(force=True):
            raise StoreError(f"the journal is unavailable: {self._store.last_error}")

    async def _flush_before_exit(self) -> None:
        """Flush, retrying for ``store_shutdown_wait_s`` at most."""
        give_up_at = self._clock.monotonic() + self._shutdown_wait_s
        while not await self._flush():
            monotonic = self._clock.monotonic()
            if monotonic >= give_up_at:
                if await self._flush(force=True):  # a last try, whatever the backoff says
                    return
                raise StoreError(
                    f"the journal is still unavailable ({self._store.last_error}):"
                    f" {len(self._unsent)} events were not journaled; the next start"
                    " recovers from the journal as after a crash",
                    retryable=False,
                )
            retry_in = self._store.retry_in(monotonic) or 0.0
            await self.pool.inbox.wait(min(retry_in, give_up_at - monotonic))
            events, waiters = self.pool.inbox.take()
            self._fold(events, waiters)

    async def _act(self) -> None:
        """Do what waited for the journal (called once the buffer is durable)."""
        deferred = self._deferred
        waiters, stops, starts = deferred.waiters, deferred.stops, deferred.starts
        deferred.waiters, deferred.stops, deferred.starts = [], [], []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        for aid, reason, idle in stops:
            self._stop(aid, reason, idle)
        for start in starts:
            if self._stopping:  # never started: end it here rather than start to stop it
                now = self._clock.now()
                self.pool.inbox.put(_never_started(start, StopReason.SHUTDOWN, now))
            else:
                self.pool.start(start)
        while deferred.answers:
            request_id, result = deferred.answers[0]
            try:
                await self._blocking(self._journal.finish_request, request_id, result)
            except StoreError as exc:
                if not exc.retryable:
                    raise
                self._store_failed(exc)
                return
            deferred.answers.pop(0)

    async def _commit(self, events: list[AnyEvent]) -> None:
        """Journal, then fold: for intents that must not be folded before they are
        durable. The buffer goes first; raises ``StoreError`` when the store is down."""
        await self._flush_or_raise()
        if not events:
            return
        try:
            last = await self._blocking(self._journal.append, events)
        except StoreError as exc:
            if exc.retryable:
                self._store_failed(exc)
            raise
        for event in events:
            apply(self.state, event)
        self._check_seq(last)

    def _store_failed(self, exc: StoreError) -> None:
        store = self._store
        if store.failed(exc.message, self._clock.now(), self._clock.monotonic()):
            log.error(
                "store_unavailable error=%r: dispatch paused, events buffered (bound %d)",
                exc.message,
                store.bound,
            )
        else:
            log.warning(
                "store_still_unavailable errors=%d buffered=%d error=%r",
                store.errors,
                len(self._unsent),
                exc.message,
            )

    def _check_seq(self, last: int) -> None:
        if last != self.state.seq:
            raise StoreError(
                f"journal sequence {last} does not match the state's {self.state.seq}:"
                " another process wrote to the journal while this orchestrator ran",
                retryable=False,
            )

    async def _blocking(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def running_attempts(self) -> list[AttemptId]:
        return list(self.state.running)


def _never_started(start: AttemptDispatched, reason: StopReason, now: float) -> AttemptFinished:
    """The end of an attempt whose dispatch was never acted on (the store was down)."""
    return AttemptFinished(
        at=now,
        attempt_id=start.attempt_id,
        outcome=Outcome.INTERRUPTED,
        error=f"interrupted ({reason}) before its agent started",
    )
