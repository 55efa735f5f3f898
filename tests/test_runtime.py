"""The orchestrator loop with real SQLite journals and real agents (sim and subprocess)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psutil
import pytest

from tests.helpers import (
    agent_argv,
    journal_events,
    make_app,
    max_concurrency,
    project,
    run_until_idle,
    submit,
    task,
)
from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AttemptDispatched,
    AttemptFinished,
    AttemptStopRequested,
    OrchestratorStarted,
    OrchestratorStopped,
    TaskCancelRequested,
    TaskWoken,
)
from trafficcontrol.domain.model import Outcome, SimSettings, StopReason, TaskState
from trafficcontrol.domain.requests import CancelRequest


async def test_fifty_agents_at_once_and_never_more(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home", max_agents=50)
    sim = SimSettings(duration_s=0.2, jitter=0.5)
    submit(app, [project(tmp_path / "p", sim=sim)], [task(f"t{i}") for i in range(150)])

    orchestrator = await run_until_idle(app)

    assert orchestrator.state.counts[TaskState.DONE] == 150
    events = journal_events(tmp_path / "home")
    assert max_concurrency(events) == {None: 50}
    finished = [e for e in events if isinstance(e, AttemptFinished)]
    assert len(finished) == 150
    assert all(e.simulated and e.outcome is Outcome.SUCCEEDED for e in finished)


async def test_per_project_and_per_model_limits_hold_in_the_journal(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home", max_agents=20, per_model={"opus": 2})
    sim = SimSettings(duration_s=0.05, jitter=0.5)
    projects = [
        project(tmp_path / "a", "a", sim=sim, max_concurrent=3),
        project(tmp_path / "b", "b", sim=sim),
    ]
    tasks = [task(f"a{i}", "a") for i in range(20)]
    tasks += [task(f"b{i}", "b", model="opus" if i % 2 else None) for i in range(20)]
    submit(app, projects, tasks)

    await run_until_idle(app)

    events = journal_events(tmp_path / "home")
    by_project = max_concurrency(events, key=lambda e: e.task_id[0])
    by_model = max_concurrency(events, key=lambda e: e.model)
    assert by_project["a"] == 3
    assert by_model["opus"] == 2
    assert max_concurrency(events)[None] <= 20


async def test_dependencies_and_locks_are_respected_in_the_journal(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home", max_agents=10)
    sim = SimSettings(duration_s=0.02, jitter=0.5)
    tasks = [task("root")]
    tasks += [task(f"mid{i}", deps=["root"], resources=("db",)) for i in range(5)]
    tasks += [task(f"read{i}", deps=["root"], resources=("db:shared",)) for i in range(5)]
    tasks += [task("leaf", deps=[f"mid{i}" for i in range(5)])]
    submit(app, [project(tmp_path / "p", sim=sim)], tasks)

    await run_until_idle(app)

    events = journal_events(tmp_path / "home")
    done: set[str] = set()
    holders: dict[str, list[tuple[str, bool]]] = {}
    resources: dict[str, tuple[str, ...]] = {}
    specs = {t.id: t for t in tasks}
    for event in events:
        if isinstance(event, AttemptDispatched):
            assert set(specs[event.task_id].depends_on) <= done, event.task_id
            for r in event.resources:
                name, shared = (r[:-7], True) if r.endswith(":shared") else (r, False)
                held = holders.setdefault(name, [])
                assert not any(not s for _a, s in held), f"{name} held exclusively: {held}"
                assert shared or not held, f"{name} taken exclusively while held: {held}"
                held.append((event.attempt_id, shared))
            resources[event.attempt_id] = event.resources
        elif isinstance(event, AttemptFinished):
            for r in resources[event.attempt_id]:
                name = r.removesuffix(":shared")
                holders[name] = [h for h in holders[name] if h[0] != event.attempt_id]
            if event.outcome is Outcome.SUCCEEDED:
                done.add(event.attempt_id.split("#")[0])
    assert done == set(specs)
    assert max_concurrency(events, key=lambda e: "db" in e.resources)[True] == 1


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_timeout_kills_the_whole_process_tree(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home", grace_s=0.5)
    grandchild = tmp_path / "grandchild.pid"
    argv = agent_argv("--grandchild", str(grandchild), "--ignore-term", "--block")
    submit(
        app,
        [project(tmp_path / "p", agent="command", command=argv)],
        [task("slow", timeout_s=1.0)],
    )

    orchestrator = await run_until_idle(app)

    attempt = orchestrator.state.attempts["slow#1"]
    assert attempt.outcome is Outcome.TIMED_OUT
    assert orchestrator.state.tasks["slow"].state is TaskState.FAILED
    assert attempt.pid is not None and _gone(attempt.pid)
    assert _gone(int(grandchild.read_text()))
    events = journal_events(tmp_path / "home")
    stops = [e for e in events if isinstance(e, AttemptStopRequested)]
    assert [(s.attempt_id, s.reason) for s in stops] == [("slow#1", StopReason.TIMEOUT)]


async def _read_fifo(path: Path) -> str:
    return await asyncio.to_thread(path.read_text)


async def test_cancel_from_another_process_stops_a_running_agent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    app = make_app(home)
    started = tmp_path / "started"
    os.mkfifo(started)
    grandchild = tmp_path / "grandchild.pid"
    argv = agent_argv("--started", str(started), "--grandchild", str(grandchild), "--block")
    submit(app, [project(tmp_path / "p", agent="command", command=argv)], [task("long")])

    run = asyncio.create_task(run_until_idle(app))
    assert await _read_fifo(started) == "started\n"
    other = make_app(home)  # like `tc cancel` in another process: its own connection
    result = await asyncio.to_thread(other.request, CancelRequest(task_id="long"))  # type: ignore[arg-type]
    other.close()
    orchestrator = await run

    assert result.ok, result
    assert orchestrator.state.tasks["long"].state is TaskState.CANCELLED
    attempt = orchestrator.state.attempts["long#1"]
    assert attempt.outcome is Outcome.CANCELLED
    assert attempt.pid is not None and _gone(attempt.pid)
    assert _gone(int(grandchild.read_text()))


async def test_shutdown_interrupts_agents_and_next_start_requeues_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    app = make_app(home, max_agents=3)
    fifos = []
    tasks = []
    for i in range(3):
        fifo = tmp_path / f"started{i}"
        os.mkfifo(fifo)
        fifos.append(fifo)
    marker = tmp_path / "second-run"
    # First run: agents block until stopped. Second run: the marker exists, they finish.
    script = (
        f"test -e {marker} && exit 0; echo started > {tmp_path}/started$TC_TASK_ID; exec sleep 300"
    )
    for i in range(3):
        tasks.append(task(f"{i}"))
    submit(app, [project(tmp_path / "p", agent="command", command=["sh", "-c", script])], tasks)

    lock = app.run_lock()
    assert lock.try_acquire()
    orchestrator, _notes = app.start()
    run = asyncio.create_task(orchestrator.run(until_idle=True))
    for fifo in fifos:
        assert await _read_fifo(fifo) == "started\n"
    orchestrator.stop()
    await run
    lock.release()

    events = journal_events(home)
    stops = [e for e in events if isinstance(e, AttemptStopRequested)]
    assert sorted(s.reason for s in stops) == [StopReason.SHUTDOWN] * 3
    ended = [e for e in events if isinstance(e, AttemptFinished)]
    assert sorted(e.outcome for e in ended) == [Outcome.INTERRUPTED] * 3
    pids = [e.pid for e in events if isinstance(e, AgentProcessStarted)]
    assert len(pids) == 3 and all(_gone(p) for p in pids)
    assert isinstance(events[-1], OrchestratorStopped)
    assert all(orchestrator.state.tasks[t.id].state is TaskState.READY for t in tasks)

    marker.write_text("")
    second = await run_until_idle(make_app(home))
    assert second.state.counts[TaskState.DONE] == 3
    restarted = [e for e in journal_events(home) if isinstance(e, OrchestratorStarted)]
    assert [e.previous_clean for e in restarted] == [True, True]


async def test_failed_attempts_back_off_then_retry(tmp_path: Path) -> None:
    app = make_app(tmp_path / "home")
    sim = SimSettings(duration_s=0.0, jitter=0.0, fail_attempts=2)
    submit(
        app,
        [project(tmp_path / "p", sim=sim)],
        [task("flaky", max_attempts=3, retry_backoff_s=0.05)],
    )

    orchestrator = await run_until_idle(app)

    record = orchestrator.state.tasks["flaky"]
    assert record.state is TaskState.DONE
    outcomes = [orchestrator.state.attempts[a].outcome for a in record.attempts]
    assert outcomes == [Outcome.FAILED, Outcome.FAILED, Outcome.SUCCEEDED]
    events = journal_events(tmp_path / "home")
    ends = [e for e in events if isinstance(e, AttemptFinished)]
    wakes = [e for e in events if isinstance(e, TaskWoken)]
    assert len(wakes) == 2
    # The back-off doubles: the second wake comes at least 2 x 0.05 s after the failure.
    assert wakes[0].at - ends[0].at >= 0.05
    assert wakes[1].at - ends[1].at >= 0.1


async def test_events_that_arrive_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    batches: list[int] = []

    class CountingJournal(SqliteJournal):
        def append(self, events, fence=None):  # type: ignore[no-untyped-def]
            batches.append(len(events))
            return super().append(events, fence)

    app = make_app(tmp_path / "home", max_agents=50)
    submit(app, [project(tmp_path / "p")], [task(f"t{i}") for i in range(300)])
    app._journal = CountingJournal(app.home.journal)

    orchestrator = await run_until_idle(app)

    assert orchestrator.state.counts[TaskState.DONE] == 300
    total = sum(batches)
    assert total == orchestrator.state.seq - 1  # all but the submission went through here
    assert len(batches) < total / 3  # group commit: far fewer transactions than events
    assert max(batches) > 50


async def test_durable_put_is_acknowledged_only_after_commit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    app = make_app(home)
    submit(app, [project(tmp_path / "p")], [task("t")])
    lock = app.run_lock()
    assert lock.try_acquire()
    orchestrator, _notes = app.start()
    run = asyncio.create_task(orchestrator.run(until_idle=False))
    probe = TaskCancelRequested(at=1.0, task_id="t", reason="probe")  # type: ignore[arg-type]
    await orchestrator.pool.inbox.put_durable(probe)
    reader = SqliteJournal(home / "journal.db")
    seen = [e for _s, e in reader.read() if isinstance(e, TaskCancelRequested)]
    reader.close()
    orchestrator.stop()
    await run
    lock.release()
    assert seen == [probe]


@pytest.mark.parametrize(("durability", "pragma"), [("process", 1), ("power", 2)])
def test_durability_setting_picks_sqlite_synchronous_mode(
    tmp_path: Path, durability: str, pragma: int
) -> None:
    journal = SqliteJournal(tmp_path / "j.db", durability=durability)  # type: ignore[arg-type]
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == pragma
    assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    journal.close()
