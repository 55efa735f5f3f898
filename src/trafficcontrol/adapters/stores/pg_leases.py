"""Leases with fencing epochs and instance heartbeats, in PostgreSQL (``ports.Leases``).

Design note. A lease is one row per shard (``migrations/0002_leases.sql``); every
decision is one statement, timed by the server's ``clock_timestamp()``, so no
instance's clock (skewed, stepped, paused with its process) ever decides who leads:

- ``acquire`` is one upsert whose ``WHERE`` admits it only when the lease is expired
  (or released, which is expiry set to now), or when the session that holds it is
  gone: ``holder_pid``/``holder_since`` name the holder's lease session, and a row of
  ``pg_stat_activity`` with that pid and start time is what "alive" means. A killed
  holder's socket is closed by its kernel, the server ends the session at once, and a
  standby takes over within its next poll instead of waiting for the TTL. A session we
  cannot see (``backend_start`` NULL: another role, without ``pg_read_all_stats``)
  counts as alive: then expiry decides, as behind a transaction pooler, where sessions
  are not the holder's and ``holder_pid`` is NULL. Every acquire starts a new epoch.
- ``renew`` extends only the lease as granted (holder *and* epoch) and only while it
  is unexpired: an expired lease is never revived, even when nobody took it.
- Fencing itself is in the journal's writes (``postgres``): an append locks the lease
  row ``FOR SHARE`` and requires the writer's epoch, unexpired. An acquire's update
  waits for an append in flight and an append waits for an acquire in flight, so an
  append is either before a takeover (and the new leader reads it) or refused.

One connection of its own (renewals never queue behind journal reads), used by one
thread at a time; a lost connection fails the call with a retryable ``StoreError``
and the next call reconnects (and renews with the new session's pid).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from psycopg.types.json import Jsonb

from trafficcontrol.adapters.stores.pg_schema import Connection, OneConnection, parse_url
from trafficcontrol.errors import StoreError
from trafficcontrol.ports import InstanceBeat, InstanceInfo, LeaseGrant, LeaseInfo

T = TypeVar("T")
LEASES_CHANNEL = "tc_leases"
"""NOTIFY'd when a lease is released (a standby takes over at once: a handoff)."""
FORGET_AFTER_S = 86_400.0
"""Heartbeats older than this are removed (an instance that vanished a day ago)."""

_SESSION = """
    CASE WHEN %(session)s THEN pg_backend_pid() END,
    CASE WHEN %(session)s THEN
        (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
    END
"""
_TIMES = """
    extract(epoch FROM expires_at)::float8, extract(epoch FROM clock_timestamp())::float8
"""
_ACQUIRE = f"""
INSERT INTO leases AS l (shard, holder, epoch, expires_at, acquired_at, holder_pid, holder_since)
VALUES (
    %(shard)s, %(holder)s, 1, clock_timestamp() + make_interval(secs => %(ttl)s),
    clock_timestamp(), {_SESSION}
)
ON CONFLICT (shard) DO UPDATE
SET holder = excluded.holder, epoch = l.epoch + 1, expires_at = excluded.expires_at,
    acquired_at = excluded.acquired_at, holder_pid = excluded.holder_pid,
    holder_since = excluded.holder_since
WHERE l.expires_at <= clock_timestamp()
    OR (l.holder_pid IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_stat_activity a
        WHERE a.pid = l.holder_pid
            AND (a.backend_start IS NULL OR a.backend_start = l.holder_since)
    ))
RETURNING epoch, {_TIMES}
"""
_RENEW = f"""
UPDATE leases
SET expires_at = clock_timestamp() + make_interval(secs => %(ttl)s),
    (holder_pid, holder_since) = (SELECT {_SESSION})
WHERE shard = %(shard)s AND holder = %(holder)s AND epoch = %(epoch)s
    AND expires_at > clock_timestamp()
RETURNING epoch, {_TIMES}
"""
_RELEASE = f"""
WITH released AS (
    UPDATE leases SET expires_at = least(expires_at, clock_timestamp()), holder_pid = NULL
    WHERE shard = %(shard)s AND holder = %(holder)s AND epoch = %(epoch)s
    RETURNING shard
)
SELECT pg_notify('{LEASES_CHANNEL}', shard) FROM released
"""
_LEASES = f"""
SELECT shard, holder, epoch, {_TIMES}, extract(epoch FROM acquired_at)::float8
FROM leases ORDER BY shard
"""
_BEAT = """
INSERT INTO instances AS i (instance, host, pid, role, version, seq, details)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (instance) DO UPDATE
SET role = excluded.role, version = excluded.version, seq = excluded.seq,
    details = excluded.details, seen_at = clock_timestamp()
"""
_INSTANCES = """
SELECT instance, host, pid, role, version, seq, details,
    extract(epoch FROM started_at)::float8, extract(epoch FROM seen_at)::float8,
    extract(epoch FROM clock_timestamp())::float8
FROM instances ORDER BY started_at, instance
"""


class PgLeases:
    """``ports.Leases`` on the journal's database (its schema must be migrated)."""

    def __init__(self, url: str, *, busy_timeout_s: float = 5.0) -> None:
        self._target = parse_url(url, busy_timeout_s=busy_timeout_s)
        self.where = self._target.where
        self._db = OneConnection(self._target, "the leases are")

    def acquire(self, shard: str, holder: str, ttl_s: float) -> LeaseGrant | None:
        _check_ttl(ttl_s)
        params = {"shard": shard, "holder": holder, "ttl": ttl_s, **self._session()}
        row = self._run("take a lease", lambda c: c.execute(_ACQUIRE, params).fetchone())
        if row is None:
            return None
        return LeaseGrant(shard, holder, int(row[0]), ttl_s, float(row[1]), float(row[2]))

    def renew(self, grant: LeaseGrant) -> LeaseGrant | None:
        params = {
            "shard": grant.shard,
            "holder": grant.holder,
            "epoch": grant.epoch,
            "ttl": grant.ttl_s,
            **self._session(),
        }
        row = self._run("renew a lease", lambda c: c.execute(_RENEW, params).fetchone())
        if row is None:
            return None
        return LeaseGrant(
            grant.shard, grant.holder, grant.epoch, grant.ttl_s, float(row[1]), float(row[2])
        )

    def release(self, grant: LeaseGrant) -> None:
        params = {"shard": grant.shard, "holder": grant.holder, "epoch": grant.epoch}
        self._run("release a lease", lambda c: c.execute(_RELEASE, params).fetchall())

    def leases(self) -> list[LeaseInfo]:
        rows = self._run("read the leases", lambda c: c.execute(_LEASES).fetchall())
        return [
            LeaseInfo(r[0], r[1], int(r[2]), float(r[3]), float(r[4]), float(r[5])) for r in rows
        ]

    def beat(self, beat: InstanceBeat) -> None:
        params = (
            beat.instance,
            beat.host,
            beat.pid,
            beat.role,
            beat.version,
            beat.seq,
            Jsonb(beat.details),
        )
        self._run("record a heartbeat", lambda c: c.execute(_BEAT, params))

    def forget(self, instance: str) -> None:
        self._run(
            "remove a heartbeat",
            lambda c: c.execute(
                "DELETE FROM instances WHERE instance = %s"
                " OR seen_at < clock_timestamp() - make_interval(secs => %s)",
                (instance, FORGET_AFTER_S),
            ),
        )

    def instances(self) -> list[InstanceInfo]:
        rows = self._run("read the instances", lambda c: c.execute(_INSTANCES).fetchall())
        return [_instance(r) for r in rows]

    def close(self) -> None:
        self._db.close()

    # -- plumbing ---------------------------------------------------------------------
    def _session(self) -> dict[str, Any]:
        """Whether our session can name the holder (not behind a transaction pooler)."""
        return {"session": not self._target.pooled}

    def _run(self, doing: str, work: Callable[[Connection], T]) -> T:
        return self._db.run(doing, work)


def _check_ttl(ttl_s: float) -> None:
    if not 0.1 <= ttl_s <= 3600:
        raise StoreError(f"a lease TTL of {ttl_s!r}s is out of range (0.1..3600)", retryable=False)


def _instance(row: tuple[Any, ...]) -> InstanceInfo:
    beat = InstanceBeat(
        instance=row[0],
        host=row[1],
        pid=int(row[2]),
        role=row[3],
        version=row[4],
        seq=int(row[5]),
        details=dict(row[6]),
    )
    return InstanceInfo(beat=beat, started_at=row[7], seen_at=row[8], store_now=row[9])
