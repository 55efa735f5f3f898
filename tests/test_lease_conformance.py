"""The leases pass their conformance suite: PostgreSQL's (direct and behind the
transaction-pooler path) and the in-memory table the simulator uses; PostgreSQL's
journal is fenced by them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg import admin
from trafficcontrol.adapters.stores import pg_schema
from trafficcontrol.adapters.stores.pg_leases import PgLeases
from trafficcontrol.adapters.stores.postgres import PostgresJournal
from trafficcontrol.errors import StoreError
from trafficcontrol.ports import Journal, Leases
from trafficcontrol.testing.lease_conformance import (
    CHECKS,
    FENCE_CHECKS,
    Check,
    LeaseWorld,
    check_id,
)
from trafficcontrol.testing.memory_leases import LeaseTable, MemoryLeases


class MemoryWorld:
    def __init__(self) -> None:
        self.now = 1000.0
        self.table = LeaseTable(store_now=lambda: self.now)

    def open(self) -> Leases:
        return MemoryLeases(self.table)

    def end_session(self, leases: Leases) -> None:
        assert isinstance(leases, MemoryLeases)
        self.table.end_session(leases.sid)

    def expire(self, shard: str) -> None:
        self.table.rows[shard].expires_at = self.now  # as the PostgreSQL world does

    def journal(self) -> Journal | None:
        return None


class PgWorld:
    def __init__(self, url: str) -> None:
        self.url = url
        self.dbname = url.split("?")[0].rpartition("/")[2]
        self.opened: list[PgLeases | PostgresJournal] = []

    def open(self) -> Leases:
        self.opened.append(PgLeases(self.url))
        return self.opened[-1]  # type: ignore[return-value]

    def end_session(self, leases: Leases) -> None:
        # As a killed holder's kernel would: its connection ends; wait until the server
        # has ended the backend (pg_terminate_backend's timeout), so it is gone for real.
        with admin(self.dbname) as conn:
            pid = conn.execute("SELECT holder_pid FROM leases WHERE holder_pid IS NOT NULL")
            row = pid.fetchone()
            assert row is not None, "the holder's session is not recorded"
            conn.execute("SELECT pg_terminate_backend(%s, 10000)", (row[0],))

    def expire(self, shard: str) -> None:
        # The server's clock passing expiry, without waiting for it.
        with admin(self.dbname) as conn:
            conn.execute(
                "UPDATE leases SET expires_at = clock_timestamp() - interval '1 ms'"
                " WHERE shard = %s",
                (shard,),
            )

    def journal(self) -> Journal | None:
        self.opened.append(PostgresJournal(self.url))
        return self.opened[-1]  # type: ignore[return-value]

    def close(self) -> None:
        for opened in self.opened:
            opened.close()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-pooled", marks=pytest.mark.postgres),
    ]
)
def world(request: pytest.FixtureRequest) -> Iterator[MemoryWorld | PgWorld]:
    if request.param == "memory":
        yield MemoryWorld()
        return
    url = request.getfixturevalue("pg_url")
    if request.param == "postgres-pooled":
        url += "?tc_pooler=transaction"
    pg = PgWorld(url)
    try:
        yield pg
    finally:
        pg.close()


@pytest.mark.parametrize("check", CHECKS, ids=check_id)
def test_leases(check: Check, world: MemoryWorld | PgWorld) -> None:
    if check.__name__ == "check_a_dead_holder_is_replaced_before_expiry" and (
        isinstance(world, PgWorld) and "tc_pooler" in world.url
    ):
        check = expiry_alone_frees_a_lease_behind_a_pooler
    check(world)


def expiry_alone_frees_a_lease_behind_a_pooler(world: LeaseWorld) -> None:
    """Behind a transaction pooler a session is not the holder's: no session is
    recorded, and only expiry frees the lease."""
    a, b = world.open(), world.open()
    try:
        grant = a.acquire("main", "a", 30.0)
        assert grant is not None
        assert isinstance(world, PgWorld)
        with admin(world.dbname) as conn:
            row = conn.execute("SELECT holder_pid FROM leases").fetchone()
        assert row == (None,), "no holder session is recorded behind a pooler"
        assert b.acquire("main", "b", 30.0) is None
        world.expire("main")
        taken = b.acquire("main", "b", 30.0)
        assert taken is not None and taken.epoch == grant.epoch + 1
    finally:
        a.close()
        b.close()


@pytest.mark.postgres
@pytest.mark.parametrize("check", FENCE_CHECKS, ids=check_id)
def test_fencing(check: Check, pg_url: str) -> None:
    world = PgWorld(pg_url)
    try:
        check(world)
    finally:
        world.close()


@pytest.mark.postgres
def test_a_newer_version_does_not_migrate_a_store_another_version_leads_on(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = PgLeases(pg_url)
    try:
        grant = leases.acquire("main", "old-host:123:abcd", 30.0)
        assert grant is not None
        shipped = pg_schema.migrations()
        future = pg_schema.Migration(len(shipped) + 1, "future", "CREATE TABLE future (x int);")
        monkeypatch.setattr(pg_schema, "migrations", lambda: (*shipped, future))
        with pytest.raises(StoreError, match="old-host:123:abcd leads on it") as refused:
            PostgresJournal(pg_url)
        assert "stop every tc run on it, then tc db migrate" in refused.value.message
        assert pg_schema.schema_status(pg_url) == (len(shipped), len(shipped) + 1)
        leases.release(grant)  # nobody leads: the upgrade goes ahead
        PostgresJournal(pg_url).close()
        assert pg_schema.schema_status(pg_url) == (len(shipped) + 1, len(shipped) + 1)
    finally:
        leases.close()
