"""Checks of the SQLite journal after a crash, and the few repairs that are safe.

Design note. SQLite already survives a crash mid-commit: at open it replays the WAL
up to its last commit frame and ignores a torn frame or anything after it. What it
does not do is tell anyone, so ``wal_torn_tail`` inspects the WAL (without opening
SQLite, which would recover and hide the evidence) and the caller keeps a copy
(``quarantine_copy``) before letting SQLite recover. Caveat: ``PRAGMA
journal_size_limit`` (not set by our journal) may legitimately truncate a WAL to a
size that is not a whole number of frames.

A last row that does not decode is what a writer that wrote a garbled record leaves;
it is the only row we remove, after saving it raw (``remove_torn_last_row``). A row
in the middle that does not decode is real corruption: reported, never removed.
Nothing here deletes a file; quarantine means copy (journal) or move (snapshots).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import struct
from contextlib import closing
from pathlib import Path

from trafficcontrol.adapters.stores.codec import decode
from trafficcontrol.errors import CorruptJournalError, StoreError

WAL_MAGICS = (0x377F0682, 0x377F0683)
WAL_HEADER = 32
WAL_FRAME_HEADER = 24
_MIN_PAGE, _MAX_PAGE = 512, 65536


def wal_torn_tail(db_path: Path) -> str | None:
    """What is wrong with the end of ``<db>-wal``, or None when it ends on a whole frame."""
    wal = _wal_path(db_path)
    try:
        size = wal.stat().st_size
        with wal.open("rb") as f:
            header = f.read(WAL_HEADER)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{wal}: cannot read: {exc}") from exc
    if size == 0:
        return None  # SQLite resets the WAL to empty after a checkpoint: nothing torn
    if size < WAL_HEADER:
        return f"{wal}: torn header: {size} of {WAL_HEADER} bytes"
    magic, _version, page_size = struct.unpack_from(">III", header)
    if magic not in WAL_MAGICS:
        return f"{wal}: not a WAL file (magic {magic:#010x}); SQLite will ignore it"
    if page_size & (page_size - 1) or not _MIN_PAGE <= page_size <= _MAX_PAGE:
        return f"{wal}: invalid page size {page_size} in the WAL header; SQLite will ignore it"
    frames, extra = divmod(size - WAL_HEADER, WAL_FRAME_HEADER + page_size)
    if extra == 0:
        return None
    return (
        f"{wal}: torn tail: {extra} bytes past the last whole frame "
        f"({frames} whole frames of {page_size}-byte pages)"
    )


def quarantine_copy(path: Path, quarantine_dir: Path, reason: str) -> Path:
    """Copy ``path`` into ``quarantine_dir`` with ``<name>.reason.txt``; never deletes."""
    try:
        quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = _free_path(quarantine_dir, path.name)
        shutil.copy2(path, target)
        _reason_path(target).write_text(reason + "\n")
    except OSError as exc:
        raise StoreError(f"{path}: cannot copy to quarantine: {exc}") from exc
    return target


def integrity_problems(db_path: Path) -> list[str]:
    """``PRAGMA integrity_check`` on a read-only connection; [] when the db is sound."""
    try:
        with closing(_connect_read_only(db_path)) as db:
            rows = db.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.Error as exc:
        return [f"{db_path}: {exc}"]
    if [tuple(r) for r in rows] == [("ok",)]:
        return []
    return [f"{db_path}: {r[0]}" for r in rows]


def last_row_problem(db_path: Path) -> tuple[int, str] | None:
    """(seq, what is wrong) when the last journal row does not decode, else None."""
    try:
        with closing(_connect_read_only(db_path)) as db:
            row = db.execute(
                "SELECT seq, type, body FROM events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"{db_path}: cannot read the last event: {exc}") from exc
    if row is None:
        return None
    seq, type_, body = row
    where = f"{db_path} event {seq}"
    if not isinstance(body, bytes | str):
        return seq, f"{where}: body is {type(body).__name__}, not bytes"
    try:
        event = decode(body.encode() if isinstance(body, str) else body, where=where)
    except CorruptJournalError as exc:
        return seq, exc.message
    tag = type(event).__struct_config__.tag
    if tag != type_:
        return seq, f"{where}: type column says {type_!r} but the body is {tag!r}"
    return None


def remove_torn_last_row(db_path: Path, seq: int, quarantine_dir: Path) -> Path:
    """Save the raw last row to ``quarantine_dir`` and delete it, in one transaction.

    Refuses (StoreError) unless ``seq`` is still the last row: only a torn tail may go.
    """
    try:
        with closing(sqlite3.connect(db_path, isolation_level=None, timeout=5.0)) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                target = _save_last_row(db, db_path, seq, quarantine_dir)
                db.execute("DELETE FROM events WHERE seq = ?", (seq,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
    except sqlite3.Error as exc:
        raise StoreError(f"{db_path}: cannot remove event {seq}: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"{db_path}: cannot save event {seq} to quarantine: {exc}") from exc
    return target


def _save_last_row(db: sqlite3.Connection, db_path: Path, seq: int, quarantine_dir: Path) -> Path:
    last = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    if last != seq:
        raise StoreError(
            f"{db_path}: refusing to remove event {seq}: the last event is {last}",
            retryable=False,
        )
    seq_, epoch, at, type_, body = db.execute(
        "SELECT seq, epoch, at, type, body FROM events WHERE seq = ?", (seq,)
    ).fetchone()
    raw = body.encode() if isinstance(body, str) else bytes(body)
    record = {
        "db": str(db_path),
        "seq": seq_,
        "epoch": epoch,
        "at": at,
        "type": type_,
        "body_base64": base64.b64encode(raw).decode("ascii"),
    }
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    target = _free_path(quarantine_dir, f"{db_path.name}-event-{seq}.json")
    with target.open("w") as f:
        json.dump(record, f, indent=2)
        f.flush()
        os.fsync(f.fileno())  # the copy must be durable before the row goes
    return target


def _connect_read_only(db_path: Path) -> sqlite3.Connection:
    if not db_path.exists():
        # mode=ro would say "unable to open database file"; say which and why
        raise sqlite3.OperationalError("no such file")
    return sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True)


def _wal_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + "-wal")


def _reason_path(target: Path) -> Path:
    return target.with_name(target.name + ".reason.txt")


def _free_path(directory: Path, name: str) -> Path:
    """``directory/name``, or ``name.1``, ``name.2``, … so nothing is overwritten."""
    target, n = directory / name, 0
    while target.exists() or _reason_path(target).exists():
        n += 1
        target = directory / f"{name}.{n}"
    return target
