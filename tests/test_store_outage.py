"""The journal becomes unwritable mid-run (a real SQLite file locked by another
connection): agents go on, events are buffered, dispatch pauses, nothing is lost."""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import journal_events, make_app, project, submit, task
from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.bootstrap import App
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AnyEvent,
    AttemptDispatched,
    AttemptFinished,
    AttemptStopRequested,
    OrchestratorStopped,
    StoreOutage,
    WorkspacePrepared,
)
from trafficcontrol.domain.invariants import verify_journal
from trafficcontrol.domain.model import Outcome, StopReason, TaskState
from trafficcontrol.errors import ConfigError, StoreError
from trafficcontrol.ports import Fence
from trafficcontrol.runtime.orchestrator import Orchestrator
from trafficcontrol.runtime.watchdog import StoreStatus, StoreWatch
from trafficcontrol.settings import load_settings

# A command agent that tells the test it runs (through a FIFO named after its task:
# the test's read waits for it), then works until the test creates its go file.
GATED_AGENT = """\
import os, sys, time
gates, task = sys.argv[1], os.environ["TC_TASK_ID"]
print(task, "running", flush=True)
with open(os.path.join(gates, task + ".started"), "w") as f:
    f.write(os.environ["TC_ATTEMPT_ID"])
while not os.path.exists(os.path.join(gates, task + ".go")):
    time.sleep(0.01)  # the agent's own work; a killed agent never blocks the test
print(task, "done", flush=True)
"""


class WatchedJournal(SqliteJournal):
    """The real journal, telling the test about every append that failed."""

    def __init__(self, path: Path, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.failed: queue.Queue[list[AnyEvent]] = queue.Queue()

    def append(self, events: Sequence[AnyEvent], fence: Fence | None = None) -> int:
        try:
            return super().append(events, fence)
        except StoreError:
            self.failed.put(list(events))
            raise


class Gates:
    def __init__(self, root: Path, tasks: Sequence[str]) -> None:
        self.root = root
        root.mkdir()
        for t in tasks:
            os.mkfifo(root / f"{t}.started")

    async def started(self, task_id: str) -> str:
        """Wait until the task's agent runs; its attempt id."""
        return await asyncio.to_thread((self.root / f"{task_id}.started").read_text)

    def go(self, task_id: str) -> None:
        """Let the task's agents (this attempt and any later one) finish."""
        (self.root / f"{task_id}.go").write_text("go")


def setup(tmp_path: Path, tasks: Sequence[str], **run: Any) -> tuple[App, WatchedJournal, Gates]:
    home = tmp_path / "home"
    settings = {"store_busy_timeout_s": 0.05, "store_retry_max_s": 0.2, **run}
    app = make_app(home, **settings)
    gates = Gates(tmp_path / "gates", tasks)
    script = tmp_path / "gated_agent.py"
    script.write_text(GATED_AGENT)
    argv = [sys.executable, str(script), str(gates.root)]
    # Scores make the dispatch order the order given.
    specs = [task(t, score=float(len(tasks) - i)) for i, t in enumerate(tasks)]
    submit(app, [project(tmp_path / "p", agent="command", command=argv)], specs)
    journal = WatchedJournal(app.home.journal, busy_timeout_s=0.05)
    app._journal = journal
    return app, journal, gates


@contextmanager
def journal_locked(path: Path) -> Iterator[None]:
    """Another connection holds the write lock: every write of ours fails (as root too,
    where chmod would not stop us) with "database is locked" after the busy timeout."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def failed_append_with(
    journal: WatchedJournal, wanted: Callable[[list[AnyEvent]], bool]
) -> list[AnyEvent]:
    """Wait for a failed append whose batch satisfies ``wanted`` (the buffer is retried
    whole, so a later try holds every event folded so far)."""
    while True:
        batch = await asyncio.to_thread(journal.failed.get, timeout=120)
        if wanted(batch):
            return batch


def ends_of(batch: list[AnyEvent]) -> dict[str, AttemptFinished]:
    return {e.attempt_id: e for e in batch if isinstance(e, AttemptFinished)}


def assert_nothing_lost(events: list[AnyEvent], tasks: Sequence[str], max_agents: int) -> None:
    dispatched = [e.attempt_id for e in events if isinstance(e, AttemptDispatched)]
    ends = [e for e in events if isinstance(e, AttemptFinished)]
    assert Counter(e.attempt_id for e in ends) == Counter(dispatched), "one end per attempt"
    succeeded = Counter(e.attempt_id.split("#")[0] for e in ends if e.outcome is Outcome.SUCCEEDED)
    assert succeeded == Counter(tasks), "every task done exactly once"
    assert verify_journal(events, SchedulerConfig(max_agents=max_agents), settled=True) == []


async def start(app: App) -> tuple[Orchestrator, asyncio.Task[None]]:
    lock = app.run_lock()
    assert lock.try_acquire()
    orchestrator, _notes = app.start()
    run = asyncio.create_task(orchestrator.run(until_idle=True))
    run.add_done_callback(lambda _t: lock.release())
    return orchestrator, run


async def test_store_outage_buffers_events_pauses_dispatch_and_loses_nothing(
    tmp_path: Path,
) -> None:
    tasks = [f"t{i}" for i in range(6)]
    app, journal, gates = setup(tmp_path, tasks, max_agents=3)
    orchestrator, run = await start(app)
    for t in tasks[:3]:
        await gates.started(t)

    with journal_locked(app.home.journal):
        # t0's end (and the dispatch it frees a slot for) cannot be journaled...
        gates.go("t0")
        await failed_append_with(journal, lambda b: "t0#1" in ends_of(b))
        # ...so t1 and t2 end during the outage: their slots stay free.
        gates.go("t1")
        gates.go("t2")
        first = {f"{t}#1" for t in tasks[:3]}
        await failed_append_with(journal, lambda b: first <= set(ends_of(b)))
        health = orchestrator.health()
        assert health.store is StoreStatus.DEGRADED
        assert health.dispatch_paused
        assert health.buffered_events >= 3
        assert health.store_errors >= 1 and health.store_since is not None
        assert "locked" in (health.store_last_error or "")

    for t in tasks[3:]:
        await gates.started(t)
        gates.go(t)
    await run

    events = journal_events(app.home.root)
    assert_nothing_lost(events, tasks, max_agents=3)
    outages = [(i, e) for i, e in enumerate(events) if isinstance(e, StoreOutage)]
    assert len(outages) == 1
    at, outage = outages[0]
    assert outage.errors >= 1 and "locked" in outage.last_error
    assert outage.started_at <= outage.at
    # The buffered events went in, in order, right before the summary.
    assert outage.buffered >= 3
    assert {
        e.attempt_id for e in events[at - outage.buffered : at] if isinstance(e, AttemptFinished)
    } >= first
    # Nothing was dispatched and no agent started while the store was down...
    during = [e for e in events if outage.started_at < e.at < outage.at]
    assert not [e for e in during if isinstance(e, AttemptDispatched)]
    starts = (WorkspacePrepared, AgentProcessStarted)
    assert not [e for e in during if isinstance(e, starts) and e.attempt_id not in first]
    # ...and dispatch resumed after it: the later tasks' agents started after the outage.
    for t in tasks[3:]:
        prepared = [
            e for e in events if isinstance(e, WorkspacePrepared) and e.attempt_id == f"{t}#1"
        ]
        assert prepared and prepared[0].at >= outage.at
    late = [e for e in events[at:] if isinstance(e, AttemptDispatched)]
    assert {e.task_id for e in late} >= set(tasks[4:])  # t3 may be in t0's failed batch
    # The outage is an incident of the store (MTTR), and health is back to normal.
    incidents = [i for i in orchestrator.state.resilience.incidents if i.key == "store"]
    assert [(i.opened_at, i.closed_at) for i in incidents] == [(outage.started_at, outage.at)]
    health = orchestrator.health()
    assert health.store is StoreStatus.OK and not health.dispatch_paused
    assert health.buffered_events == 0 and health.store_outages == 1


async def test_full_buffer_stops_the_agents_and_still_loses_nothing(tmp_path: Path) -> None:
    tasks = ["a", "b", "c"]
    app, journal, gates = setup(tmp_path, tasks, max_agents=2, store_buffer_events=1)
    orchestrator, run = await start(app)
    assert await gates.started("a") == "a#1"
    assert await gates.started("b") == "b#1"

    with journal_locked(app.home.journal):
        gates.go("a")
        # The first buffered event fills the buffer: the agents are stopped, their
        # ends buffered too (a may finish first, or be stopped as well).
        batch = await failed_append_with(journal, lambda b: {"a#1", "b#1"} <= set(ends_of(b)))
        health = orchestrator.health()
        assert health.agents_stopped and health.dispatch_paused
        assert health.buffered_events > health.buffer_bound  # soft by the stops and ends

    ends = ends_of(batch)
    assert ends["b#1"].outcome is Outcome.INTERRUPTED
    again = [t for t in ("a", "b") if ends[f"{t}#1"].outcome is Outcome.INTERRUPTED]
    for t in [*again, "c"]:  # interrupted attempts are re-queued; c was waiting
        await gates.started(t)
        gates.go(t)
    await run

    events = journal_events(app.home.root)
    assert_nothing_lost(events, tasks, max_agents=2)
    stops = [e for e in events if isinstance(e, AttemptStopRequested)]
    assert {s.attempt_id for s in stops} == {f"{t}#1" for t in again}
    assert {s.reason for s in stops} == {StopReason.STORE_OUTAGE}
    for stop in stops:  # the intent is journaled before the end it caused
        end = next(
            e for e in events if isinstance(e, AttemptFinished) and e.attempt_id == stop.attempt_id
        )
        assert events.index(stop) < events.index(end)
        assert end.outcome is Outcome.INTERRUPTED
    assert len([e for e in events if isinstance(e, StoreOutage)]) == 1
    assert not orchestrator.health().agents_stopped


async def test_stop_during_an_outage_waits_for_the_store_and_journals_everything(
    tmp_path: Path,
) -> None:
    tasks = ["a", "b"]
    app, journal, gates = setup(tmp_path, tasks, max_agents=2)
    orchestrator, run = await start(app)
    for t in tasks:
        await gates.started(t)

    with journal_locked(app.home.journal):
        gates.go("a")
        await failed_append_with(journal, lambda b: "a#1" in ends_of(b))
        orchestrator.stop()  # b is stopped although its stop cannot be journaled yet
        await failed_append_with(
            journal, lambda b: any(isinstance(e, OrchestratorStopped) for e in b)
        )
    await run

    events = journal_events(app.home.root)
    ends = {e.attempt_id: e.outcome for e in events if isinstance(e, AttemptFinished)}
    assert ends == {"a#1": Outcome.SUCCEEDED, "b#1": Outcome.INTERRUPTED}
    assert isinstance(events[-2], OrchestratorStopped) and isinstance(events[-1], StoreOutage)
    assert verify_journal(events, SchedulerConfig(max_agents=2)) == []
    assert orchestrator.state.tasks["b"].state is TaskState.READY  # runs again next time


async def test_shutdown_gives_up_on_a_store_that_stays_down_and_the_next_start_recovers(
    tmp_path: Path,
) -> None:
    tasks = ["a", "b"]
    app, journal, gates = setup(tmp_path, tasks, max_agents=2, store_shutdown_wait_s=0.3)
    orchestrator, run = await start(app)
    for t in tasks:
        await gates.started(t)

    with journal_locked(app.home.journal):
        gates.go("a")
        await failed_append_with(journal, lambda b: "a#1" in ends_of(b))
        orchestrator.stop()
        with pytest.raises(StoreError, match="not journaled"):
            await run
    app.close()

    # The journal is consistent without the lost tail: a new run finishes everything.
    # a#1's end was lost with the tail, but its supervisor's exit record kept it: it is
    # adopted as succeeded, not run again; b#1 was stopped by the shutdown and reruns.
    again = make_app(app.home.root)
    orchestrator, run = await start(again)
    await gates.started("b")
    gates.go("b")
    await run
    events = journal_events(app.home.root)
    ends = [e for e in events if isinstance(e, AttemptFinished)]
    assert {e.attempt_id: e.outcome for e in ends if e.attempt_id.endswith("#1")} == {
        "a#1": Outcome.SUCCEEDED,
        "b#1": Outcome.INTERRUPTED,
    }
    assert_nothing_lost(events, tasks, max_agents=2)
    assert orchestrator.state.counts[TaskState.DONE] == 2


def test_store_watch_backs_off_and_summarises_one_outage() -> None:
    watch = StoreWatch(bound=10, retry_max_s=0.4)
    assert watch.ok and watch.due(0.0) and watch.retry_in(0.0) is None
    assert watch.failed("database is locked", 1000.0, 0.0)  # the outage starts
    assert not watch.due(0.01) and watch.due(0.05)
    for monotonic in (1.0, 2.0, 3.0, 4.0):  # 0.1, 0.2, 0.4, then capped at 0.4
        assert not watch.failed("database is locked", 1000.0 + monotonic, monotonic)
    assert watch.retry_in(4.0) == pytest.approx(0.4)
    summary = watch.summary(1010.0, buffered=7)
    assert (summary.started_at, summary.at, summary.buffered, summary.errors) == (
        1000.0,
        1010.0,
        7,
        5,
    )
    watch.recovered()
    assert watch.ok and watch.errors == 0 and watch.outages == 1


def test_store_settings_are_validated(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[run]\nstore_buffer_events = 0\n")
    with pytest.raises(ConfigError, match="store_buffer_events"):
        load_settings(config)
