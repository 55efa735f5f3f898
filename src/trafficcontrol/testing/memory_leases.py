"""``ports.Leases`` in memory: the reference the lease conformance suite holds
``PgLeases`` to, and the store the simulator's instances share (``LeaseTable`` is the
database, each ``MemoryLeases`` one instance's session on it; ``store_now`` is the
database's clock, which no instance's own clock skew touches)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from trafficcontrol.errors import StoreError
from trafficcontrol.ports import Fence, InstanceBeat, InstanceInfo, LeaseGrant, LeaseInfo


@dataclass
class _Row:
    holder: str
    epoch: int
    expires_at: float
    acquired_at: float
    session: int | None


@dataclass
class LeaseTable:
    """The shared rows, and the fencing check every fenced write makes."""

    store_now: Callable[[], float]
    rows: dict[str, _Row] = field(default_factory=dict)
    instances: dict[str, InstanceInfo] = field(default_factory=dict)
    live_sessions: set[int] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    grants: list[tuple[str, int, str, float]] = field(default_factory=list)
    """Every grant made: (shard, epoch, holder, at) — the simulator's invariants read it."""

    def session(self) -> int:
        sid = next(self._ids)
        self.live_sessions.add(sid)
        return sid

    def end_session(self, sid: int) -> None:
        """The session's connection is gone (its process died, the network cut it)."""
        self.live_sessions.discard(sid)

    def admits(self, fence: Fence | None) -> bool:
        """What the journal's fenced write checks, in the writing transaction."""
        now = self.store_now()
        if fence is None:
            return not any(r.expires_at > now for r in self.rows.values())
        row = self.rows.get(fence.shard)
        return (
            row is not None
            and (row.holder, row.epoch) == (fence.holder, fence.epoch)
            and row.expires_at > now
        )


class MemoryLeases:
    def __init__(self, table: LeaseTable) -> None:
        self.table = table
        self.sid = table.session()
        self.closed = False

    def acquire(self, shard: str, holder: str, ttl_s: float) -> LeaseGrant | None:
        self._check()
        table, now = self.table, self.table.store_now()
        row = table.rows.get(shard)
        if row is not None:
            holder_gone = row.session is not None and row.session not in table.live_sessions
            if row.expires_at > now and not holder_gone:
                return None
        epoch = 1 if row is None else row.epoch + 1
        table.rows[shard] = _Row(holder, epoch, now + ttl_s, now, self.sid)
        table.grants.append((shard, epoch, holder, now))
        return LeaseGrant(shard, holder, epoch, ttl_s, now + ttl_s, now)

    def renew(self, grant: LeaseGrant) -> LeaseGrant | None:
        self._check()
        now = self.table.store_now()
        row = self.table.rows.get(grant.shard)
        if row is None or (row.holder, row.epoch) != (grant.holder, grant.epoch):
            return None
        if row.expires_at <= now:
            return None
        row.expires_at = now + grant.ttl_s
        row.session = self.sid
        return LeaseGrant(grant.shard, grant.holder, grant.epoch, grant.ttl_s, row.expires_at, now)

    def release(self, grant: LeaseGrant) -> None:
        self._check()
        row = self.table.rows.get(grant.shard)
        if row is not None and (row.holder, row.epoch) == (grant.holder, grant.epoch):
            row.expires_at = min(row.expires_at, self.table.store_now())
            row.session = None

    def leases(self) -> list[LeaseInfo]:
        self._check()
        now = self.table.store_now()
        return [
            LeaseInfo(shard, r.holder, r.epoch, r.expires_at, now, r.acquired_at)
            for shard, r in sorted(self.table.rows.items())
        ]

    def beat(self, beat: InstanceBeat) -> None:
        self._check()
        now = self.table.store_now()
        old = self.table.instances.get(beat.instance)
        started = now if old is None else old.started_at
        self.table.instances[beat.instance] = InstanceInfo(beat, started, now, now)

    def forget(self, instance: str) -> None:
        self._check()
        self.table.instances.pop(instance, None)

    def instances(self) -> list[InstanceInfo]:
        self._check()
        now = self.table.store_now()
        return [
            InstanceInfo(i.beat, i.started_at, i.seen_at, now)
            for i in sorted(self.table.instances.values(), key=lambda i: i.started_at)
        ]

    def close(self) -> None:
        self.closed = True
        self.table.end_session(self.sid)

    def _check(self) -> None:
        if self.closed:
            raise StoreError("the leases are closed", retryable=False)
        if self.sid not in self.table.live_sessions:  # a cut connection: the next call reconnects
            self.sid = self.table.session()
