"""Journal checks against real SQLite files: torn WAL, garbled last row, bad pages."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from trafficcontrol.adapters.stores.journal_check import (
    integrity_problems,
    last_row_problem,
    quarantine_copy,
    remove_torn_last_row,
    wal_torn_tail,
)
from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.domain.events import OrchestratorStarted, OrchestratorStopped
from trafficcontrol.errors import StoreError


def started(n: int) -> OrchestratorStarted:
    return OrchestratorStarted(at=float(n), instance=f"i{n}", pid=n, previous_clean=True)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SqliteJournal]:
    journal = SqliteJournal(tmp_path / "journal.db")
    yield journal
    journal.close()


def wal_of(db: Path) -> Path:
    return db.with_name(db.name + "-wal")


def snapshot_files_while_open(journal: SqliteJournal, into: Path) -> Path:
    """Copy db + WAL as a crash would leave them (closing would checkpoint the WAL)."""
    into.mkdir()
    copy = into / journal.path.name
    shutil.copyfile(journal.path, copy)
    shutil.copyfile(wal_of(journal.path), wal_of(copy))
    return copy


def test_whole_wal_is_not_reported(journal: SqliteJournal) -> None:
    journal.append([started(1)])
    assert wal_of(journal.path).stat().st_size > 0
    assert wal_torn_tail(journal.path) is None


def test_no_wal_is_not_reported(tmp_path: Path) -> None:
    assert wal_torn_tail(tmp_path / "missing.db") is None


def test_torn_wal_tail_is_reported_and_sqlite_keeps_whole_commits(
    journal: SqliteJournal, tmp_path: Path
) -> None:
    for n in (1, 2, 3):
        journal.append([started(n)])  # one commit each; the last frame commits event 3
    copy = snapshot_files_while_open(journal, tmp_path / "crashed")
    wal = wal_of(copy)
    size = wal.stat().st_size
    with wal.open("r+b") as f:
        f.truncate(size - 1000)  # inside the last frame (pages are 4096 bytes)

    message = wal_torn_tail(copy)

    assert message is not None
    frame = 24 + 4096
    extra = (size - 1000 - 32) % frame
    assert message.startswith(f"{wal}: torn tail: {extra} bytes past the last whole frame")
    kept = quarantine_copy(wal, tmp_path / "quarantine", message)
    assert kept.read_bytes() == wal.read_bytes()
    assert kept.with_name(kept.name + ".reason.txt").read_text() == message + "\n"
    reopened = SqliteJournal(copy)
    try:
        assert [seq for seq, _ in reopened.read()] == [1, 2]
        assert [e for _, e in reopened.read()] == [started(1), started(2)]
    finally:
        reopened.close()


def test_torn_wal_header_and_foreign_wal_are_reported(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    wal_of(db).write_bytes(b"\x37\x7f\x06")
    assert "torn header: 3 of 32 bytes" in (wal_torn_tail(db) or "")
    wal_of(db).write_bytes(b"\x00" * 64)
    assert "not a WAL file" in (wal_torn_tail(db) or "")


def garble_body(db_path: Path, seq: int, body: bytes) -> None:
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("UPDATE events SET body = ? WHERE seq = ?", (body, seq))


def test_garbled_last_row_is_reported_saved_and_removed(
    journal: SqliteJournal, tmp_path: Path
) -> None:
    journal.append([started(1), OrchestratorStopped(at=2.0, instance="i1"), started(3)])
    assert last_row_problem(journal.path) is None
    garble_body(journal.path, 3, b'{"type":"orchestrator_sta')

    problem = last_row_problem(journal.path)

    assert problem is not None
    seq, message = problem
    assert seq == 3
    assert message.startswith(f"{journal.path} event 3: cannot decode event")
    saved = remove_torn_last_row(journal.path, 3, tmp_path / "quarantine")
    record = json.loads(saved.read_text())
    assert (record["seq"], record["epoch"], record["at"], record["type"]) == (
        3,
        0,
        3.0,
        "orchestrator_started",
    )
    assert base64.b64decode(record["body_base64"]) == b'{"type":"orchestrator_sta'
    assert journal.last_seq() == 2
    assert last_row_problem(journal.path) is None
    assert journal.append([started(4)]) == 3  # sequence stays contiguous


def test_a_body_that_contradicts_the_type_column_is_a_problem(journal: SqliteJournal) -> None:
    journal.append([started(1)])
    garble_body(journal.path, 1, b'{"type":"orchestrator_stopped","at":1.0,"instance":"x"}')
    problem = last_row_problem(journal.path)
    assert problem is not None
    assert "type column says 'orchestrator_started' but the body is" in problem[1]


def test_only_the_last_row_may_be_removed(journal: SqliteJournal, tmp_path: Path) -> None:
    journal.append([started(1), started(2), started(3)])
    garble_body(journal.path, 2, b"\xff\xfe")
    assert last_row_problem(journal.path) is None  # a middle row is not a torn tail
    with pytest.raises(StoreError, match="refusing to remove event 2: the last event is 3"):
        remove_torn_last_row(journal.path, 2, tmp_path / "quarantine")
    assert journal.last_seq() == 3
    assert not (tmp_path / "quarantine").exists() or not any((tmp_path / "quarantine").iterdir())


def test_empty_journal_has_no_last_row_problem(journal: SqliteJournal) -> None:
    assert last_row_problem(journal.path) is None


def test_integrity_of_a_healthy_journal(journal: SqliteJournal) -> None:
    journal.append([started(n) for n in range(1, 50)])
    assert integrity_problems(journal.path) == []


def test_integrity_names_the_file_when_a_page_is_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = SqliteJournal(path)
    for n in range(1, 201):
        journal.append([started(n)])
    journal.close()  # checkpoints the WAL into the db file
    page = 4096
    assert path.stat().st_size >= 6 * page
    with path.open("r+b") as f:
        f.seek(4 * page)  # a page in the middle of the events table
        f.write(bytes((i * 37 + 11) % 256 for i in range(page)))

    problems = integrity_problems(path)

    assert problems and all(p.startswith(f"{path}: ") for p in problems)


def test_integrity_of_something_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    path.write_bytes(b"not sqlite at all " * 300)
    assert integrity_problems(path) == [f"{path}: file is not a database"]
    missing = tmp_path / "missing.db"
    [problem] = integrity_problems(missing)
    assert problem.startswith(f"{missing}: ")
