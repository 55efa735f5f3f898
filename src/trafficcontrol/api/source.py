"""Where the HTTP layer reads from: the running orchestrator's own folded state, or,
for ``tc serve``, a read-only follower of a state home's journal.

Design note. In ``tc run`` the server runs on the orchestrator's event loop, so a
handler reads ``orchestrator.state`` between two of the loop's turns — never during
one — without copying or locking; handlers only read and keep their work bounded by
pagination. Writes never touch that state: they go through ``App.request`` on a
thread of their own, which is exactly the CLI's path (the orchestrator takes them from
the journal's request table and answers there). ``tc serve`` has no orchestrator: the
follower recovers the state read-only and folds what the journal gains, on a thread,
every ``poll_s``; writes then go to the journal directly, as the CLI's do when no
``tc run`` holds the lock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from trafficcontrol.api.hub import EventHub
from trafficcontrol.bootstrap import App
from trafficcontrol.domain.events import AnyEvent
from trafficcontrol.domain.requests import AnyRequest
from trafficcontrol.domain.state import State, apply
from trafficcontrol.errors import TrafficControlError
from trafficcontrol.ports import InstanceInfo, LeaseInfo, RequestResult, WorkerInfo
from trafficcontrol.runtime.orchestrator import Orchestrator
from trafficcontrol.runtime.stats import LoopStats
from trafficcontrol.runtime.watchdog import Health

Members = tuple[list[LeaseInfo], list[InstanceInfo], list[WorkerInfo]]
"""A shared store's leases, instances and workers."""


class Source(Protocol):
    """What every route reads (module notes)."""

    hub: EventHub
    stats: LoopStats

    @property
    def role(self) -> str:
        """``orchestrator`` (inside tc run, alone on its store), ``leader`` or
        ``standby`` (several on one store), ``read-only`` (tc serve)."""
        ...

    @property
    def state(self) -> State: ...

    def health(self) -> Health | None:
        """The orchestrator's degraded modes (None: no orchestrator here)."""

    def cluster(self) -> dict[str, object] | None:
        """Role, lease epoch and lag among instances sharing the store (None: alone)."""

    async def request(self, request: AnyRequest) -> RequestResult:
        """Apply ``request`` through the CLI's path; never blocks the loop."""

    def writable(self) -> bool:
        """The store takes writes now."""

    async def journal(self) -> list[AnyEvent]:
        """Every journaled event, read on a thread of its own (the profile's input)."""

    async def members(self) -> Members | None:
        """The store's leases, instances and workers (None: a SQLite store, alone)."""


class _Requests:
    """``App.request`` on one thread of its own (the SQLite connection it opens must
    stay on the thread that made it)."""

    def __init__(self, make_app: Callable[[], App]) -> None:
        self._make_app = make_app
        self._app: App | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tc-http-requests")

    def _apply(self, request: AnyRequest) -> RequestResult:
        if self._app is None:
            self._app = self._make_app()
        try:
            return self._app.request(request, wait_s=30.0)
        except TrafficControlError as exc:
            return RequestResult(ok=False, message=exc.message)

    async def __call__(self, request: AnyRequest) -> RequestResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._apply, request)

    def _read(self) -> list[AnyEvent]:
        if self._app is None:
            self._app = self._make_app()
        return [event for _seq, event in self._app.journal().read()]

    async def journal(self) -> list[AnyEvent]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._read)

    def _members(self) -> Members | None:
        if self._app is None:
            self._app = self._make_app()
        if self._app.on_sqlite:
            return None
        leases = self._app.leases()
        return leases.leases(), leases.instances(), self._app.work_queue().workers()

    async def members(self) -> Members | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._members)

    def close(self) -> None:
        def close_app() -> None:
            if self._app is not None:
                self._app.close()

        self._pool.submit(close_app)
        self._pool.shutdown(wait=True)


class OrchestratorSource:
    """The state of the orchestrator this process runs (a cluster member's changes with
    its role; they share one ``LoopStats``)."""

    def __init__(
        self,
        current: Callable[[], Orchestrator],
        make_app: Callable[[], App],
        *,
        cluster: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        self._current = current
        self.stats = current().stats
        self.hub = EventHub()
        self.stats.listeners.append(self.hub.publish)
        self._requests = _Requests(make_app)
        self._cluster = cluster

    @property
    def role(self) -> str:
        """``orchestrator`` alone on its store; ``leader`` or ``standby`` in a cluster."""
        if self._cluster is None:
            return "orchestrator"
        return str(self._cluster()["role"])

    def cluster(self) -> dict[str, object] | None:
        return None if self._cluster is None else self._cluster()

    @property
    def state(self) -> State:
        return self._current().state

    def health(self) -> Health | None:
        return self._current().health()

    def writable(self) -> bool:
        return self._current().health().store == "ok"

    async def request(self, request: AnyRequest) -> RequestResult:
        result = await self._requests(request)
        self._current().pool.inbox.poke()
        return result

    async def journal(self) -> list[AnyEvent]:
        return await self._requests.journal()

    async def members(self) -> Members | None:
        return await self._requests.members()

    def close(self) -> None:
        if self.hub.publish in self.stats.listeners:
            self.stats.listeners.remove(self.hub.publish)
        self.hub.close()
        self._requests.close()


class JournalFollower:
    """A state home read as its journal grows (``tc serve``; module notes)."""

    role = "read-only"

    def cluster(self) -> dict[str, object] | None:
        return None

    def __init__(self, make_app: Callable[[], App], *, poll_s: float = 0.1) -> None:
        self._make_app = make_app
        self._reader: App | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tc-http-follower")
        self._poll_s = poll_s
        self._state = State()
        self.stats = LoopStats()
        self.hub = EventHub()
        self._requests = _Requests(make_app)
        self._ok = True
        self.last_error: str | None = None

    @property
    def state(self) -> State:
        return self._state

    def health(self) -> Health | None:
        return None

    def writable(self) -> bool:
        return self._ok

    async def request(self, request: AnyRequest) -> RequestResult:
        result = await self._requests(request)
        await self.catch_up()
        return result

    async def journal(self) -> list[AnyEvent]:
        return await self._requests.journal()

    async def members(self) -> Members | None:
        return await self._requests.members()

    def _read_state(self) -> State:
        self._reader = self._make_app()
        return self._reader.read_state()

    def _read_after(self, seq: int) -> list[tuple[int, AnyEvent]]:
        assert self._reader is not None
        return list(self._reader.journal().read(after=seq))

    async def start(self) -> None:
        """Recover the state (raises our errors: the home cannot be read)."""
        loop = asyncio.get_running_loop()
        self._state = await loop.run_in_executor(self._pool, self._read_state)
        self.stats.recovered = True
        self.stats.turned(time.monotonic())

    async def catch_up(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            tail = await loop.run_in_executor(self._pool, self._read_after, self._state.seq)
        except TrafficControlError as exc:
            self._ok, self.last_error = False, exc.message
            return
        self._ok, self.last_error = True, None
        self.stats.turned(time.monotonic())
        if not tail:
            return
        for _seq, event in tail:
            apply(self._state, event)
        self.hub.publish(tail[0][0], [event for _seq, event in tail])

    async def follow(self) -> None:
        """Fold what the journal gains until cancelled."""
        while True:
            await self.catch_up()
            await asyncio.sleep(self._poll_s)  # another process appends: nothing to await

    def close(self) -> None:
        self.hub.close()
        self._requests.close()

        def close_reader() -> None:
            if self._reader is not None:
                self._reader.close()

        self._pool.submit(close_reader)
        self._pool.shutdown(wait=True)
