"""The embedded journal: one SQLite file in WAL mode.

Design note. One connection, used by one thread at a time (the runtime calls it
through ``asyncio.to_thread``), one transaction per ``append`` call: the runtime
batches every event that arrived while the previous commit ran into the next call,
which is the group commit. ``durability="process"`` (synchronous=NORMAL) survives a
crash of the process; ``"power"`` (synchronous=FULL) also survives power loss, at
the cost of an fsync per commit. Sequence numbers are assigned here, contiguous from
1. SQLite has no leases: one orchestrator per file, kept so by the run lock
(``run_lock``); a fence passed to ``append`` is only recorded (its epoch, per event).

Readers in other processes (``tc status`` while ``tc run`` works) see committed
events only; WAL lets them read while the writer writes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from trafficcontrol.adapters.stores.codec import decode, encode
from trafficcontrol.domain.events import AnyEvent
from trafficcontrol.errors import StoreError
from trafficcontrol.ports import Fence, Request, RequestResult

Durability = Literal["process", "power"]
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq   INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL,
    at    REAL    NOT NULL,
    type  TEXT    NOT NULL,
    body  BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id      INTEGER PRIMARY KEY,
    kind    TEXT    NOT NULL,
    body    BLOB    NOT NULL,
    taken   INTEGER NOT NULL DEFAULT 0,
    ok      INTEGER,
    message TEXT,
    details TEXT
);
"""


class SqliteJournal:
    def __init__(
        self, path: Path, *, durability: Durability = "process", busy_timeout_s: float = 30.0
    ) -> None:
        """``busy_timeout_s``: how long a write waits for a lock another connection holds
        before it fails with a (retryable) ``StoreError``."""
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            sync = "FULL" if durability == "power" else "NORMAL"
            self._db.execute(f"PRAGMA synchronous={sync}")
            self._db.executescript(_SCHEMA)
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open the journal: {exc}") from exc

    def _check_schema(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: journal schema {row[0]} is not the supported {SCHEMA_VERSION}"
            )

    def append(self, events: Sequence[AnyEvent], fence: Fence | None = None) -> int:
        epoch = 0 if fence is None else fence.epoch
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                last = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
                rows = [
                    (last + i, epoch, e.at, type(e).__struct_config__.tag, encode(e))
                    for i, e in enumerate(events, start=1)
                ]
                db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", rows)
                run_state = _run_state(rows)
                if run_state is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES ('run_state', ?)",
                        (run_state,),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot append to the journal: {exc}") from exc
        return int(last) + len(events)

    def read(self, after: int = 0) -> Iterator[tuple[int, AnyEvent]]:
        try:
            cursor = self._db.execute(
                "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq", (after,)
            )
            for seq, body in cursor:
                yield seq, decode(body, where=f"{self.path} event {seq}")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the journal: {exc}") from exc

    def last_run_clean(self) -> bool | None:
        """Whether the last orchestrator journaled its clean stop (None: none ever ran)."""
        kept = self._db.execute("SELECT value FROM meta WHERE key = 'run_state'").fetchone()
        if kept is not None:
            return bool(kept[0] == "stopped")
        row = self._db.execute(
            "SELECT type FROM events WHERE type IN ('orchestrator_started', 'orchestrator_stopped')"
            " ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else row[0] == "orchestrator_stopped"

    def last_seq(self) -> int:
        return int(self._db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])

    # -- requests from other processes ---------------------------------------------
    def post_request(self, kind: str, body: bytes) -> int:
        with self._write():
            cursor = self._db.execute(
                "INSERT INTO requests(kind, body) VALUES (?, ?)", (kind, body)
            )
        return int(cursor.lastrowid or 0)

    def take_requests(self, fence: Fence | None = None) -> list[Request]:
        # Polled several times a second: a plain read first, so an empty inbox never
        # takes the write lock.
        if self._db.execute("SELECT 1 FROM requests WHERE taken = 0 LIMIT 1").fetchone() is None:
            return []
        with self._write():
            rows = self._db.execute(
                "SELECT id, kind, body FROM requests WHERE taken = 0 ORDER BY id"
            ).fetchall()
            if rows:
                self._db.execute(
                    "UPDATE requests SET taken = 1 WHERE taken = 0 AND id <= ?", (rows[-1][0],)
                )
        return [Request(id=r[0], kind=r[1], body=bytes(r[2])) for r in rows]

    def finish_request(self, request_id: int, result: RequestResult) -> None:
        with self._write():
            self._db.execute(
                "UPDATE requests SET ok = ?, message = ?, details = ? WHERE id = ?",
                (int(result.ok), result.message, json.dumps(result.details), request_id),
            )

    def request_result(self, request_id: int) -> RequestResult | None:
        row = self._db.execute(
            "SELECT ok, message, details FROM requests WHERE id = ?", (request_id,)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return RequestResult(ok=bool(row[0]), message=row[1], details=json.loads(row[2]))

    def _write(self) -> _Transaction:
        return _Transaction(self._db, self.path)

    def close(self) -> None:
        self._db.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: cannot write: {exc}") from exc

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _run_state(rows: Sequence[tuple[object, ...]]) -> str | None:
    """'running' or 'stopped' after this batch, kept in ``meta`` so a start learns
    whether the last run stopped cleanly without scanning the journal."""
    for row in reversed(rows):
        if row[3] == "orchestrator_stopped":
            return "stopped"
        if row[3] == "orchestrator_started":
            return "running"
    return None
