"""Snapshots of the folded state: restore(capture) + journal tail == full replay."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.domain_driver import canonical, drive, replay, roundtrip
from tests.test_domain_properties import Backlog, backlogs
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.state import apply


@settings(max_examples=150, deadline=None)
@given(backlogs(max_tasks=8), st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_snapshot_plus_tail_equals_full_replay(backlog: Backlog, seed: int, cut: float) -> None:
    run = drive(backlog.projects, backlog.tasks, backlog.config, random.Random(seed))
    journal = roundtrip(run.events)
    k = int(cut * len(journal))
    payload = snapshot.encode(replay(journal[:k]))

    state = snapshot.restore(snapshot.decode(payload))
    for event in journal[k:]:
        apply(state, event)

    assert canonical(state) == canonical(replay(journal))


@settings(max_examples=60, deadline=None)
@given(backlogs(max_tasks=8), st.integers(0, 2**32 - 1))
def test_a_captured_snapshot_does_not_change_with_the_live_state(
    backlog: Backlog, seed: int
) -> None:
    run = drive(backlog.projects, backlog.tasks, backlog.config, random.Random(seed))
    half = len(run.events) // 2
    live = replay(run.events[:half])
    payload = snapshot.encode(live)
    before = canonical(snapshot.restore(snapshot.decode(payload)))
    for event in run.events[half:]:
        apply(live, event)
    assert canonical(snapshot.restore(snapshot.decode(payload))) == before


def _sample_payload() -> bytes:
    backlog_state = replay([])
    return snapshot.encode(backlog_state)


def test_an_older_schema_loads_through_its_migration(monkeypatch: pytest.MonkeyPatch) -> None:
    current: dict[str, Any] = msgspec.msgpack.decode(_sample_payload())
    # Schema 0 (as this test defines it) called the counter "ready_counter".
    old = {**current, "schema": 0, "ready_counter": 7}
    del old["next_ready_order"]

    def v0_to_v1(raw: dict[str, Any]) -> dict[str, Any]:
        raw = dict(raw)
        raw["next_ready_order"] = raw.pop("ready_counter")
        return raw

    monkeypatch.setitem(snapshot.MIGRATIONS, 0, v0_to_v1)
    data = snapshot.decode(msgspec.msgpack.encode(old))
    assert data.schema == snapshot.SCHEMA and data.next_ready_order == 7


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xc1", "payload is not msgpack"),
        (msgspec.msgpack.encode({"no": "schema"}), "payload has no schema number"),
        (msgspec.msgpack.encode({"schema": 99}), "schema 99 is newer than this code"),
        (msgspec.msgpack.encode({"schema": -1}), "no migration from schema -1"),
        (msgspec.msgpack.encode({"schema": snapshot.SCHEMA, "seq": "x"}), "payload is invalid"),
    ],
)
def test_bad_payloads_are_refused_with_the_reason(payload: bytes, message: str) -> None:
    with pytest.raises(snapshot.SnapshotSchemaError, match=message):
        snapshot.decode(payload)


def test_provider_rate_limit_reports_survive_replay_snapshot_and_rollback() -> None:
    from trafficcontrol.domain.events import RateLimitObserved, RolledBack

    state = replay([])
    first = RateLimitObserved(
        at=1.0,
        attempt_id="a#1",
        window="five_hour",
        status="allowed",
        utilization=0.4,  # type: ignore[arg-type]
        resets_at=100.0,
    )
    newer = msgspec.structs.replace(first, at=2.0, utilization=0.6)
    apply(state, first)
    data = snapshot.decode(snapshot.encode(state))
    apply(state, newer)
    assert state.rate_limits == {"five_hour": newer}
    restored = snapshot.restore(snapshot.decode(snapshot.encode(state)))
    assert restored.rate_limits == {"five_hour": newer}
    # A rollback returns tasks to the past, not the provider's account of the present.
    apply(state, RolledBack(at=3.0, version=1, snapshot=data))
    assert state.rate_limits == {"five_hour": newer}
