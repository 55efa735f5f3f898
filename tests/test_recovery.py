"""Recovery at start on real files: snapshots + journal tail, corruption quarantined,
rollback as an event, and what interrupted attempts turn into."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from pathlib import Path

import msgspec
import pytest

from tests.cli_helpers import spawn_tc, tc, tc_json
from tests.helpers import (
    blocking_backlog,
    git_repo,
    journal_events,
    make_app,
    project,
    run_until_idle,
    submit,
    task,
)
from trafficcontrol.bootstrap import App
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.events import (
    AttemptDispatched,
    AttemptFinished,
    OrchestratorStarted,
    RolledBack,
    WorkspacePrepared,
)
from trafficcontrol.domain.model import AgentSettings, OnInterrupt, Outcome, TaskState
from trafficcontrol.domain.requests import RollbackRequest, SnapshotRequest


def _finished_home(tmp_path: Path, n: int = 6) -> tuple[App, Path]:
    home = tmp_path / "home"
    app = make_app(home)
    submit(app, [project(tmp_path / "p")], [task(f"t{i}") for i in range(n)])
    asyncio.run(run_until_idle(app))  # a clean stop writes a snapshot
    return app, home


def _states(app: App) -> dict[str, TaskState]:
    return {t: r.state for t, r in app.read_state().tasks.items()}


def test_a_clean_stop_writes_a_snapshot_that_the_next_start_uses(
    tmp_path: Path, store: str
) -> None:
    app, _home = _finished_home(tmp_path)
    [info] = app.snapshot_files().list()
    assert info.meta is not None and info.meta.seq == app.journal().last_seq()
    lock = app.run_lock()
    assert lock.try_acquire()
    recovered = app.recover()
    lock.release()
    assert recovered.snapshot is not None and recovered.snapshot.version == info.version
    assert recovered.tail == 0 and recovered.notes == []
    assert all(s is TaskState.DONE for s in _states(app).values())


DAMAGE = {
    "flipped byte": lambda b: b[:-10] + bytes([b[-10] ^ 0xFF]) + b[-9:],
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "garbage header": lambda b: b"\x00garbage" * 8 + b[64:],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_snapshot_is_quarantined_and_the_previous_one_used(
    tmp_path: Path, damage: str, store: str
) -> None:
    app, home = _finished_home(tmp_path)
    older = app.snapshot_files().list()[-1]
    assert app.request(SnapshotRequest()).ok  # a second, newer snapshot
    newest = app.snapshot_files().list()[-1]
    assert newest.version == older.version + 1
    newest.path.write_bytes(DAMAGE[damage](newest.path.read_bytes()))

    lock = app.run_lock()
    assert lock.try_acquire()
    recovered = app.recover()
    lock.release()

    assert recovered.snapshot is not None and recovered.snapshot.version == older.version
    [note] = recovered.notes
    assert newest.path.name in note
    quarantined = home / "snapshots" / "quarantine" / newest.path.name
    assert quarantined.exists() and not newest.path.exists()
    assert newest.path.name in (quarantined.parent / (newest.path.name + ".reason.txt")).read_text()
    assert all(s is TaskState.DONE for s in _states(app).values())


def test_a_snapshot_of_an_unknown_schema_falls_back_to_full_replay(
    tmp_path: Path, store: str
) -> None:
    app, home = _finished_home(tmp_path)
    [only] = app.snapshot_files().list()
    only.path.unlink()
    state = app.read_state()
    app.snapshot_files().write(
        snapshot.encode(state), schema=99, seq=state.seq, instance="future", now=1.0
    )
    lock = app.run_lock()
    assert lock.try_acquire()
    recovered = app.recover()
    lock.release()
    assert recovered.snapshot is None and recovered.tail == state.seq
    assert len(recovered.notes) == 1 and "unknown schema 99" in recovered.notes[0]
    assert len(list((home / "snapshots" / "quarantine").glob("*.tcsnap"))) == 1


def test_verify_names_the_bad_file_and_its_fault(tmp_path: Path) -> None:
    app, home = _finished_home(tmp_path)
    [info] = app.snapshot_files().list()
    assert "1 snapshot(s) OK" in tc("snapshot", "verify", home=home).stdout
    data = bytearray(info.path.read_bytes())
    data[-5] ^= 0x01
    info.path.write_bytes(bytes(data))
    done = tc("snapshot", "verify", home=home, check=False)
    assert done.returncode == 1
    assert info.path.name in done.stdout and "BAD" in done.stdout


def test_a_torn_last_journal_record_is_quarantined_and_dropped(tmp_path: Path) -> None:
    app, home = _finished_home(tmp_path)
    shutil.rmtree(home / "snapshots")
    db = sqlite3.connect(home / "journal.db")
    last = db.execute("SELECT max(seq) FROM events").fetchone()[0]
    db.execute("UPDATE events SET body = ? WHERE seq = ?", (b'{"type": "attempt_fini', last))
    db.commit()
    db.close()

    lock = app.run_lock()
    assert lock.try_acquire()
    recovered = app.recover()
    lock.release()

    [note] = recovered.notes
    assert "journal.db" in note and f"last event {last} is torn" in note
    assert recovered.state.seq == last - 1
    assert any((home / "quarantine").iterdir())


def test_a_wal_cut_mid_frame_is_reported_and_the_whole_frames_recovered(tmp_path: Path) -> None:
    home = tmp_path / "home"
    app = make_app(home)
    submit(app, [project(tmp_path / "p")], [task(f"t{i}") for i in range(3)])
    journal = app.journal()
    journal._db.execute("PRAGMA wal_autocheckpoint=0")
    from trafficcontrol.domain.events import TaskCancelRequested

    for i in range(3):
        journal.append([TaskCancelRequested(at=1.0, task_id=f"t{i}")])  # type: ignore[arg-type]
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(home / "journal.db", copy / "journal.db")
    wal = (home / "journal.db-wal").read_bytes()
    (copy / "journal.db-wal").write_bytes(wal[: len(wal) - 100])  # the last frame is cut
    app.close()

    other = make_app(copy)
    lock = other.run_lock()
    assert lock.try_acquire()
    recovered = other.recover()
    lock.release()

    assert any("journal.db-wal" in n and "quarantine" in n for n in recovered.notes)
    assert list((copy / "quarantine").glob("journal.db-wal*"))
    states = {t: r.state for t, r in recovered.state.tasks.items()}
    assert states == {"t0": TaskState.CANCELLED, "t1": TaskState.CANCELLED, "t2": TaskState.READY}


def test_an_unclean_stop_runs_the_integrity_check(tmp_path: Path) -> None:
    home = tmp_path / "home"
    app = make_app(home)
    submit(app, [project(tmp_path / "p")], [task("t")])
    app.journal().append([OrchestratorStarted(at=1.0, instance="dead", pid=1, previous_clean=True)])
    lock = app.run_lock()
    assert lock.try_acquire()
    recovered = app.recover()
    lock.release()
    assert any("did not stop cleanly; integrity check passed" in n for n in recovered.notes)


# -- rollback -------------------------------------------------------------------------
def test_rollback_returns_to_the_snapshot_state_as_a_new_event(tmp_path: Path, store: str) -> None:
    home = tmp_path / "home"
    app = make_app(home)
    submit(app, [project(tmp_path / "p")], [task("a"), task("b", deps=["a"])])
    assert app.request(SnapshotRequest()).ok  # version 1: a ready, b pending
    asyncio.run(run_until_idle(app))  # both done; version 2 written at the clean stop
    submit(app, [], [task("c")])
    before = journal_events(home)

    dry = app.request(RollbackRequest(version=1, dry_run=True))
    assert dry.ok and journal_events(home) == before
    assert sorted(dry.details) == [
        "task a: done -> ready",
        "task b: done -> pending",
        "task c: ready -> (removed)",
    ]

    done = app.request(RollbackRequest(version=1))
    assert done.ok, done
    after = journal_events(home)
    assert after[: len(before)] == before  # append-only
    assert isinstance(after[-1], RolledBack) and after[-1].version == 1
    assert _states(app) == {"a": TaskState.READY, "b": TaskState.PENDING}
    # The attempt history stays; the next attempt of a gets a new number.
    asyncio.run(run_until_idle(app))
    assert app.read_state().tasks["a"].attempts == ["a#1", "a#2"]


def test_rollback_of_a_missing_version_is_a_clear_error(tmp_path: Path) -> None:
    app, _home = _finished_home(tmp_path)
    result = app.request(RollbackRequest(version=42))
    assert not result.ok and "42" in result.message


def test_rollback_through_a_running_orchestrator_stops_affected_agents_first(
    tmp_path: Path, store: str
) -> None:
    home = tmp_path / "home"
    backlog, started = blocking_backlog(tmp_path, "blocker")
    tc("submit", str(backlog), home=home)
    assert "snapshot 1 written" in tc("snapshot", "create", home=home).stdout
    runner = spawn_tc("run", "--no-live", home=home)
    try:
        assert started.read_text() == "started\n"
        listed = tc_json("snapshot", "list", home=home)
        assert [s["version"] for s in listed] == [1]
        result = tc_json("snapshot", "rollback", "1", home=home)
        assert result["ok"] and "stop attempt blocker#1" in result["changes"]
        status = tc_json("status", home=home)
        assert status["running"] == [] or status["running"][0]["attempt"] != "blocker#1"
    finally:
        runner.terminate()
        runner.wait(timeout=60)
        runner.communicate()
    events = journal_events(home)
    [end] = [e for e in events if isinstance(e, AttemptFinished) and e.attempt_id == "blocker#1"]
    assert end.outcome is Outcome.INTERRUPTED
    rolled = next(i for i, e in enumerate(events) if isinstance(e, RolledBack))
    assert events.index(end) < rolled  # stopped first, then rolled back


# -- interrupted attempts ----------------------------------------------------------------


async def _interrupt_then_finish(app: App, fifo: Path) -> None:
    """First run: the agent starts, then the orchestrator shuts down. Second run: finish."""
    lock = app.run_lock()
    assert lock.try_acquire()
    orchestrator, _notes = app.start()
    run = asyncio.create_task(orchestrator.run(until_idle=True))
    assert await asyncio.to_thread(fifo.read_text) == "started\n"
    orchestrator.stop()
    await run
    lock.release()
    await run_until_idle(app)


@pytest.mark.parametrize("policy", [OnInterrupt.RESUME, OnInterrupt.RESTART, OnInterrupt.FAIL])
async def test_on_interrupt_policies_of_command_attempts(
    tmp_path: Path, policy: OnInterrupt
) -> None:
    repo = tmp_path / "repo"
    git_repo(repo)
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    marker = tmp_path / "first-done"
    # The first attempt writes progress, signals, then blocks; later ones finish at once.
    first = (
        f"test -e {marker} && exit 0; touch {marker}; echo progress > progress.txt; "
        f"echo started > {fifo}; exec sleep 300"
    )
    resume = "test -e progress.txt && echo resumed >> progress.txt"
    app = make_app(tmp_path / "home")
    spec = msgspec.structs.replace(
        project(repo, "g", agent="command", is_git=True, on_interrupt=policy),
        settings=AgentSettings(command=["sh", "-c", first], resume_command=["sh", "-c", resume]),
    )
    submit(app, [spec], [task("work", "g")])

    await _interrupt_then_finish(app, fifo)

    state = app.read_state()
    record = state.tasks["work"]
    events = journal_events(tmp_path / "home")
    workdirs = [e.path for e in events if isinstance(e, WorkspacePrepared)]
    if policy is OnInterrupt.FAIL:
        assert record.state is TaskState.FAILED and "on_interrupt = fail" in (
            record.last_error or ""
        )
        assert record.attempts == ["work#1"]
        return
    assert record.state is TaskState.DONE and record.attempts == ["work#1", "work#2"]
    second = [e for e in events if isinstance(e, AttemptDispatched)][-1]
    if policy is OnInterrupt.RESUME:
        assert second.resume_of == "work#1"
        assert workdirs[0] == workdirs[1]
        assert Path(workdirs[1], "progress.txt").read_text() == "progress\nresumed\n"
    else:
        assert second.resume_of is None
        assert workdirs[0] != workdirs[1]
        assert not Path(workdirs[1], "progress.txt").exists()
