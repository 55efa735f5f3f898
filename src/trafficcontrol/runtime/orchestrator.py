"""The orchestrator: the loop of DESIGN.md around the pure core.

Design note. One asyncio task owns the state: it asks ``decide`` for commands,
journals them as events, acts on them (start or stop agents), then waits for events
from agents, timers and other processes, commits them as one batch (group commit)
and folds them in. Agents run as named asyncio tasks in an ``AgentPool`` and talk to
the loop only through the inbox. While the loop runs, the journal is touched only
through the ``StoreBuffer``, from one worker thread, so the SQLite connection is never
shared between threads at once.

Shutdown (SIGINT/SIGTERM, or ``stop()``): every running attempt gets a journaled
stop request, its agent is stopped (process group: SIGTERM, grace, SIGKILL) and its
end is journaled as ``interrupted``, so the next start re-queues it — unless
``leave_agents_running``: then supervised attempts are let go and run on. A crash
skips all of that; the next start (``runtime.recovery``) adopts every attempt whose
supervisor outlived us — journaling the real end of those that finished meanwhile,
following the others — and journals the rest as interrupted, after killing what is
left of them (matched by pid and start time, and by run marker).

Store outages (``runtime.store_buffer``): every turn's events are folded, then
journaled in one batch before the loop acts on them. While the journal cannot be
written the agents go on, their events are buffered up to a bound, nothing new is
acted on, and the outage is journaled as one ``StoreOutage`` once the store is back.
Requests from other processes are served between turns (``runtime.requests_server``).

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
from pathlib import Path

from trafficcontrol.domain.capacity.tracker import CapacityConfig
from trafficcontrol.domain.decide import (
    SchedulerConfig,
    decide,
)
from trafficcontrol.domain.events import (
    AnyEvent,
    AttemptAdopted,
    AttemptDispatched,
    AttemptFinished,
    AttemptStopRequested,
    CapacityConfigured,
    LeadConsulted,
    OrchestratorStarted,
    OrchestratorStopped,
    ResilienceConfigured,
    TaskSplit,
)
from trafficcontrol.domain.model import AttemptId, Outcome, StopReason, TaskId, TaskState
from trafficcontrol.domain.records import AttemptRecord
from trafficcontrol.domain.resilience import ResilienceConfig
from trafficcontrol.domain.state import State, apply
from trafficcontrol.errors import ConfigError, FencedError
from trafficcontrol.ports import (
    AdoptingBackend,
    AgentBackend,
    Clock,
    Fence,
    Journal,
    Leftover,
    RequestNotifier,
    RequestResult,
    Workspaces,
)
from trafficcontrol.runtime.lead import Lead
from trafficcontrol.runtime.leadership import Leadership
from trafficcontrol.runtime.pool import AgentPool
from trafficcontrol.runtime.recovery import LeftoverKiller, MarkedKiller, account_for_leftovers
from trafficcontrol.runtime.requests_server import RequestsServer
from trafficcontrol.runtime.sampler import Sampler
from trafficcontrol.runtime.slow_watch import SlowWatch
from trafficcontrol.runtime.snapshotter import Snapshotter
from trafficcontrol.runtime.stats import LoopStats
from trafficcontrol.runtime.store_buffer import StoreBuffer
from trafficcontrol.runtime.watchdog import Health, HungWatch, StoreStatus

log = logging.getLogger(__name__)


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
        leave_agents_running: bool = False,
        leadership: Leadership | None = None,
        stats: LoopStats | None = None,
    ) -> None:
        self._journal = journal
        self.leadership = leadership
        """The lease this orchestrator leads by (several instances on one store): its
        fence goes with every write, and the loop steps down once it is not trusted."""
        self.stepped_down: str | None = None
        """Why the run ended by stepping down (the lease was lost); None otherwise."""
        self._keeping: asyncio.Task[None] | None = None
        self.handing_off = False
        """Stopping to hand the lead to a standby (``hand_off``)."""
        self.leave_agents_running = leave_agents_running
        """At a clean stop, let supervised agents run on for the next orchestrator to
        adopt (a handoff) instead of stopping them."""
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
        self._stop_listening: Callable[[], None] | None = None
        self._next_wakeup: float | None = None
        self._buffer = StoreBuffer(
            journal=journal,
            clock=clock,
            state=self.state,
            inbox=self.pool.inbox,
            act=self._act,
            bound=store_buffer_events,
            retry_max_s=store_retry_max_s,
            shutdown_wait_s=store_shutdown_wait_s,
            on_fold=None if lead is None else lead.note,
            stats=stats or LoopStats(),
            fence=self._fence,
        )
        self.stats = self._buffer.stats
        """The loop's own figures (``runtime.stats``): turns, commits, dispatch latency."""
        self.pool.stats = self.stats
        if snapshotter is not None:
            snapshotter.spans = self.stats.spans
        self.slow = SlowWatch(self.stats.spans)
        """Slow operations as incidents (``runtime.slow_watch``)."""
        self._requests = RequestsServer(
            buffer=self._buffer, pool=self.pool, clock=clock, snapshotter=snapshotter
        )
        self._requests.sampler = Sampler(logs_dir.parent / "profiles")
        self._requests.handoff = self.hand_off
        self._hung = HungWatch(hung_after_s)

    # -- lifecycle --------------------------------------------------------------------
    def recover(self, base: State | None = None) -> State:
        """Fold the journal into ``base`` (a restored snapshot) or into a fresh state."""
        if base is not None:
            self.state = self.pool.state = self._buffer.state = base
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

    def hand_off(self) -> RequestResult:
        """Stop dispatching and stop, leaving the running supervised agents to the next
        leader, which the released lease lets in at once (``tc handoff``)."""
        if self.leadership is None:
            return RequestResult(
                ok=False, message="no standby can take over: this store has no leases (SQLite)"
            )
        self.handing_off = True
        self.leave_agents_running = True
        self.stop()
        return RequestResult(
            ok=True, message=f"handing off (epoch {self.leadership.epoch}): a standby takes over"
        )

    def health(self) -> Health:
        """The degraded modes in force now (read-only; cheap enough to poll)."""
        store = self._buffer.watch
        return Health(
            store=StoreStatus.OK if store.ok else StoreStatus.DEGRADED,
            store_since=store.since,
            store_errors=store.errors,
            store_last_error=store.last_error,
            store_outages=store.outages,
            buffered_events=len(self._buffer.unsent),
            buffer_bound=store.bound,
            dispatch_paused=not store.ok,
            agents_stopped=store.shed,
            hung_after_s=self._hung.hung_after_s,
            hung_killed=self._hung.killed,
        )

    async def run(self, *, until_idle: bool = True) -> None:
        """Run until idle (or stopped); with a lease, also until it is lost: then the run
        steps down (``stepped_down`` says why) and returns without writing anything."""
        try:
            try:
                await self._start()
                while True:
                    await self._step()
                    if self._stopping or (until_idle and self._idle()):
                        break
                    buffer = self._buffer
                    if self.snapshotter is not None and buffer.watch.ok and not buffer.unsent:
                        self.snapshotter.maybe_start(self.state)
                    await self._wait()
                await self._shutdown()
            except FencedError as exc:
                if self.leadership is None:
                    raise
                self.leadership.fenced(exc)
                await self._step_down(exc.message)
            except _LeaseLost as exc:
                await self._step_down(str(exc))
        finally:
            if self._keeping is not None:
                self._keeping.cancel()
                await asyncio.gather(self._keeping, return_exceptions=True)
            if self._stop_listening is not None:  # a run that failed never shut down
                await asyncio.to_thread(self._stop_listening)
                self._stop_listening = None
            await self.pool.cancel_all()
            self._buffer.close()

    async def _step_down(self, why: str) -> None:
        """The lease is lost: another instance leads, or will. Nothing more is written (it
        would be refused); supervised agents are let go for the new leader to adopt, the
        others stopped (the new leader journals them interrupted); no snapshot is taken
        (the state holds events the journal refused)."""
        self.stepped_down = why
        left = self.pool.detach_all()
        log.error("stepping_down why=%r agents_left_to_the_next_leader=%d", why, len(left))
        for job in list(self._consults):
            job.cancel()
        await self.pool.cancel_all()
        await self.pool.aclose()

    def _fence(self) -> Fence | None:
        return None if self.leadership is None else self.leadership.fence

    def _check_lease(self) -> None:
        leadership = self.leadership
        if leadership is not None and not leadership.valid():
            raise _LeaseLost(leadership.lost or "lost")

    async def _start(self) -> None:
        previous_clean = not self.state.running_orchestrator
        accounting = await asyncio.to_thread(
            account_for_leftovers,
            self.state,
            self._kill_leftover,
            self._clock.now(),
            self._kill_marked,
            self._find_leftover,
        )
        now = self._clock.now()
        events: list[AnyEvent] = list(accounting.ends)
        events += [
            AttemptAdopted(
                at=now, attempt_id=aid, instance=self.instance, finished=leftover.finished
            )
            for aid, leftover in accounting.adopt
        ]
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
        self._check_lease()
        await self._buffer.commit(events)
        self.stats.recovered = True
        if self.leadership is not None:
            leadership = self.leadership
            leadership.on_lost = self.pool.inbox.poke
            self.pool.may_act = leadership.valid
            self._keeping = asyncio.create_task(leadership.keep(), name="lease")
        if isinstance(self._journal, RequestNotifier):
            loop = asyncio.get_running_loop()

            def wake() -> None:  # from the listener's thread
                loop.call_soon_threadsafe(self._request_posted)

            self._stop_listening = self._journal.on_request(wake)
        await self.pool.warm()
        for aid, leftover in accounting.adopt:
            log.info("attempt_adopted attempt=%s finished=%s", aid, leftover.finished)
            self.pool.adopt(self.state.attempts[aid], leftover)

    def _request_posted(self) -> None:
        """A request was posted (``RequestNotifier``): take it on the next turn."""
        self._last_poll = float("-inf")
        self.pool.inbox.poke()

    def adoptable_leftovers(self) -> int:
        """Attempts the journal says run whose backend could adopt them at start."""
        return sum(
            isinstance(self._backends.get(a.backend), AdoptingBackend)
            for a in self.state.running.values()
        )

    def _find_leftover(self, attempt: AttemptRecord) -> Leftover | None:
        """The supervisor of ``attempt`` if it outlived its orchestrator (blocking)."""
        backend = self._backends.get(attempt.backend)
        if not isinstance(backend, AdoptingBackend):
            return None
        return backend.find(Path(attempt.log_path), attempt.pid, attempt.create_time)

    # -- one turn of the loop ---------------------------------------------------------
    async def _step(self) -> None:
        """Fold what agents reported, decide, journal both in one transaction, then act.

        The agents' events are folded before they are durable so that ``decide``
        sees them; nothing outside the process learns of them until the append
        returns (waiters are acknowledged, agents started or stopped only after it).
        While the store is down the turn only folds and buffers (``runtime.store_buffer``).
        """
        self._check_lease()
        store = self._buffer.watch
        self.stats.turned(self._clock.monotonic())
        if store.ok and self._clock.monotonic() - self._last_poll >= self._request_poll_s:
            self._last_poll = started = self._clock.monotonic()
            await self._requests.serve(self.state)
            self.stats.spans.observe("requests", started, self._clock.monotonic())
        events, waiters = self.pool.inbox.take()
        self._buffer.fold(events, waiters)
        if store.ok and (slow := self.slow.events(self._clock.now(), self._clock.monotonic())):
            self._buffer.fold(slow)
        self._next_wakeup = None
        if self.lead is not None:
            self.lead.observe(self.state, events)
            if store.ok and not self._stopping:
                self._consult_lead()
        if store.ok:
            self._decide()
        await self._buffer.flush()
        self._check_buffer()

    def _decide(self) -> None:
        """Ask ``decide`` and the hung watch; fold and buffer the intents, defer the acts."""
        started = self._clock.monotonic()
        decision = decide(self.state, self._clock.now(), self.scheduler)
        self.stats.spans.observe("decide", started, self._clock.monotonic())
        self._next_wakeup = decision.next_wakeup
        if self._stopping:
            return
        now = self._clock.now()
        deferred = self._buffer.deferred
        for command in decision.commands:
            event = self.pool.command_event(command, now)
            if isinstance(event, AttemptDispatched):
                deferred.starts.append(event)
            elif isinstance(event, AttemptStopRequested):
                deferred.stops.append((event.attempt_id, event.reason, None))
            self._buffer.fold([event])
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
            self._buffer.fold(
                [AttemptStopRequested(at=now, attempt_id=aid, reason=StopReason.HUNG)]
            )
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
        except Exception as exc:  # the lead is advice: its failure must not stop the work
            log.exception("lead_consult_failed purpose=%s task=%s", purpose, task_id)
            now = self._clock.now()
            if purpose == "split":  # run it as one task rather than wait for a lead
                events = [TaskSplit(at=now, task_id=task_id, children=[])]
            else:  # journaled as asked, so the task is left to a human, not asked again
                events = [
                    LeadConsulted(
                        at=now,
                        consult_id="failed",
                        purpose="triage",
                        task_id=task_id,
                        decision=f"no answer: {type(exc).__name__}: {str(exc)[:200]}",
                    )
                ]
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

    def _idle(self) -> bool:
        counts = self.state.counts
        return (
            not self.state.running
            and not counts[TaskState.READY]
            and not counts[TaskState.WAITING]
            and not self.pool.inbox.pending()
            and self._buffer.watch.ok
            and not self._buffer.unsent
            and not self._consults
            and (
                self.lead is None
                or not (self.lead.wants_triage(self.state) or self.lead.wants_split(self.state))
            )
        )

    async def _wait(self) -> None:
        monotonic = self._clock.monotonic()
        retry_in = self._buffer.watch.retry_in(monotonic)
        if retry_in is not None:  # the store is down: nothing to do before the next try
            if self.leadership is not None:  # but to step down, once the lease is untrusted
                retry_in = min(retry_in, self.leadership.trusted_for())
            await self.pool.inbox.wait(retry_in)
            return
        timeout = self._request_poll_s
        if self._next_wakeup is not None:
            timeout = min(timeout, max(0.0, self._next_wakeup - self._clock.now()))
        hung_at = self._hung.next_check()
        if hung_at is not None:
            timeout = min(timeout, max(0.0, hung_at - monotonic))
        if self.leadership is not None:  # wake up to step down, should renewals stop
            timeout = min(timeout, self.leadership.trusted_for())
        await self.pool.inbox.wait(timeout)

    async def _shutdown(self) -> None:
        left: set[AttemptId] = set()
        if self._stopping:
            now = self._clock.now()
            if self.leave_agents_running:
                left = set(self.pool.detach_all())
                if left:
                    log.info("agents_left_running count=%d", len(left))
                await self.pool.wait_for(list(left))
            self._buffer.fold(
                [
                    AttemptStopRequested(at=now, attempt_id=aid, reason=StopReason.SHUTDOWN)
                    for aid, attempt in self.state.running.items()
                    if attempt.stop_reason is None and aid not in left
                ]
            )
            # Journal the stops first when the store lets us; stop the agents either way.
            await self._buffer.flush(force=True)
            self._stop_agents(StopReason.SHUTDOWN)
            await self.pool.wait_all()
        events, waiters = self.pool.inbox.take()
        self._buffer.fold(events, waiters)
        left_running = tuple(sorted(aid for aid in self.state.running if aid in left))
        self._buffer.fold(
            [
                OrchestratorStopped(
                    at=self._clock.now(), instance=self.instance, left_running=left_running
                )
            ]
        )
        await self._buffer.flush_before_exit()
        if self.leadership is not None:
            await self.leadership.release()  # a standby takes over at once
        if self.snapshotter is not None:
            await self.snapshotter.drain()
            await self.snapshotter.take(self.state)
        await self.pool.aclose()

    def _stop_agents(self, reason: StopReason, *, started_only: bool = False) -> None:
        """Stop the agents now, whether or not their stop intents (folded and buffered
        by the caller) are journaled yet: shutdown, and a full buffer while the store
        is down. At shutdown, attempts dispatched but never started end interrupted."""
        deferred = self._buffer.deferred
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
        """At the buffer's bound, stop the agents: no event may be dropped
        (``runtime.store_buffer``). Attempts dispatched but not started yet start once
        the store is back."""
        if not self._buffer.overflowed():
            return
        now = self._clock.now()
        self._buffer.fold(
            [
                AttemptStopRequested(at=now, attempt_id=aid, reason=StopReason.STORE_OUTAGE)
                for aid, attempt in self.state.running.items()
                if attempt.stop_reason is None and self.pool.started(aid)
            ]
        )
        self._stop_agents(StopReason.STORE_OUTAGE, started_only=True)

    def _act(self) -> None:
        """Stop and start the agents that waited for the journal (``StoreBuffer`` calls
        this once the buffer is durable)."""
        if self.leadership is not None and not self.leadership.valid():
            return  # a slow commit outlived the lease: the next turn steps down, acting on none
        deferred = self._buffer.deferred
        stops, starts = deferred.stops, deferred.starts
        deferred.stops, deferred.starts = [], []
        for aid, reason, idle in stops:
            self._stop(aid, reason, idle)
        for start in starts:
            if self._stopping:  # never started: end it here rather than start to stop it
                now = self._clock.now()
                self.pool.inbox.put(_never_started(start, StopReason.SHUTDOWN, now))
            else:
                self.pool.start(start)

    def running_attempts(self) -> list[AttemptId]:
        return list(self.state.running)


class _LeaseLost(Exception):
    """The loop found its lease no longer trusted (``Leadership.valid``)."""


def _never_started(start: AttemptDispatched, reason: StopReason, now: float) -> AttemptFinished:
    """The end of an attempt whose dispatch was never acted on (the store was down)."""
    return AttemptFinished(
        at=now,
        attempt_id=start.attempt_id,
        outcome=Outcome.INTERRUPTED,
        error=f"interrupted ({reason}) before its agent started",
    )
