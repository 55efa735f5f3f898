"""The PostgreSQL journal's database: its URL, connection, errors and versioned schema.

Design note. This module is the boundary with psycopg; ``postgres.py`` (the journal)
builds on it and never sees a driver error.

- **URL.** ``postgresql://user:password@host:port/database?params``. Our own query
  parameters start with ``tc_`` and are stripped before libpq sees the URL; the one
  defined is ``tc_pooler=transaction|session|none``: the server is reached through a
  pooler in *transaction* mode (PgBouncer, Supavisor), where consecutive transactions
  may run on different server sessions. Without ``tc_pooler``, port 6543 (Supabase's
  transaction pooler) counts as one. Behind a transaction pooler nothing can live in
  the session, so (1) prepared statements are off (psycopg ``prepare_threshold=None``)
  unless ``prepare=True`` says the pooler supports them, and (2) the timeouts are set
  with ``SET LOCAL`` inside each write's transaction instead of as startup options
  (PgBouncer refuses the ``options`` startup parameter). ``prepare=False`` turns
  prepared statements off anywhere. Timeouts: ``lock_timeout`` is ``busy_timeout_s``,
  ``statement_timeout`` twice that (a statement may wait for its lock and then work as
  long again, so a lock wait fails as one), ``connect_timeout`` ``busy_timeout_s``
  within 2..10 s; the URL's own ``options`` and parameters win over ours.
  ``where`` is the URL with its password masked; it
  names the store in every message, and the password (raw or percent-encoded) is
  scrubbed from any text we take from the driver: libpq echoes a malformed URL's token,
  which may be the password. When it did, the driver's exception is not chained either.
- **Errors** become one-line ``StoreError``s naming ``where``, what we tried and what to
  do. Retryable: the server is unreachable, restarting or full of connections, a
  conflict (serialization failure, deadlock), a statement or lock timeout. Not
  retryable: authentication, unknown role or database, a read-only standby, missing
  privileges, a full disk, a malformed URL, a schema we do not know. Errors raised at
  connect carry no SQLSTATE (libpq reports them as text), so those are matched on
  libpq's English messages; anything unrecognised stays retryable when psycopg calls it
  operational (a network or server condition), not retryable otherwise.
- **Schema.** Numbered SQL files in ``migrations/`` (``0001_initial.sql``...), shipped in
  the package and applied in order, each recorded in ``schema_version``. ``migrate``
  runs them all in one transaction under ``pg_advisory_xact_lock``: one instance
  migrates, concurrent ones wait for its commit and then find nothing to do. The
  transaction-scoped lock (not ``pg_advisory_lock``) is released by the commit or by the
  server when the connection dies, and works through a transaction pooler; DDL is
  transactional in PostgreSQL, so a failed migration leaves nothing behind. Migrations
  must therefore be transactional (no ``CREATE INDEX CONCURRENTLY``). A database whose
  ``schema_version`` is newer than ours is refused before anything is written.
  Explicit transactions run at READ COMMITTED whatever the server's default, so a
  migrator that waited for the lock sees the other's commit.

Rejected: an ORM's migration tool (a dependency and a second schema language for
three tables); ``CREATE TABLE IF NOT EXISTS`` at every start, as SQLite does (no way to
change a table later, and concurrent ``IF NOT EXISTS`` creations collide in PostgreSQL).
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import conninfo

from trafficcontrol.adapters.stores.urls import mask_secrets
from trafficcontrol.errors import StoreError

T = TypeVar("T")

Connection = psycopg.Connection[tuple[Any, ...]]
POOLER_PORT = "6543"
"""Supabase's transaction pooler (Supavisor) listens here; its session pooler on 5432."""

_MIGRATE_LOCK = 0x7C_6A6F75726E616C  # "|journal": any constant unlikely to be someone else's
_URL_HELP = "expected postgresql://user:password@host:port/database"


@dataclass(frozen=True, slots=True)
class PgTarget:
    """A parsed store URL: what to connect to and how to name it."""

    where: str
    """The URL with any password masked: every message names the store with it."""
    conninfo: str
    """For libpq: the URL without our ``tc_`` parameters, plus our connection options."""
    pooled: bool
    """Behind a transaction-mode pooler: no session state survives a transaction."""
    prepare: bool
    """Let psycopg prepare statements it runs often."""
    busy_timeout_s: float
    secrets: tuple[str, ...]
    """The password as given and as decoded: scrubbed from every message."""

    @property
    def timeouts(self) -> tuple[str, str]:
        """``statement_timeout`` and ``lock_timeout``: a statement may wait
        ``busy_timeout_s`` for a lock and work as long again, so a lock wait fails as one."""
        return _ms(2 * self.busy_timeout_s), _ms(self.busy_timeout_s)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def leaks(self, exc: BaseException) -> bool:
        text = str(exc)
        return any(secret in text for secret in self.secrets)


def parse_url(url: str, *, busy_timeout_s: float = 30.0, prepare: bool | None = None) -> PgTarget:
    """Raises a non-retryable ``StoreError`` for a URL that is not a PostgreSQL one."""
    where, secrets = mask_secrets(url)

    def malformed(reason: str) -> StoreError:
        reason = " ".join(reason.split())
        for secret in secrets:
            reason = reason.replace(secret, "***")
        return StoreError(f"{where}: malformed store URL: {reason}: {_URL_HELP}", retryable=False)

    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise malformed(str(exc)) from None
    ports = [_port(host) for host in parts.netloc.rpartition("@")[2].split(",")]
    if parts.scheme not in ("postgresql", "postgres"):
        raise malformed(f"scheme {parts.scheme or '(none)'!r} is not postgresql")
    # Raw '&'-separated items, not parse_qsl/urlencode: re-encoding would turn spaces
    # into '+', which libpq does not decode.
    ours: dict[str, str] = {}
    theirs: list[str] = []
    for item in filter(None, parts.query.split("&")):
        key, _, value = item.partition("=")
        if key.startswith("tc_"):
            ours[key] = unquote(value)
        else:
            theirs.append(item)
    unknown = sorted(set(ours) - {"tc_pooler"})
    if unknown:
        raise malformed(f"unknown parameter {unknown[0]} (known: tc_pooler)")
    pooler = ours.get("tc_pooler")
    if pooler not in (None, "transaction", "session", "none"):
        raise malformed(f"tc_pooler={pooler} is not one of transaction, session, none")
    bad_port = next((p for p in ports if p and not p.isdigit()), None)
    if bad_port is not None:
        raise malformed(f"port {bad_port!r} is not a number")
    cleaned = urlunsplit(parts._replace(query="&".join(theirs)))
    try:
        params = conninfo.conninfo_to_dict(cleaned)
    except psycopg.Error as exc:
        raise malformed(str(exc)) from (None if any(s in str(exc) for s in secrets) else exc)
    password = params.get("password")
    if isinstance(password, str) and password:
        secrets = (*secrets, password)
    pooled = pooler == "transaction" or (pooler is None and POOLER_PORT in ports)
    extra: dict[str, Any] = {"application_name": "trafficcontrol"}
    extra.update({k: v for k, v in params.items() if k != "options"})
    # Connecting is not waiting for a lock: bounded apart (libpq's minimum is 2 s).
    extra.setdefault("connect_timeout", min(10, max(2, round(busy_timeout_s))))
    if not pooled:
        # Ours first: the URL's own options win. The isolation level is pinned because
        # the journal's single-statement writes rely on READ COMMITTED's re-check of a
        # row another appender just updated (a server default of SERIALIZABLE would
        # make concurrent appenders fail instead of queueing).
        mine = (
            f"-c statement_timeout={_ms(2 * busy_timeout_s)} -c lock_timeout={_ms(busy_timeout_s)}"
            r" -c default_transaction_isolation=read\ committed"
        )
        extra["options"] = f"{mine} {params.get('options', '')}".strip()
    elif "options" in params:
        extra["options"] = params["options"]
    return PgTarget(
        where=where,
        conninfo=conninfo.make_conninfo("", **extra),
        pooled=pooled,
        prepare=prepare if prepare is not None else not pooled,
        busy_timeout_s=busy_timeout_s,
        secrets=tuple(dict.fromkeys(s for s in secrets if s)),
    )


def _ms(seconds: float) -> str:
    # 0 means "no limit" to PostgreSQL; SQLite's 0 means "do not wait".
    return f"{max(1, round(seconds * 1000))}ms"


def _port(host: str) -> str:
    """``host:port``, ``[v6]:port`` or ``host``: the port as written ("" if none)."""
    if host.startswith("["):
        host = host.partition("]")[2]
    return host.partition(":")[2]


def connect(target: PgTarget) -> Connection:
    """An autocommit connection (each statement is its own transaction; explicit ones
    are opened with ``conn.transaction()`` at READ COMMITTED)."""
    try:
        conn = psycopg.connect(
            target.conninfo, autocommit=True, prepare_threshold=5 if target.prepare else None
        )
    except psycopg.Error as exc:
        raise store_error(exc, target, "connect") from (None if target.leaks(exc) else exc)
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    return conn


@contextmanager
def translated(target: PgTarget, doing: str) -> Iterator[None]:
    """Driver errors raised inside become ``StoreError``s (``doing``: "append to the
    journal", as in "cannot append to the journal")."""
    try:
        yield
    except psycopg.Error as exc:
        raise store_error(exc, target, doing) from (None if target.leaks(exc) else exc)


# -- errors -------------------------------------------------------------------------------
_RETRY = "try again"
_BY_SQLSTATE: dict[str, tuple[bool, str]] = {
    # SQLSTATE, or its two-character class -> (retryable, what to do)
    "28P01": (False, "fix the user or password in the store URL"),
    "28000": (False, "fix the user in the store URL, or admit it in the server's pg_hba.conf"),
    "3D000": (False, "create the database (createdb NAME) or fix its name in the store URL"),
    "22023": (False, f"fix the store URL ({_URL_HELP})"),
    "57P01": (True, "the server is restarting or shutting down; try again when it is up"),
    "57P02": (True, "the server is restarting or shutting down; try again when it is up"),
    "57P03": (True, "the server is starting up or shutting down; try again when it is up"),
    "53300": (True, "the server has no free connection slot; try again or raise max_connections"),
    "08": (True, "is the PostgreSQL server running and reachable from here?"),
    "40001": (True, f"a concurrent transaction conflicted; {_RETRY}"),
    "40P01": (True, f"a concurrent transaction conflicted; {_RETRY}"),
    "57014": (True, "ran longer than twice busy_timeout_s={timeout:g}; {retry}"),
    "55P03": (True, "waited longer than busy_timeout_s={timeout:g} for a lock; {retry}"),
    "53100": (False, "the database server's disk is full: free space there"),
    "53200": (True, f"the server is out of memory; {_RETRY}"),
    "25006": (
        False,
        "the server is a read-only standby (or the session is read-only):"
        " point the store URL at the primary",
    ),
    "42501": (
        False,
        "this role lacks the privilege: connect as the journal's owner, or grant this role"
        " SELECT, INSERT, UPDATE on the journal's tables",
    ),
    "42P07": (
        False,
        "the database holds tables of that name that are not a TrafficControl journal: use"
        " an empty database, or a schema of its own (options=-csearch_path=tc)",
    ),
    "42P01": (False, "the journal's tables are missing: was the schema changed by hand?"),
    "42703": (False, "the journal's tables were altered: was the schema changed by hand?"),
    "XX001": (False, "the server reports corrupted data: check the database server"),
    "XX002": (False, "the server reports corrupted data: check the database server"),
}
_BY_MESSAGE: tuple[tuple[str, str], ...] = (
    # Errors raised while connecting carry no SQLSTATE: libpq's (English) text -> the
    # SQLSTATE the server uses for the same condition. First match wins.
    ("password authentication failed|authentication failed|no password supplied", "28P01"),
    ('role ".*" does not exist|no pg_hba.conf entry', "28000"),
    ('database ".*" does not exist', "3D000"),
    (r"^invalid \S+ value|invalid connection option", "22023"),
    ("terminating connection due to administrator", "57P01"),
    ("the database system is (starting up|shutting down|in recovery|not yet)", "57P03"),
    ("too many connections|remaining connection slots", "53300"),
    ("no space left on device", "53100"),
    (
        "refused|could not connect|timeout expired|server closed the connection|unreachable"
        "|connection is (closed|lost|bad)|no route to host|could not (send|receive) data"
        "|connection reset|broken pipe|consuming input failed|sending query failed"
        "|ssl syscall error|eof detected|failed to resolve host|could not translate host",
        "08006",
    ),
)
# psycopg's and libpq's framing of a connect error; ``where`` names the server already.
_PREFIX = re.compile(
    r"^(?:connection failed: |connection is bad: )(?:connection to server (?:at|on) .*? failed: )?"
)
_SEVERITY = re.compile(r"^(?:FATAL|ERROR|PANIC):\s+")


def store_error(exc: psycopg.Error, target: PgTarget, doing: str) -> StoreError:
    """One line: ``<where>: cannot <doing>: <the server's reason>: <what to do>``.
    Unrecognised errors are retryable when psycopg calls them operational (a network or
    server condition), not otherwise."""
    lines = _PREFIX.sub("", str(exc)).strip().splitlines() or [type(exc).__name__]
    reason = target.scrub(" ".join(_SEVERITY.sub("", lines[0]).split()))
    sqlstate = exc.sqlstate
    if sqlstate is None:
        lowered = reason.lower()
        sqlstate = next((code for rx, code in _BY_MESSAGE if re.search(rx, lowered)), None)
    known = None if sqlstate is None else _BY_SQLSTATE.get(sqlstate, _BY_SQLSTATE.get(sqlstate[:2]))
    retryable, advice = known or (isinstance(exc, psycopg.OperationalError), "")
    advice = advice.format(timeout=target.busy_timeout_s, retry=_RETRY)
    message = f"{target.where}: cannot {doing}: {reason}" + (f": {advice}" if advice else "")
    return StoreError(message, retryable=retryable)


# -- schema ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """The shipped migrations, in order; numbered 1, 2, ... without holes."""
    found = []
    for entry in (resources.files("trafficcontrol.adapters.stores") / "migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match is not None:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..n: {[m.version for m in found]}")
    return tuple(found)


def latest() -> int:
    return len(migrations())


def newer_schema(target: PgTarget, current: int) -> StoreError:
    return StoreError(
        f"{target.where}: schema version {current} is newer than this tc understands"
        f" ({latest()}): upgrade tc",
        retryable=False,
    )


def current_version(conn: Connection) -> int:
    """The database's schema version (0: none); reads only. Raises psycopg errors."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    version = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(version[0]) if version is not None else 0


def migrate(target: str | Connection) -> tuple[int, int]:
    """Bring the schema to the newest version; ``(from_version, to_version)``. Safe to
    run from several processes at once (they wait for one another)."""
    with _opened(target) as (conn, pg):
        return apply_migrations(conn, pg)


def apply_migrations(conn: Connection, pg: PgTarget) -> tuple[int, int]:
    """``migrate`` on an open connection, naming ``pg.where`` in its errors."""
    with translated(pg, "migrate the journal schema"), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        current = current_version(conn)  # after the lock: another may have migrated
        if current > latest():
            raise newer_schema(pg, current)
        if current < latest():
            _refuse_under_a_leader(conn, pg, current)
        if current < latest():
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for migration in migrations()[current:]:
            # bytes: the file's text is not a literal, and without parameters psycopg
            # sends it with the simple protocol, so a file may hold several statements.
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_version(version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
    return current, latest()


def _refuse_under_a_leader(conn: Connection, pg: PgTarget, current: int) -> None:
    """Instances of another version sharing this store: an orchestrator that leads now
    runs on the old schema, and would meet tables changed under it."""
    if conn.execute("SELECT to_regclass('leases') IS NOT NULL").fetchone() != (True,):
        return
    row = conn.execute(
        "SELECT holder, epoch FROM leases WHERE expires_at > clock_timestamp()"
        " AND holder NOT LIKE 'tc-cli:%' LIMIT 1"
    ).fetchone()
    if row is not None:
        raise StoreError(
            f"{pg.where}: schema version {current} is older than this tc's ({latest()}) and"
            f" {row[0]} leads on it (epoch {row[1]}): versions with different schemas do not"
            " share a store; stop every tc run on it, then tc db migrate",
            retryable=False,
        )


def schema_status(target: str | Connection) -> tuple[int, int]:
    """``(current, latest)`` without changing anything."""
    with _opened(target) as (conn, pg), translated(pg, "read the schema version"):
        return current_version(conn), latest()


@contextmanager
def _opened(target: str | Connection) -> Iterator[tuple[Connection, PgTarget]]:
    if not isinstance(target, str):
        # A caller's connection: named by its host and database, never its password.
        info = target.info
        where = f"postgresql://{quote(info.user)}@{info.host}:{info.port}/{quote(info.dbname)}"
        yield (
            target,
            PgTarget(
                where=where,
                conninfo="",
                pooled=False,
                prepare=True,
                busy_timeout_s=30.0,
                secrets=(),
            ),
        )
        return
    pg = parse_url(target)
    conn = connect(pg)
    try:
        yield conn, pg
    finally:
        conn.close()


class OneConnection:
    """One connection of its own, opened on first use and again after it was lost, used
    by one thread at a time (the leases', the work queue's)."""

    def __init__(self, target: PgTarget, what: str) -> None:
        self.target = target
        self._what = what
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False

    def run(self, doing: str, work: Callable[[Connection], T]) -> T:
        """``work`` on the connection; driver errors become ``StoreError``s (retryable
        when the connection was lost: the next call reconnects)."""
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.target.where}: {self._what} closed", retryable=False)
            with translated(self.target, doing):
                if self._conn is None or self._conn.closed:
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = connect(self.target)
                return work(self._conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
