"""The lease conformance suite: what every ``ports.Leases`` implementation must do, and
what the journal on the same store must refuse (fencing).

Each check takes a ``LeaseWorld``: a store that opens leases (one instance's session
each), can end a session as a dying holder would, can make a lease expire (the store's
clock moved on), and, where the store has a journal, opens it. Run them with::

    @pytest.mark.parametrize("check", CHECKS, ids=check_id)
    def test_leases(check, world):
        check(world)

Checks close what they open; they never sleep. ``FENCE_CHECKS`` need a journal.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Protocol

import pytest

from trafficcontrol.domain.events import AnyEvent, TaskWoken
from trafficcontrol.domain.model import TaskId
from trafficcontrol.errors import FencedError, StoreError
from trafficcontrol.ports import Fence, InstanceBeat, Journal, Leases

TTL = 30.0
"""Long: in these checks a lease expires only when the world says so."""


class LeaseWorld(Protocol):
    def open(self) -> Leases: ...

    def end_session(self, leases: Leases) -> None:
        """The session of ``leases`` is gone, as when its process is killed."""
        ...

    def expire(self, shard: str) -> None:
        """The store's clock passes the shard's lease expiry."""
        ...

    def journal(self) -> Journal | None:
        """A journal on the same store (None: this store has none; ``FENCE_CHECKS``
        need one)."""
        ...


Check = Callable[[LeaseWorld], None]


@contextlib.contextmanager
def _two(world: LeaseWorld) -> Iterator[tuple[Leases, Leases]]:
    """Two instances' sessions on the store, closed afterwards."""
    a, b = world.open(), world.open()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _woken(n: int, start: int = 0) -> list[AnyEvent]:
    return [TaskWoken(at=float(i), task_id=TaskId(f"t{i}")) for i in range(start, start + n)]


def check_one_holder_at_a_time(world: LeaseWorld) -> None:
    with _two(world) as (a, b):
        grant = a.acquire("main", "a", TTL)
        assert grant is not None and grant.epoch == 1 and grant.holder == "a"
        assert grant.expires_at > grant.store_now
        assert b.acquire("main", "b", TTL) is None
        assert a.acquire("main", "a2", TTL) is None  # even the same session: it is held
        [info] = b.leases()
        assert (info.shard, info.holder, info.epoch, info.live) == ("main", "a", 1, True)


def check_renew_extends_only_the_grant(world: LeaseWorld) -> None:
    with _two(world) as (a, b):
        grant = a.acquire("main", "a", TTL)
        assert grant is not None
        renewed = a.renew(grant)
        assert renewed is not None and renewed.epoch == grant.epoch
        assert renewed.expires_at >= grant.expires_at
        assert b.renew(replace(grant, holder="b")) is None
        assert a.renew(replace(grant, epoch=2)) is None


def check_expiry_hands_over_with_a_new_epoch(world: LeaseWorld) -> None:
    with _two(world) as (a, b):
        old = a.acquire("main", "a", TTL)
        assert old is not None
        world.expire("main")
        assert a.renew(old) is None, "an expired lease is never revived"
        new = b.acquire("main", "b", TTL)
        assert new is not None and new.epoch == old.epoch + 1
        assert a.renew(old) is None
        assert a.acquire("main", "a", TTL) is None


def check_release_frees_at_once(world: LeaseWorld) -> None:
    with _two(world) as (a, b):
        grant = a.acquire("main", "a", TTL)
        assert grant is not None
        b.release(replace(grant, holder="b"))  # not b's: no effect
        assert b.acquire("main", "b", TTL) is None
        a.release(grant)
        taken = b.acquire("main", "b", TTL)
        assert taken is not None and taken.epoch == 2
        assert a.renew(grant) is None


def check_a_dead_holder_is_replaced_before_expiry(world: LeaseWorld) -> None:
    with _two(world) as (a, b):
        grant = a.acquire("main", "a", TTL)
        assert grant is not None
        world.end_session(a)
        taken = b.acquire("main", "b", TTL)
        assert taken is not None and taken.epoch == 2, "the holder's session is gone"
        try:
            renewed = a.renew(grant)
        except StoreError as exc:  # its connection was the one that died: it reconnects
            assert exc.retryable
            renewed = a.renew(grant)
        assert renewed is None


def check_shards_are_independent(world: LeaseWorld) -> None:
    with _two(world) as (a, b):
        one = a.acquire("p1", "a", TTL)
        two = b.acquire("p2", "b", TTL)
        assert one is not None and two is not None and one.epoch == two.epoch == 1
        world.expire("p1")
        assert b.acquire("p1", "b", TTL) is not None
        assert a.renew(replace(two, holder="a")) is None
        assert b.renew(two) is not None
        assert [(i.shard, i.holder) for i in a.leases()] == [("p1", "b"), ("p2", "b")]


def check_concurrent_acquires_grant_once(world: LeaseWorld) -> None:
    opened = [world.open() for _ in range(6)]
    barrier = threading.Barrier(len(opened))
    grants: list[object] = []
    errors: list[BaseException] = []

    def take(leases: Leases, name: str) -> None:
        try:
            barrier.wait(timeout=30)
            grant = leases.acquire("main", name, TTL)
            if grant is not None:
                grants.append(grant)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=take, args=(leases, f"i{n}")) for n, leases in enumerate(opened)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        assert len(grants) == 1
    finally:
        for leases in opened:
            leases.close()


def check_heartbeats(world: LeaseWorld) -> None:
    a = world.open()
    try:
        a.beat(InstanceBeat("i1", "h", 10, "leader", "1.0", 5, {"epoch": 1}))
        a.beat(InstanceBeat("i2", "h", 11, "standby", "1.0", 3))
        a.beat(InstanceBeat("i1", "h", 10, "leader", "1.0", 9, {"epoch": 1}))
        seen = {i.beat.instance: i for i in a.instances()}
        assert seen.keys() == {"i1", "i2"}
        assert (seen["i1"].beat.seq, seen["i1"].beat.details) == (9, {"epoch": 1})
        assert seen["i1"].seen_at >= seen["i1"].started_at
        a.forget("i2")
        assert [i.beat.instance for i in a.instances()] == ["i1"]
    finally:
        a.close()


def check_appends_are_fenced(world: LeaseWorld) -> None:
    journal = world.journal()
    assert journal is not None, "a fencing check needs a store with a journal"
    a, b = world.open(), world.open()
    try:
        old = a.acquire("main", "a", TTL)
        assert old is not None
        assert journal.append(_woken(2), old.fence) == 2
        with pytest.raises(FencedError, match="unfenced"):
            journal.append(_woken(1, 2))
        world.expire("main")
        with pytest.raises(FencedError, match="expired"):
            journal.append(_woken(1, 2), old.fence)
        new = b.acquire("main", "b", TTL)
        assert new is not None
        with pytest.raises(FencedError, match="held by b at epoch 2"):
            journal.append(_woken(1, 2), old.fence)
        with pytest.raises(FencedError):
            journal.append(_woken(1, 2), Fence("main", "b", 1))
        assert journal.last_seq() == 2, "a refused append leaves the journal untouched"
        assert journal.append(_woken(1, 2), new.fence) == 3
        b.release(new)
        assert journal.append(_woken(1, 3)) == 4  # nobody holds it: unfenced is fine
    finally:
        a.close()
        b.close()
        journal.close()


def check_requests_are_taken_by_the_holder_only(world: LeaseWorld) -> None:
    journal = world.journal()
    assert journal is not None, "a fencing check needs a store with a journal"
    a, b = world.open(), world.open()
    try:
        old = a.acquire("main", "a", TTL)
        assert old is not None
        world.expire("main")
        new = b.acquire("main", "b", TTL)
        assert new is not None
        request = journal.post_request("submit", b"{}")
        assert journal.take_requests(old.fence) == []
        assert [r.id for r in journal.take_requests(new.fence)] == [request]
    finally:
        a.close()
        b.close()
        journal.close()


CHECKS: tuple[Check, ...] = (
    check_one_holder_at_a_time,
    check_renew_extends_only_the_grant,
    check_expiry_hands_over_with_a_new_epoch,
    check_release_frees_at_once,
    check_a_dead_holder_is_replaced_before_expiry,
    check_shards_are_independent,
    check_concurrent_acquires_grant_once,
    check_heartbeats,
)
FENCE_CHECKS: tuple[Check, ...] = (
    check_appends_are_fenced,
    check_requests_are_taken_by_the_holder_only,
)
"""For stores with a journal (``LeaseWorld.journal``)."""


def check_id(check: Check) -> str:
    return check.__name__.removeprefix("check_")
