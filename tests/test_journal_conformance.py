"""Both journals pass the conformance suite; PostgreSQL's own concerns on top: its schema
(migrations, a newer schema, a read-only role), its URL and errors (one line, the
password masked), a lost connection and an append whose commit was in doubt."""

from __future__ import annotations

import socket
import threading
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.pg import CuttingProxy, FatalServer, admin, url_of
from trafficcontrol.adapters.stores import pg_schema
from trafficcontrol.adapters.stores.pg_schema import migrate, parse_url, schema_status, store_error
from trafficcontrol.adapters.stores.postgres import PostgresJournal
from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.domain.events import StoreOutage, TaskWoken
from trafficcontrol.domain.model import TaskId
from trafficcontrol.errors import StoreError
from trafficcontrol.ports import RequestResult
from trafficcontrol.testing.journal_conformance import (
    CHECKS,
    Check,
    ConformingJournal,
    OpenJournal,
    check_id,
)

LATEST = pg_schema.latest()
SECRET = "s3cr%t-pw"  # as it would be typed; percent-encoded in URLs


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        # Through the transaction-pooler path: SET LOCAL timeouts, no prepared statements.
        pytest.param("postgres-pooled", marks=pytest.mark.postgres),
    ]
)
def open_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenJournal]:
    make: Callable[[], ConformingJournal]
    if request.param == "sqlite":
        path = tmp_path / "journal.db"
        make = lambda: SqliteJournal(path)  # noqa: E731
    else:
        url = request.getfixturevalue("pg_url")
        if request.param == "postgres-pooled":
            url += "?tc_pooler=transaction"
        make = lambda: PostgresJournal(url)  # noqa: E731
    opened: list[ConformingJournal] = []

    def factory() -> ConformingJournal:
        opened.append(make())
        return opened[-1]

    yield factory
    for journal in opened:  # what a failed check left open
        journal.close()


@pytest.mark.parametrize("check", CHECKS, ids=check_id)
def test_journal_conformance(check: Check, open_journal: OpenJournal) -> None:
    check(open_journal)


def woken(n: int, start: int = 0) -> list[TaskWoken]:
    return [TaskWoken(at=float(i), task_id=TaskId(f"t{i}")) for i in range(start, start + n)]


def one_line_naming(exc: StoreError, where: str, secrets: tuple[str, ...] = (SECRET,)) -> str:
    """The message: one line, starting with ``where``; no secret in it or its cause."""
    message = exc.message
    assert "\n" not in message and message.startswith(f"{where}: ")
    for secret in {*secrets, *(s.replace("%", "%25") for s in secrets)}:
        assert secret not in message
        assert secret not in str(exc.__cause__) and secret not in repr(exc.__cause__)
    return message


def scalar(dbname: str, query: str) -> Any:
    with admin(dbname) as conn:
        row = conn.execute(query.encode()).fetchone()
    return None if row is None else row[0]


def dbname_of(url: str) -> str:
    return url.rpartition("/")[2]


# -- schema ---------------------------------------------------------------------------------
postgres = pytest.mark.postgres


@postgres
def test_migrations_are_idempotent(pg_empty_url: str) -> None:
    assert schema_status(pg_empty_url) == (0, LATEST)
    assert migrate(pg_empty_url) == (0, LATEST)
    assert migrate(pg_empty_url) == (LATEST, LATEST)
    assert schema_status(pg_empty_url) == (LATEST, LATEST)
    versions = scalar(dbname_of(pg_empty_url), "SELECT array_agg(version) FROM schema_version")
    assert versions == list(range(1, LATEST + 1))


@postgres
def test_concurrent_migrators_do_not_collide(pg_empty_url: str) -> None:
    start = threading.Barrier(4)

    def run() -> tuple[int, int]:
        start.wait()
        return migrate(pg_empty_url)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(run) for _ in range(4)]
        results = sorted(f.result() for f in futures)
    assert results == [(0, LATEST)] + [(LATEST, LATEST)] * 3  # one migrated, three waited
    assert scalar(dbname_of(pg_empty_url), "SELECT count(*) FROM schema_version") == LATEST


@postgres
def test_the_journal_creates_its_schema_in_an_empty_database(pg_empty_url: str) -> None:
    journal = PostgresJournal(pg_empty_url)
    try:
        assert journal.append(woken(2)) == 2
    finally:
        journal.close()
    assert schema_status(pg_empty_url) == (LATEST, LATEST)


@postgres
def test_a_newer_schema_is_refused_and_nothing_written(pg_url: str) -> None:
    db = dbname_of(pg_url)
    with admin(db) as conn:
        conn.execute(
            "INSERT INTO schema_version(version, name) VALUES (%s, 'future')", (LATEST + 1,)
        )
    expected = f"schema version {LATEST + 1} is newer than this tc understands ({LATEST})"
    for attempt in (lambda: PostgresJournal(pg_url), lambda: migrate(pg_url)):
        with pytest.raises(StoreError) as caught:
            attempt()
        assert caught.value.message == f"{pg_url}: {expected}: upgrade tc"
        assert not caught.value.retryable
    assert schema_status(pg_url) == (LATEST + 1, LATEST)
    assert scalar(db, "SELECT count(*) FROM schema_version") == LATEST + 1
    assert scalar(db, "SELECT seq FROM journal_head") == 0


@postgres
def test_foreign_tables_are_named_not_overwritten(pg_empty_url: str) -> None:
    db = dbname_of(pg_empty_url)
    with admin(db) as conn:
        conn.execute("CREATE TABLE events (id int)")
    with pytest.raises(StoreError) as caught:
        PostgresJournal(pg_empty_url)
    message = one_line_naming(caught.value, pg_empty_url)
    assert 'relation "events" already exists' in message and "not a TrafficControl" in message
    assert not caught.value.retryable
    assert schema_status(pg_empty_url) == (0, LATEST)  # the migration rolled back whole


@pytest.fixture
def reader_role(pg_server: None) -> Iterator[str]:
    """A login role with no privileges of its own (roles are cluster-wide: dropped after)."""
    role = f"tctest_reader_{uuid.uuid4().hex[:8]}"
    with admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with admin() as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@contextmanager
def granted_read(dbname: str, role: str) -> Iterator[None]:
    """``role`` may connect to ``dbname`` and SELECT its tables, for the block."""
    ident = sql.Identifier(role)
    with admin(dbname) as conn:
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname), ident)
        )
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(ident))
    try:
        yield
    finally:
        with admin(dbname) as conn:  # revokes its privileges here and on the database
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))


@postgres
def test_a_read_only_role_reads_but_writes_nothing(pg_url: str, reader_role: str) -> None:
    db = dbname_of(pg_url)
    owner = PostgresJournal(pg_url)
    try:
        owner.append(woken(2))
    finally:
        owner.close()
    with granted_read(db, reader_role):
        journal = PostgresJournal(url_of(db, user=reader_role, password=SECRET.replace("%", "%25")))
        try:
            assert [e for _, e in journal.read()] == woken(2)
            writes: list[Callable[[], object]] = [
                lambda: journal.append(woken(1, start=2)),
                lambda: journal.post_request("submit", b"x"),
                journal.take_requests,
            ]
            for write in writes:
                with pytest.raises(StoreError) as caught:
                    write()
                message = one_line_naming(caught.value, journal.where)
                assert "permission denied for table" in message and "grant this role" in message
                assert not caught.value.retryable
        finally:
            journal.close()
    assert scalar(db, "SELECT seq FROM journal_head") == 2
    assert scalar(db, "SELECT count(*) FROM events") == 2
    assert scalar(db, "SELECT count(*) FROM requests") == 0


@postgres
def test_a_read_only_role_cannot_create_the_schema(pg_empty_url: str, reader_role: str) -> None:
    db = dbname_of(pg_empty_url)
    with granted_read(db, reader_role):
        url = url_of(db, user=reader_role)
        with pytest.raises(StoreError) as caught:
            PostgresJournal(url)
    message = one_line_naming(caught.value, url)
    assert "cannot migrate the journal schema: permission denied for schema public" in message
    assert not caught.value.retryable
    assert scalar(db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


@postgres
def test_a_read_only_session_is_told_to_use_the_primary(pg_url: str) -> None:
    url = f"{pg_url}?options=-c%20default_transaction_read_only%3Don"
    journal = PostgresJournal(url)  # as a hot standby would: reads work, writes do not
    try:
        assert journal.last_seq() == 0
        with pytest.raises(StoreError) as caught:
            journal.append(woken(1))
    finally:
        journal.close()
    message = one_line_naming(caught.value, url)
    assert "read-only transaction" in message and "read-only standby" in message
    assert not caught.value.retryable


# -- URLs and connection errors ---------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refused(url: str) -> StoreError:
    """The constructor's error for a well-formed ``url``, checked for one line, the
    masked URL first and no password."""
    with pytest.raises(StoreError) as caught:
        PostgresJournal(url)
    one_line_naming(caught.value, parse_url(url).where)
    return caught.value


@postgres
def test_a_wrong_password_is_one_line_without_the_password() -> None:
    with FatalServer("28P01", 'password authentication failed for user "alice"') as port:
        url = f"postgresql://alice:{SECRET.replace('%', '%25')}@127.0.0.1:{port}/tc"
        error = refused(url)
    assert error.message == (
        f"postgresql://alice:***@127.0.0.1:{port}/tc: cannot connect: password authentication"
        ' failed for user "alice": fix the user or password in the store URL'
    )
    assert not error.retryable


@postgres
def test_an_unknown_user_or_database_is_one_line(pg_url: str) -> None:
    db = dbname_of(pg_url)
    error = refused(url_of(db, user="tctest_nobody", password="s3cr%25t-pw"))
    assert 'role "tctest_nobody" does not exist: fix the user' in error.message
    assert not error.retryable
    error = refused(url_of("tctest_no_such_db"))
    assert 'database "tctest_no_such_db" does not exist: create the database' in error.message
    assert not error.retryable


@pytest.mark.parametrize(
    ("url", "secret", "says"),
    [
        ("postgresql://u:s3cr%25t-pw@127.0.0.1:notaport/db", SECRET, "port 'notaport'"),
        ("postgresql://u:s3cr%zzt-pw@127.0.0.1/db", "s3cr%zzt-pw", "invalid percent-encoded"),
        ("mysql://u:s3cr%25t-pw@127.0.0.1/db", SECRET, "scheme 'mysql' is not postgresql"),
        ("postgresql://u:s3cr%25t-pw@h/db?tc_pooler=sometimes", SECRET, "tc_pooler=sometimes"),
        ("postgresql://u:s3cr%25t-pw@h/db?tc_bogus=1", SECRET, "unknown parameter tc_bogus"),
        ("postgresql://u:s3cr%25t-pw@h/db?nonsense=1", SECRET, "invalid URI query parameter"),
        ("postgresql://u@h/db?password=s3cr%25t-pw&nonsense=1", SECRET, "invalid URI query"),
        ("postgresql://u:s3cr%25t-pw@[::1/db", SECRET, "Invalid IPv6 URL"),
        ("not a url at all", SECRET, "scheme '(none)'"),
    ],
)
def test_a_malformed_url_is_one_line_without_the_password(url: str, secret: str, says: str) -> None:
    with pytest.raises(StoreError) as caught:
        PostgresJournal(url)
    message = caught.value.message
    assert "\n" not in message and "malformed store URL" in message and says in message
    for leak in (secret, secret.replace("%", "%25")):
        assert leak not in message and leak not in repr(caught.value.__cause__)
    assert not caught.value.retryable


@postgres
def test_an_invalid_connection_option_is_not_retryable(pg_url: str) -> None:
    error = refused(f"{pg_url}?sslmode=bogus")
    assert 'invalid sslmode value: "bogus"' in error.message and not error.retryable


def test_a_server_that_is_not_there_is_retryable() -> None:
    url = f"postgresql://u:{SECRET.replace('%', '%25')}@127.0.0.1:{closed_port()}/db"
    error = refused(url)
    assert "cannot connect: Connection refused: is the PostgreSQL server running" in error.message
    assert error.retryable


def test_the_where_masks_every_password() -> None:
    assert parse_url("postgresql://u:p%40ss@h:5/db").where == "postgresql://u:***@h:5/db"
    assert parse_url("postgres://u@h/db?password=pw&sslmode=disable").where == (
        "postgres://u@h/db?password=***&sslmode=disable"
    )
    assert parse_url("postgresql://h1:5432,h2:5433/db").where == "postgresql://h1:5432,h2:5433/db"


@pytest.mark.parametrize(
    ("url", "prepare", "pooled", "prepared"),
    [
        ("postgresql://u@h:5432/db", None, False, True),
        ("postgresql://u@h:6543/db", None, True, False),  # Supabase's transaction pooler
        ("postgresql://u@h:6543/db?tc_pooler=session", None, False, True),
        ("postgresql://u@h/db?tc_pooler=transaction", None, True, False),
        ("postgresql://u@h/db?tc_pooler=transaction", True, True, True),
        ("postgresql://u@h/db?tc_pooler=none", False, False, False),
        ("postgresql://u@[::1]:6543,h2/db", None, True, False),
    ],
)
def test_pooler_rule(url: str, prepare: bool | None, pooled: bool, prepared: bool) -> None:
    target = parse_url(url, prepare=prepare, busy_timeout_s=2.5)
    assert (target.pooled, target.prepare) == (pooled, prepared)
    assert "tc_" not in target.conninfo
    assert ("statement_timeout=5000ms" in target.conninfo) is not pooled
    assert ("lock_timeout=2500ms" in target.conninfo) is not pooled  # SET LOCAL instead


def test_the_urls_own_options_are_kept() -> None:
    target = parse_url("postgresql://u@h/db?options=-c%20search_path%3Dtc&application_name=me")
    assert "search_path=tc" in target.conninfo and "application_name=me" in target.conninfo
    assert target.conninfo.index("lock_timeout") < target.conninfo.index("search_path")


@pytest.mark.parametrize(
    ("error", "retryable", "says"),
    [
        (psycopg.errors.AdminShutdown("terminating connection"), True, "restarting"),
        (psycopg.errors.SerializationFailure("could not serialize"), True, "conflicted"),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True, "conflicted"),
        (psycopg.errors.QueryCanceled("canceling statement"), True, "busy_timeout_s=30"),
        (psycopg.errors.LockNotAvailable("could not obtain lock"), True, "busy_timeout_s=30"),
        (psycopg.errors.TooManyConnections("too many clients"), True, "connection slot"),
        (psycopg.errors.DiskFull("could not extend file"), False, "disk is full"),
        (psycopg.errors.ReadOnlySqlTransaction("read-only"), False, "read-only standby"),
        (psycopg.errors.InsufficientPrivilege("permission denied"), False, "grant this role"),
        (psycopg.errors.DataCorrupted("invalid page"), False, "corrupted"),
        (
            psycopg.OperationalError("server closed the connection unexpectedly\n\tThis"),
            True,
            "reachable",
        ),
        (psycopg.OperationalError("something new"), True, "something new"),
        (psycopg.ProgrammingError("something else"), False, "something else"),
    ],
)
def test_error_mapping(error: psycopg.Error, retryable: bool, says: str) -> None:
    target = parse_url(f"postgresql://u:{SECRET.replace('%', '%25')}@h/db")
    translated = store_error(error, target, "append to the journal")
    assert translated.retryable is retryable and says in translated.message
    assert translated.message.startswith("postgresql://u:***@h/db: cannot append to the journal: ")
    assert "\n" not in translated.message


# -- a running journal ------------------------------------------------------------------------
@postgres
def test_a_lost_connection_is_retryable_and_the_next_call_reconnects(pg_url: str) -> None:
    journal = PostgresJournal(pg_url, durability="power")  # the server's durability either way
    try:
        journal.append(woken(2))
        with admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname_of(pg_url),),
            )
        with pytest.raises(StoreError) as caught:
            journal.append(woken(1, start=2))
        one_line_naming(caught.value, pg_url)
        assert caught.value.retryable
        assert journal.append(woken(2, start=2)) == 4  # reconnected; the lost one did not commit
        assert [e for _, e in journal.read()] == woken(4)
    finally:
        journal.close()


@postgres
def test_a_lock_held_too_long_is_a_retryable_timeout(pg_url: str) -> None:
    journal = PostgresJournal(pg_url, busy_timeout_s=0.2)
    try:
        with admin(dbname_of(pg_url)) as holder, holder.transaction():
            holder.execute("SELECT * FROM journal_head FOR UPDATE")
            with pytest.raises(StoreError) as caught:
                journal.append(woken(1))
        message = one_line_naming(caught.value, pg_url)
        assert "lock timeout" in message and "busy_timeout_s=0.2" in message
        assert caught.value.retryable
        assert journal.append(woken(1)) == 1
    finally:
        journal.close()


@postgres
@pytest.mark.parametrize("retry_repeats_it", [True, False])
def test_an_append_whose_commit_was_in_doubt_is_not_written_twice(
    pg_url: str, retry_repeats_it: bool
) -> None:
    with CuttingProxy() as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{dbname_of(pg_url)}"
        journal = PostgresJournal(url, prepare=False)
        try:
            journal.append(woken(2))
            proxy.cut_after(b"UPDATE journal_head")
            with pytest.raises(StoreError) as caught:
                journal.append(woken(2, start=2))  # committed, but the answer is lost
            assert proxy.cuts == 1 and caught.value.retryable
            if retry_repeats_it:  # as the runtime does: its buffer again, and what came since
                assert journal.append(woken(3, start=2)) == 5
                assert [e for _, e in journal.read()] == woken(5)
            else:
                with pytest.raises(StoreError) as caught:
                    journal.append(woken(1, start=7))
                message = one_line_naming(caught.value, url)
                assert "did commit (events 3..4)" in message and not caught.value.retryable
                assert [e for _, e in journal.read()] == woken(4)
        finally:
            journal.close()


@postgres
def test_a_closed_journal_refuses_every_call(pg_url: str) -> None:
    journal = PostgresJournal(pg_url)
    journal.close()
    journal.close()  # twice is fine
    calls: list[Callable[[], object]] = [
        lambda: journal.append(woken(1)),
        lambda: list(journal.read()),
        journal.last_seq,
        journal.last_run_clean,
        lambda: journal.post_request("k", b""),
        journal.take_requests,
        lambda: journal.finish_request(1, RequestResult(ok=True, message="")),
        lambda: journal.request_result(1),
    ]
    for call in calls:
        with pytest.raises(StoreError, match="the journal is closed") as caught:
            call()
        assert not caught.value.retryable


@postgres
def test_a_hundred_thousand_events_stream(pg_url: str) -> None:
    n = 100_000

    def outage(i: int) -> StoreOutage:
        return StoreOutage(at=float(i), started_at=0.0, buffered=i, errors=1, last_error="e" * 400)

    journal = PostgresJournal(pg_url)
    try:
        assert journal.append([outage(i) for i in range(n)]) == n  # several statements, one tx
        tracemalloc.start()
        try:
            count = 0
            for seq, event in journal.read():
                assert event == outage(seq - 1)
                count += 1
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        journal.close()
    assert count == n
    assert peak < n * 400 // 4  # the bodies alone are n * 400+ bytes: never all held at once


def test_a_posted_request_wakes_a_listener_at_once(pg_url: str) -> None:
    """LISTEN/NOTIFY: a running orchestrator hears of a request without its next poll."""
    listener, poster = PostgresJournal(pg_url), PostgresJournal(pg_url)
    woken = threading.Event()
    stop = listener.on_request(woken.set)
    try:
        assert woken.wait(10), "the listener never started"  # it wakes once on connecting
        woken.clear()
        request_id = poster.post_request("cancel", b"{}")
        assert woken.wait(10), "no notification for a posted request"
        assert [r.id for r in listener.take_requests()] == [request_id]
    finally:
        stop()
        listener.close()
        poster.close()


def test_behind_a_transaction_pooler_nobody_listens(pg_url: str) -> None:
    journal = PostgresJournal(pg_url + "?tc_pooler=transaction")
    try:
        stop = journal.on_request(lambda: None)
        stop()
        assert not [t for t in threading.enumerate() if t.name == "tc-requests-listener"]
    finally:
        journal.close()
