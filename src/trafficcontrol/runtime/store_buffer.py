"""The journal's side of the loop: events folded but not yet journaled, and store outages.

Design note. Every turn folds what it learned into the state and keeps those events in
``unsent`` with what waits for them to be durable (``Deferred``: acknowledgements,
agents to start or stop, answers to requests); one ``append`` writes the lot, then the
loop acts. ``StoreBuffer`` is that buffer and the loop's only way to the journal: the
orchestrator decides and acts on agents, this class decides when what was folded is
durable and hands the acting back (its ``act`` callback). The journal is touched from
one worker thread only (``blocking``), so the SQLite connection is never shared between
threads at once. It lives apart from the orchestrator because outage handling is its
own state machine (buffer, backoff, summary, bound) that the loop only asks questions of.

Store outages. When an append fails with a retryable ``StoreError`` (a locked or
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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from trafficcontrol.domain.events import AnyEvent, AttemptDispatched
from trafficcontrol.domain.model import AttemptId, StopReason
from trafficcontrol.domain.state import State, apply
from trafficcontrol.errors import StoreError
from trafficcontrol.ports import Clock, Fence, Journal, Request, RequestResult
from trafficcontrol.runtime.inbox import Inbox
from trafficcontrol.runtime.stats import LoopStats
from trafficcontrol.runtime.watchdog import StoreWatch

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class Deferred:
    """What waits for the buffered events to be journaled."""

    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    stops: list[tuple[AttemptId, StopReason, float | None]] = field(default_factory=list)
    """(attempt, reason, idle seconds when hung)."""
    starts: list[AttemptDispatched] = field(default_factory=list)
    answers: list[tuple[int, RequestResult]] = field(default_factory=list)
    """Answers to requests from other processes."""


class StoreBuffer:
    """Folded events waiting for the journal, the journal's health, and its one thread."""

    def __init__(
        self,
        *,
        journal: Journal,
        clock: Clock,
        state: State,
        inbox: Inbox,
        act: Callable[[], None],
        bound: int,
        retry_max_s: float,
        shutdown_wait_s: float,
        on_fold: Callable[[State, list[AnyEvent]], None] | None = None,
        stats: LoopStats | None = None,
        fence: Callable[[], Fence | None] | None = None,
    ) -> None:
        self._journal = journal
        self._fence = fence or (lambda: None)
        """The lease the writes are fenced by (several instances on one store)."""
        self.stats = stats or LoopStats()
        """Commit durations, and who is told of committed events."""
        self._clock = clock
        self.state = state
        """The state events are folded into (``Orchestrator.recover`` may replace it)."""
        self._inbox = inbox
        self._act_on_agents = act
        """Starts and stops the agents in ``deferred`` once the buffer is durable."""
        self.watch = StoreWatch(bound=bound, retry_max_s=retry_max_s)
        self._shutdown_wait_s = shutdown_wait_s
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self.unsent: list[AnyEvent] = []
        """Events folded into the state but not yet journaled, in order."""
        self.deferred = Deferred()
        self._on_fold = on_fold
        """Told of every batch once it is folded (the lead's candidates, ``runtime.lead``)."""

    def fold(
        self, events: list[AnyEvent], waiters: list[asyncio.Future[None]] | None = None
    ) -> None:
        """Fold events that are not journaled yet and buffer them for the next append."""
        started = self._clock.monotonic()
        self._apply(events)
        self.stats.spans.observe("fold", started, self._clock.monotonic())
        self.unsent.extend(events)
        if waiters:
            self.deferred.waiters.extend(waiters)

    def overflowed(self) -> bool:
        """True once per outage, when the buffer reaches its bound: the caller stops the
        agents, since no event may be dropped (module notes)."""
        store = self.watch
        if store.ok or store.shed or len(self.unsent) < store.bound:
            return False
        store.shed = True
        log.error(
            "store_buffer_full buffered=%d bound=%d: stopping the agents until the journal is back",
            len(self.unsent),
            store.bound,
        )
        return True

    async def flush(self, *, force: bool = False) -> bool:
        """Journal the buffer in one batch (plus the outage summary when the store was
        down), then act on what waited for it. False: the store is (still) unavailable.
        While it is down a try is made only when the backoff says so, or ``force``."""
        store = self.watch
        if not force and not store.due(self._clock.monotonic()):
            return False
        buffered = len(self.unsent)
        batch = list(self.unsent)
        summary = None if store.ok else store.summary(self._clock.now(), buffered)
        if summary is not None:
            batch.append(summary)
        if batch:
            try:
                last = await self._append(batch)
            except StoreError as exc:
                if not exc.retryable:
                    raise
                self.store_failed(exc)
                return False
            del self.unsent[:buffered]
            if summary is not None:
                self._apply([summary])
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

    async def flush_or_raise(self) -> None:
        if not await self.flush(force=True):
            raise StoreError(f"the journal is unavailable: {self.watch.last_error}")

    async def flush_before_exit(self) -> None:
        """Flush, retrying for ``store_shutdown_wait_s`` at most."""
        give_up_at = self._clock.monotonic() + self._shutdown_wait_s
        while not await self.flush():
            monotonic = self._clock.monotonic()
            if monotonic >= give_up_at:
                if await self.flush(force=True):  # a last try, whatever the backoff says
                    return
                raise StoreError(
                    f"the journal is still unavailable ({self.watch.last_error}):"
                    f" {len(self.unsent)} events were not journaled; the next start"
                    " recovers from the journal as after a crash",
                    retryable=False,
                )
            retry_in = self.watch.retry_in(monotonic) or 0.0
            await self._inbox.wait(min(retry_in, give_up_at - monotonic))
            events, waiters = self._inbox.take()
            self.fold(events, waiters)

    async def _act(self) -> None:
        """Do what waited for the journal (called once the buffer is durable)."""
        deferred = self.deferred
        waiters, deferred.waiters = deferred.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._act_on_agents()
        while deferred.answers:
            request_id, result = deferred.answers[0]
            try:
                await self.blocking(self._journal.finish_request, request_id, result)
            except StoreError as exc:
                if not exc.retryable:
                    raise
                self.store_failed(exc)
                return
            deferred.answers.pop(0)

    async def commit(self, events: list[AnyEvent]) -> None:
        """Journal, then fold: for intents that must not be folded before they are
        durable. The buffer goes first; raises ``StoreError`` when the store is down."""
        await self.flush_or_raise()
        if not events:
            return
        try:
            last = await self._append(events)
        except StoreError as exc:
            if exc.retryable:
                self.store_failed(exc)
            raise
        self._apply(events)
        self._check_seq(last)

    async def _append(self, events: list[AnyEvent]) -> int:
        """Append one batch in the journal's thread, timed, and tell the listeners."""
        started = self._clock.monotonic()
        last = await self.blocking(self._journal.append, events, self._fence())
        stats = self.stats
        ended = self._clock.monotonic()
        stats.commit_seconds.observe(ended - started)
        stats.spans.observe("commit", started, ended)
        if stats.listeners:
            stats.committed(last - len(events) + 1, events)
        return last

    def _apply(self, events: list[AnyEvent]) -> None:
        for event in events:
            apply(self.state, event)
        if self._on_fold is not None and events:
            self._on_fold(self.state, events)

    def store_failed(self, exc: StoreError) -> None:
        store = self.watch
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
                len(self.unsent),
                exc.message,
            )

    def _check_seq(self, last: int) -> None:
        if last != self.state.seq:
            raise StoreError(
                f"journal sequence {last} does not match the state's {self.state.seq}:"
                " another process wrote to the journal while this orchestrator ran",
                retryable=False,
            )

    async def take_requests(self) -> list[Request]:
        """The requests other processes left in the journal (``runtime.requests_server``)."""
        return await self.blocking(self._journal.take_requests, self._fence())

    async def blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn`` on the journal's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def close(self) -> None:
        """Stop the journal's thread, once what runs on it is done."""
        self._io.shutdown(wait=True)
