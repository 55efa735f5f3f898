"""The shared journal: PostgreSQL (or Supabase), for several instances or machines.

Design note. Same semantics as ``SqliteJournal`` (the conformance suite in
``trafficcontrol.testing.journal_conformance`` holds both to them); the schema is in
``migrations/`` and is created or upgraded by the constructor (``pg_schema``).

- **Gap-free sequence numbers.** ``journal_head`` has one row holding the last seq.
  An append is one statement: ``UPDATE journal_head SET seq = seq + n ... RETURNING``
  and, in the same statement, the insert of rows ``seq - n + 1 .. seq``. The update's
  row lock serialises appenders until commit (a second one waits, then, at READ
  COMMITTED, re-reads the row the first committed), so sequence numbers are contiguous
  from 1, a rolled-back append leaves no hole, and appends commit in seq order: a
  reader that has seen seq N never later finds an N-1 it missed. A ``SEQUENCE`` was
  rejected for exactly that (values are handed out before commit, leak on rollback and
  commit out of order); ``max(seq)+1`` for the race between two appenders. The head row
  also keeps the run state (``last_run_clean``) and the id of the last append.
- **One round trip per append** on a direct connection: autocommit, one statement, no
  BEGIN/COMMIT; batches of more than ``CHUNK`` events are several statements in one
  transaction. Group commit is the caller's batching, as with SQLite. Behind a
  transaction pooler each write is a transaction that first sets its timeouts with
  ``SET LOCAL``, four round trips: a long-running orchestrator is better served by a
  direct connection or a session pooler (Supabase's port 5432).
- **Durability is the server's**: a commit returns once PostgreSQL has it as durable as
  its ``synchronous_commit``, ``fsync`` and replication settings say. ``durability``
  ("process" or "power") changes nothing here; we never lower ``synchronous_commit``.
- **A lost connection** fails the call with a retryable ``StoreError``; the next call
  reconnects. An append whose connection died after it was sent is *in doubt*: it may
  have committed. The next append resolves that before writing, under the head's lock:
  if the head's ``last_append`` is the doubtful append's id, that batch is at the tail
  of the journal, and the new batch must begin with it (the runtime retries its buffer
  from the start); those events are not written again. A new batch that does not begin
  with it is refused (not retryable: the journal holds events this process did not
  fold). This assumes one writer, as fencing does: a second writer's append overwrites
  ``last_append``.
- **Reads** go in chunks of ``READ_CHUNK`` by key (``seq > last``), up to the head as it
  was when ``read`` began (a snapshot, like SQLite's). Keyset chunks hold no
  transaction or server-side cursor open between them, so an abandoned iterator costs
  nothing and an append on the same connection may run between two chunks. Results
  come in binary, so bodies are not hex-encoded on the wire.
- **Fencing.** With a fence (``ports.Fence``: shard, holder, epoch) the head's update
  runs only if that lease is current and unexpired, its row locked ``FOR SHARE`` in the
  same statement: an acquire at a newer epoch (``pg_leases``) waits for an append in
  flight, and an append waits for an acquire in flight, so an append is either before
  the takeover (and the new leader reads it) or refused with ``FencedError``, the
  journal untouched. Without a fence an append is refused while any lease is live (a
  CLI writes through its own short lease). Each append also NOTIFYs ``tc_events``, so
  standbys fold at once.
- **The inbox**: ``take_requests`` claims with ``UPDATE ... WHERE id IN (SELECT ... FOR
  UPDATE SKIP LOCKED)``: concurrent takers never claim a request twice and never wait
  for one another; when the inbox is empty it is one probe of a partial index. A post
  also NOTIFYs ``tc_requests``; ``on_request`` LISTENs on a session connection of its
  own, so a running orchestrator takes a request at once; polling stays the fallback
  (a lost listener, a transaction pooler, where LISTEN does not work).

One connection, used by one thread at a time like SQLite's (psycopg serialises calls
on it anyway). Errors are translated in ``pg_schema``; every message names ``where``,
the URL with its password masked.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from psycopg.types.json import Jsonb

from trafficcontrol.adapters.stores.codec import decode, encode
from trafficcontrol.adapters.stores.pg_leases import LEASES_CHANNEL
from trafficcontrol.adapters.stores.pg_schema import (
    Connection,
    apply_migrations,
    connect,
    current_version,
    latest,
    newer_schema,
    parse_url,
    translated,
)
from trafficcontrol.adapters.stores.sqlite import Durability
from trafficcontrol.domain.events import AnyEvent
from trafficcontrol.errors import FencedError, StoreError
from trafficcontrol.ports import Fence, Request, RequestResult

CHUNK = 10_000
"""Events per insert statement (a bigger batch is several, in one transaction)."""
READ_CHUNK = 5_000
"""Events per query while reading."""

REQUESTS_CHANNEL = "tc_requests"
"""NOTIFY'd with a request's id when it is posted (the leader takes it at once)."""
EVENTS_CHANNEL = "tc_events"
"""NOTIFY'd by every append (standbys fold at once)."""

T = TypeVar("T")
Row = tuple[float, str, bytes]
"""An event as stored: at, type, body."""

_FENCE = """
    SELECT 1 FROM leases
    WHERE shard = %(shard)s AND holder = %(holder)s AND epoch = %(epoch)s
        AND expires_at > clock_timestamp()
"""
"""The writer's lease, current and unexpired (see the design note on fencing)."""
_FENCED = """
    CASE WHEN %(shard)s::text IS NULL
        THEN NOT EXISTS (SELECT 1 FROM leases WHERE expires_at > clock_timestamp())
        ELSE EXISTS (SELECT 1 FROM fence)
    END
"""
_APPEND = f"""
WITH fence AS ({_FENCE} FOR SHARE
), head AS (
    UPDATE journal_head
    SET seq = seq + %(n)s::bigint,
        run_state = coalesce(%(run_state)s::text, run_state),
        last_append = %(token)s::bytea
    WHERE {_FENCED}
    RETURNING seq
), written AS (
    INSERT INTO events (seq, epoch, at, type, body)
    SELECT head.seq - %(n)s::bigint + e.n, %(epoch)s::bigint, e.at, e.type, e.body
    FROM head,
        unnest(%(ats)s::float8[], %(types)s::text[], %(bodies)s::bytea[])
        WITH ORDINALITY AS e(at, type, body, n)
)
SELECT seq, pg_notify('{EVENTS_CHANNEL}', '') FROM head
"""
_READ = "SELECT seq, body FROM events WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s"
_TAKE = f"""
WITH fence AS ({_FENCE})
UPDATE requests SET taken = true
WHERE id IN (SELECT id FROM requests WHERE NOT taken ORDER BY id FOR UPDATE SKIP LOCKED)
    AND (%(shard)s::text IS NULL OR EXISTS (SELECT 1 FROM fence))
RETURNING id, kind, body
"""
_SET_TIMEOUTS = (
    "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)"
)


@dataclass(frozen=True, slots=True)
class _InDoubt:
    """An append whose connection died after it was sent."""

    token: bytes
    bodies: tuple[bytes, ...]


class PostgresJournal:
    def __init__(
        self,
        url: str,
        *,
        durability: Durability = "process",
        busy_timeout_s: float = 30.0,
        prepare: bool | None = None,
    ) -> None:
        """``url``: ``postgresql://user:password@host:port/database`` (``pg_schema``
        documents ``?tc_pooler=``). ``busy_timeout_s``: how long a statement, or a wait
        for a lock another connection holds, may take before it fails with a retryable
        ``StoreError``. ``prepare``: use prepared statements (None: unless behind a
        transaction pooler). Creates or upgrades the schema; refuses a newer one."""
        self._target = parse_url(url, busy_timeout_s=busy_timeout_s, prepare=prepare)
        self.where = self._target.where
        self.durability = durability
        self._lock = threading.Lock()
        self._closed = False
        self._in_doubt: list[_InDoubt] = []
        self._conn: Connection | None = connect(self._target)
        try:
            with translated(self._target, "open the journal"):
                version = current_version(self._conn)
            if version > latest():
                raise newer_schema(self._target, version)
            if version < latest():
                apply_migrations(self._conn, self._target)
        except BaseException:
            self.close()
            raise

    # -- the journal ------------------------------------------------------------------
    def append(self, events: Sequence[AnyEvent], fence: Fence | None = None) -> int:
        rows = [(e.at, str(type(e).__struct_config__.tag), encode(e)) for e in events]
        if not rows and not self._in_doubt:
            return self.last_seq()
        token = os.urandom(16)
        conn = self._connection()
        try:
            with translated(self._target, "append to the journal"):
                if self._in_doubt:
                    last = self._write(conn, lambda: self._resolve(conn, rows, fence, token), True)
                    self._in_doubt.clear()
                    return last
                many = len(rows) > CHUNK
                return self._write(conn, lambda: self._insert(conn, rows, fence, token), many)
        except StoreError:
            if conn.closed:  # it died with the append sent: it may have committed
                self._in_doubt.append(_InDoubt(token, tuple(r[2] for r in rows)))
            raise

    def _insert(self, conn: Connection, rows: list[Row], fence: Fence | None, token: bytes) -> int:
        last = None
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            params = {
                **_fence_params(fence),
                "n": len(chunk),
                "run_state": _run_state(chunk),
                "token": token,
                "ats": [r[0] for r in chunk],
                "types": [r[1] for r in chunk],
                "bodies": [r[2] for r in chunk],
            }
            last = conn.execute(_APPEND, params).fetchone()
            if last is None:  # the head row is updated unless the fence refused it
                raise self._fenced(conn, fence)
        assert last is not None
        return int(last[0])

    def _fenced(self, conn: Connection, fence: Fence | None) -> FencedError:
        """Why the head refused an append: whose lease is current."""
        rows = conn.execute(
            "SELECT shard, holder, epoch, expires_at > clock_timestamp() FROM leases ORDER BY shard"
        ).fetchall()
        held = [f"{r[0]!r} by {r[1]} at epoch {r[2]}" for r in rows if r[3]]
        if fence is None:
            return FencedError(
                f"{self.where}: refused an unfenced append: the lease on shard"
                f" {', '.join(held)} is held (write through the orchestrator that holds it)"
            )
        current = next((r for r in rows if r[0] == fence.shard), None)
        if current is None:
            now = "no lease was ever taken on it"
        elif current[3] and (current[1], current[2]) != (fence.holder, fence.epoch):
            now = f"it is held by {current[1]} at epoch {current[2]}"
        else:
            now = f"the lease (epoch {current[2]}) has expired"
        return FencedError(
            f"{self.where}: refused an append from {fence.holder} at epoch {fence.epoch} on"
            f" shard {fence.shard!r}: {now}"
        )

    def _resolve(self, conn: Connection, rows: list[Row], fence: Fence | None, token: bytes) -> int:
        """Append after an append in doubt (see the design note). In a transaction."""
        head = conn.execute("SELECT seq, last_append FROM journal_head FOR UPDATE").fetchone()
        assert head is not None
        seq, last_append = int(head[0]), head[1]
        committed = next((d for d in self._in_doubt if d.token == last_append), None)
        if committed is not None:
            n = len(committed.bodies)
            if tuple(r[2] for r in rows[:n]) != committed.bodies:
                raise StoreError(
                    f"{self.where}: an append whose connection was lost did commit"
                    f" (events {seq - n + 1}..{seq}) and this append does not repeat it:"
                    " the journal holds events this process did not see; restart to"
                    " recover from the journal",
                    retryable=False,
                )
            rows = rows[n:]
        return self._insert(conn, rows, fence, token) if rows else seq

    def read(self, after: int = 0) -> Iterator[tuple[int, AnyEvent]]:
        with translated(self._target, "read the journal"):
            until = self._head(self._connection())
        while after < until:
            with translated(self._target, "read the journal"):
                cursor = self._connection().execute(_READ, (after, until, READ_CHUNK), binary=True)
                rows = cursor.fetchall()
            if not rows:
                return  # seqs are contiguous up to the head: only a hand-edited table
            for seq, body in rows:
                yield seq, decode(body, where=f"{self.where} event {seq}")
            after = rows[-1][0]

    def last_run_clean(self) -> bool | None:
        """Whether the last orchestrator journaled its clean stop (None: none ever ran)."""
        with translated(self._target, "read the journal"):
            row = self._connection().execute("SELECT run_state FROM journal_head").fetchone()
        return None if row is None or row[0] is None else bool(row[0] == "stopped")

    def last_seq(self) -> int:
        with translated(self._target, "read the journal"):
            return self._head(self._connection())

    # -- requests from other processes ---------------------------------------------------
    def post_request(self, kind: str, body: bytes) -> int:
        conn = self._connection()
        with translated(self._target, "post a request"):
            row = self._write(
                conn,
                lambda: conn.execute(_POST, (kind, body)).fetchone(),
            )
        assert row is not None
        return int(row[0])

    def take_requests(self, fence: Fence | None = None) -> list[Request]:
        conn = self._connection()
        with translated(self._target, "take requests"):
            if self._target.pooled:  # a write costs four round trips there: look first
                row = conn.execute("SELECT EXISTS (SELECT 1 FROM requests WHERE NOT taken)")
                if not (found := row.fetchone()) or not found[0]:
                    return []
            rows = self._write(
                conn, lambda: conn.execute(_TAKE, _fence_params(fence), binary=True).fetchall()
            )
        return [Request(id=r[0], kind=r[1], body=r[2]) for r in sorted(rows)]

    def finish_request(self, request_id: int, result: RequestResult) -> None:
        conn = self._connection()
        params = (result.ok, result.message, Jsonb(list(result.details)), request_id)
        with translated(self._target, "answer a request"):
            self._write(
                conn,
                lambda: conn.execute(
                    "UPDATE requests SET ok = %s, message = %s, details = %s WHERE id = %s",
                    params,
                ),
            )

    def request_result(self, request_id: int) -> RequestResult | None:
        with translated(self._target, "read a request's answer"):
            row = (
                self._connection()
                .execute("SELECT ok, message, details FROM requests WHERE id = %s", (request_id,))
                .fetchone()
            )
        if row is None or row[0] is None:
            return None
        return RequestResult(ok=bool(row[0]), message=row[1], details=list(row[2]))

    def on_request(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (from a thread of its own) whenever a request is posted: LISTEN
        on a session connection of its own. Behind a transaction pooler LISTEN does not
        work: nothing is done and the loop's polling alone serves requests."""
        return self._listening((REQUESTS_CHANNEL,), wake, "tc-requests-listener")

    def on_append(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` whenever events are appended or a lease is released (a standby
        folds, or takes over, at once); as ``on_request`` otherwise."""
        return self._listening((EVENTS_CHANNEL, LEASES_CHANNEL), wake, "tc-events-listener")

    def _listening(
        self, channels: tuple[str, ...], wake: Callable[[], None], name: str
    ) -> Callable[[], None]:
        if self._target.pooled:
            return lambda: None
        stop = threading.Event()
        thread = threading.Thread(
            target=self._listen, args=(channels, wake, stop), name=name, daemon=True
        )
        thread.start()

        def stop_listening() -> None:
            stop.set()
            thread.join(timeout=5)

        return stop_listening

    def _listen(
        self, channels: tuple[str, ...], wake: Callable[[], None], stop: threading.Event
    ) -> None:
        """LISTEN until ``stop``; a lost connection is opened again (wake once then: a
        notification may have been missed), at most every second."""
        while not stop.is_set():
            try:
                with connect(self._target) as conn:
                    for channel in channels:
                        conn.execute(f"LISTEN {channel}")
                    wake()
                    while not stop.is_set():
                        for _note in conn.notifies(timeout=0.5, stop_after=1):
                            wake()
            except Exception:  # the server went away: polling serves meanwhile
                stop.wait(1.0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- plumbing ---------------------------------------------------------------------
    def _connection(self) -> Connection:
        """The open connection; a new one when the last was lost."""
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.where}: the journal is closed", retryable=False)
            if self._conn is None or self._conn.closed:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                self._conn = connect(self._target)
            return self._conn

    def _write(self, conn: Connection, work: Callable[[], T], many: bool = False) -> T:
        """Run ``work`` (statements that write): alone in autocommit when it is one
        statement on a direct connection, else in a transaction, whose first statement
        behind a transaction pooler sets the timeouts (no session keeps them there)."""
        if not many and not self._target.pooled:
            return work()
        with conn.transaction():
            if self._target.pooled:
                conn.execute(_SET_TIMEOUTS, self._target.timeouts)
            return work()

    @staticmethod
    def _head(conn: Connection) -> int:
        row = conn.execute("SELECT seq FROM journal_head").fetchone()
        return 0 if row is None else int(row[0])


_POST = (
    "WITH posted AS (INSERT INTO requests(kind, body) VALUES (%s, %s) RETURNING id)"
    f" SELECT id, pg_notify('{REQUESTS_CHANNEL}', id::text) FROM posted"
)
"""A request and its notification in one statement (sent to listeners at commit)."""


def _fence_params(fence: Fence | None) -> dict[str, object]:
    if fence is None:
        return {"shard": None, "holder": None, "epoch": 0}
    return {"shard": fence.shard, "holder": fence.holder, "epoch": fence.epoch}


def _run_state(rows: Sequence[Row]) -> str | None:
    """'running' or 'stopped' after this batch (as ``sqlite._run_state``)."""
    for _at, kind, _body in reversed(rows):
        if kind == "orchestrator_stopped":
            return "stopped"
        if kind == "orchestrator_started":
            return "running"
    return None
