"""Snapshots of the folded state: a typed, versioned schema and its migrations. Pure.

Design note. A snapshot keeps only what the journal would rebuild — projects, task
and attempt records, the sequence number and a few counters — and ``restore``
rebuilds every index (ready heap, aging queue, waiting and deadline heaps, running
counts, lock table, dependents) from those records, so snapshot + journal tail
folds to the same state as a full replay. The encoding is msgpack through msgspec:
``encode`` returns bytes at once, which is the consistent copy the shell compresses
and writes off the event loop.

Older schemas load through ``MIGRATIONS``: each entry turns the builtins of schema
``n`` into those of ``n + 1``; ``decode`` applies them in order, then validates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from trafficcontrol.domain.capacity.tracker import Capacity
from trafficcontrol.domain.events import RateLimitObserved
from trafficcontrol.domain.records import RateLimitReport, SnapshotData
from trafficcontrol.domain.resilience import Resilience
from trafficcontrol.domain.state import State, copy_record, rebuild_indices

SCHEMA = 1

Migration = Callable[[dict[str, Any]], dict[str, Any]]
MIGRATIONS: dict[int, Migration] = {}
"""schema n -> function from schema n's builtins to schema n + 1's."""


class SnapshotSchemaError(ValueError):
    """The payload is not a snapshot of a schema this code can read."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SnapshotData)


def capture(state: State) -> SnapshotData:
    return SnapshotData(
        schema=SCHEMA,
        seq=state.seq,
        next_ready_order=state.next_ready_order,
        instance=state.instance,
        running_orchestrator=state.running_orchestrator,
        projects=list(state.projects.values()),
        tasks=list(state.tasks.values()),
        attempts=list(state.attempts.values()),
        rate_limits=[
            RateLimitReport(
                window=e.window,
                status=e.status,
                utilization=e.utilization,
                resets_at=e.resets_at,
                at=e.at,
                attempt_id=e.attempt_id,
            )
            for e in state.rate_limits.values()
        ],
        capacity=state.capacity.snapshot(),
        resilience=state.resilience.snapshot(),
        workflows=list(state.workflows.values()),
    )


def encode(state: State) -> bytes:
    """The state as snapshot bytes; a consistent copy that later changes do not touch."""
    return _encoder.encode(capture(state))


def decode(payload: bytes, *, supported: int = SCHEMA) -> SnapshotData:
    """Snapshot bytes of this or an older schema (migrated), validated."""
    try:
        raw = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError as exc:
        raise SnapshotSchemaError(f"payload is not msgpack: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("schema"), int):
        raise SnapshotSchemaError("payload has no schema number")
    schema: int = raw["schema"]
    if schema > supported:
        raise SnapshotSchemaError(f"schema {schema} is newer than this code ({supported})")
    if schema == supported:
        try:
            data: SnapshotData = _decoder.decode(payload)
        except msgspec.ValidationError as exc:
            raise SnapshotSchemaError(f"schema {schema} payload is invalid: {exc}") from exc
        return data
    while schema < supported:
        migrate = MIGRATIONS.get(schema)
        if migrate is None:
            raise SnapshotSchemaError(f"no migration from schema {schema}")
        raw = migrate(raw)
        schema += 1
        raw["schema"] = schema
    try:
        return msgspec.convert(raw, SnapshotData)
    except msgspec.ValidationError as exc:
        raise SnapshotSchemaError(f"migrated payload is invalid: {exc}") from exc


def restore(data: SnapshotData) -> State:
    """A state equal to the one captured, with every index rebuilt."""
    state = State()
    state.seq = data.seq
    state.next_ready_order = data.next_ready_order
    state.instance = data.instance
    state.running_orchestrator = data.running_orchestrator
    state.rate_limits = {
        r.window: RateLimitObserved(
            at=r.at,
            attempt_id=r.attempt_id,
            window=r.window,
            status=r.status,
            utilization=r.utilization,
            resets_at=r.resets_at,
        )
        for r in data.rate_limits
    }
    state.projects = {p.id: p for p in data.projects}
    state.tasks = {t.spec.id: copy_record(t) for t in data.tasks}
    state.attempts = {a.id: msgspec.structs.replace(a) for a in data.attempts}
    if data.capacity is not None:
        state.capacity = Capacity.restore(data.capacity)
    state.workflows = {w.name: w for w in data.workflows}
    if data.resilience is not None:
        state.resilience = Resilience.restore(data.resilience)
    rebuild_indices(state)
    return state
