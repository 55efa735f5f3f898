"""PostgreSQL for the tests: a database per test, cloned from a migrated template.

The server is the one at ``TC_TEST_PG_ADMIN`` (default
``postgresql://postgres@127.0.0.1:5432/test``), reached as a superuser. Once per
session a template database is created and migrated; each test that asks for
``pg_url`` gets its own copy (``CREATE DATABASE ... TEMPLATE``, a few milliseconds),
dropped afterwards. An unreachable server fails the tests that need it: it is never
a reason to skip them. Databases are named ``tctest_<host>_<pid>_...``; those left behind by
a session that was killed (its pid on this host is gone) are dropped when the next one
starts.

Also here: ``FatalServer``, a listener that answers a connection's startup with one
error, as a server would (the test server trusts every local connection, so a wrong
password cannot be produced for real), and ``CuttingProxy``, a TCP proxy that can cut
a connection right after the server has answered a given statement, or cut every
connection and refuse new ones for a while (``partition``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import selectors
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from trafficcontrol.adapters.stores.pg_schema import migrate

ADMIN_URL = os.environ.get("TC_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
# The host in the name too: only this machine's pids can be checked for being alive.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_PREFIX = f"tctest_{_HOST}_{os.getpid()}_"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs the PostgreSQL test server (tests/pg.py)")


def admin(dbname: str | None = None) -> psycopg.Connection[tuple[Any, ...]]:
    """A superuser connection (autocommit) to the admin database, or to ``dbname``."""
    url = ADMIN_URL if dbname is None else url_of(dbname)
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def url_of(dbname: str, *, user: str | None = None, password: str | None = None) -> str:
    """``ADMIN_URL`` pointed at another database, as another user."""
    parts = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    user = user or str(parts.get("user", "postgres"))
    auth = user if password is None else f"{user}:{password}"
    return (
        f"postgresql://{auth}@{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}/{dbname}"
    )


def create_database(conn: psycopg.Connection[tuple[Any, ...]], template: str | None) -> str:
    name = f"{_PREFIX}{uuid.uuid4().hex[:12]}"
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    conn.execute(query)
    return name


def drop_database(conn: psycopg.Connection[tuple[Any, ...]], name: str) -> None:
    # WITH (FORCE) terminates the connections a test left open first, so a leaked
    # connection cannot keep its database alive (nor hide: -W error reports it).
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[None]:
    """The server is reachable (else every PostgreSQL test fails, saying so)."""
    unreachable = None
    try:
        conn = admin()
    except psycopg.Error as exc:
        unreachable = " ".join(str(exc).split())
    if unreachable is not None:  # outside the except: the reason is the whole message
        pytest.fail(
            f"the PostgreSQL test server is unreachable at {ADMIN_URL} ({unreachable})."
            " Start it, or point TC_TEST_PG_ADMIN at a superuser URL of another one.",
            pytrace=False,
        )
    with conn:
        for (name,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'tctest\\_%'"
        ).fetchall():
            found = re.match(rf"tctest_{_HOST}_(\d+)_", name)
            if found is not None and not _alive(int(found[1])):
                drop_database(conn, name)
    yield


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def pg_template(pg_server: None) -> Iterator[str]:
    """A database with the journal's schema, to clone."""
    with admin() as conn:
        name = create_database(conn, template=None)
    try:
        migrate(url_of(name))
        yield name
    finally:
        with admin() as conn:
            drop_database(conn, name)


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """The URL of a database of this test's own, with the journal's schema, empty."""
    with admin() as conn:
        name = create_database(conn, template=pg_template)
    try:
        yield url_of(name)
    finally:
        with admin() as conn:
            drop_database(conn, name)


@pytest.fixture
def pg_empty_url(pg_server: None) -> Iterator[str]:
    """The URL of a database of this test's own without any schema."""
    with admin() as conn:
        name = create_database(conn, template=None)
    try:
        yield url_of(name)
    finally:
        with admin() as conn:
            drop_database(conn, name)


# -- fake servers --------------------------------------------------------------------------
_SSL_REQUEST, _GSS_REQUEST = 80877103, 80877104


class FatalServer:
    """Answers every connection's startup with ``FATAL <sqlstate> <message>`` and closes,
    as PostgreSQL does when it refuses a login. ``with FatalServer(...) as port:``."""

    def __init__(self, sqlstate: str, message: str) -> None:
        self._error = _error_response(sqlstate, message)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fatal-server", daemon=True)

    def __enter__(self) -> int:
        self._thread.start()
        return int(self._listener.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            with client, contextlib.suppress(OSError):  # a client that gave up
                client.settimeout(5)
                while True:  # an SSL or GSS encryption request first, maybe: refuse it
                    length, code = struct.unpack("!ii", _read_exactly(client, 8))
                    _read_exactly(client, length - 8)
                    if code not in (_SSL_REQUEST, _GSS_REQUEST):
                        break
                    client.sendall(b"N")
                client.sendall(self._error)


def _error_response(sqlstate: str, message: str) -> bytes:
    fields = b"".join(
        tag + value.encode() + b"\0"
        for tag, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message))
    )
    payload = fields + b"\0"
    return b"E" + struct.pack("!i", len(payload) + 4) + payload


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


class CuttingProxy:
    """Forwards TCP to the test server. ``cut_after(marker)``: the next statement whose
    text contains ``marker`` reaches the server and is answered, but the answer is
    dropped and the client's connection closed, as when the network fails just after a
    commit. Statements must be sent as text (a journal with ``prepare=False``)."""

    def __init__(self) -> None:
        parts = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
        self._upstream = (str(parts.get("host", "127.0.0.1")), int(parts.get("port", 5432)))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._marker: bytes | None = None
        self._partitioned = threading.Event()
        self.cuts = 0
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="proxy", daemon=True)

    def __enter__(self) -> CuttingProxy:
        self._accepting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._accepting.join()
        for thread in self._threads:
            thread.join()
        self._listener.close()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def cut_after(self, marker: bytes) -> None:
        self._marker = marker

    def partition(self) -> None:
        """Cut every connection now and refuse new ones until ``heal`` (the client's
        side of a network partition: the server sees its sessions end)."""
        self._partitioned.set()

    def heal(self) -> None:
        self._partitioned.clear()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            if self._partitioned.is_set():
                client.close()
                continue
            thread = threading.Thread(target=self._pump, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket) -> None:
        server = socket.create_connection(self._upstream)
        cutting = False
        with client, server, selectors.DefaultSelector() as selector, contextlib.suppress(OSError):
            selector.register(client, selectors.EVENT_READ, server)
            selector.register(server, selectors.EVENT_READ, client)
            while not self._stop.is_set() and not self._partitioned.is_set():
                for key, _ in selector.select(timeout=0.05):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client and self._marker is not None and self._marker in data:
                        self._marker, cutting = None, True
                    elif source is server and cutting:
                        if b"Z\x00\x00\x00\x05" in data:  # ReadyForQuery: it has committed
                            self.cuts += 1
                            return  # closing both sockets drops the answer
                        continue
                    key.data.sendall(data)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once on each store: ``sqlite`` (the home's own file) and ``postgres``
    (a database of its own, named by ``TC_STORE`` for this process and every ``tc`` it
    starts)."""
    if request.param == "postgres":
        monkeypatch.setenv("TC_STORE", request.getfixturevalue("pg_url"))
    else:
        monkeypatch.delenv("TC_STORE", raising=False)
    return str(request.param)


@pytest.fixture(autouse=True)
def _close_apps() -> Iterator[None]:
    """Close what ``tests.helpers.make_app`` opened during the test (its docstring)."""
    from tests import helpers

    yield
    while helpers.OPENED:
        helpers.OPENED.pop().close()
