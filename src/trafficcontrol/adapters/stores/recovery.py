"""Recovering the state at start: newest valid snapshot + journal tail, with repairs.

Order of the checks, each reported with the file it concerns:

1. A WAL whose last frame was cut mid-write (a crash while writing): a copy goes to
   ``quarantine/``; SQLite itself ignores the torn tail when it opens the journal.
2. SQLite's integrity check, when the last orchestrator did not stop cleanly; a
   failure is fatal (the journal is the truth), with a copy in quarantine.
3. A last journal row that does not decode (torn by a crashed writer): saved to
   quarantine and removed. A bad row anywhere else is real corruption and stops
   recovery with its sequence number, unless a newer snapshot covers it.
4. Snapshots, newest first: each that fails its checksum, header, length or schema is
   moved to ``snapshots/quarantine/`` with the reason; the first good one is used, or
   the whole journal is replayed. A snapshot ahead of the journal is not used.

Read-only callers (``tc status`` while ``tc run`` works) pass ``repair=False``: they
skip bad snapshots without moving them and change no file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from trafficcontrol.adapters.stores import journal_check
from trafficcontrol.adapters.stores.snapshot_files import SnapshotMeta, SnapshotStore
from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.state import State, apply
from trafficcontrol.errors import StoreError
from trafficcontrol.ports import Journal

log = logging.getLogger(__name__)


@dataclass
class Recovered:
    state: State
    snapshot: SnapshotMeta | None = None
    """The snapshot the state started from (None: full replay)."""
    tail: int = 0
    """Events folded after the snapshot."""
    notes: list[str] = field(default_factory=list)
    """What was found wrong and what was done about it, naming the files."""


def check_wal(path: Path, quarantine: Path) -> list[str]:
    """Check 1, before SQLite opens (and later checkpoints away) the WAL."""
    torn = journal_check.wal_torn_tail(path)
    if torn is None:
        return []
    wal = path.with_name(path.name + "-wal")
    copy = journal_check.quarantine_copy(wal, quarantine, torn)
    return [f"{torn}; copy kept at {copy}; SQLite drops the torn frame"]


def check_integrity(path: Path, quarantine: Path, *, clean: bool | None) -> list[str]:
    """Check 2."""
    notes = []
    if clean is False and path.exists():
        problems = journal_check.integrity_problems(path)
        if problems:
            copy = journal_check.quarantine_copy(path, quarantine, "; ".join(problems))
            raise StoreError(
                f"{path}: integrity check failed: {'; '.join(problems)} (copy kept at {copy})"
            )
        notes.append(f"{path}: last run did not stop cleanly; integrity check passed")
    return notes


def remove_torn_last_row(path: Path, quarantine: Path) -> list[str]:
    """Check 3."""
    found = journal_check.last_row_problem(path)
    if found is None:
        return []
    seq, problem = found
    saved = journal_check.remove_torn_last_row(path, seq, quarantine)
    return [f"{path}: last event {seq} is torn ({problem}); removed, saved to {saved}"]


def _validate(_meta: SnapshotMeta, payload: bytes) -> None:
    snapshot.decode(payload)


def load_snapshot(
    store: SnapshotStore, last_seq: int, *, repair: bool
) -> tuple[State | None, SnapshotMeta | None, list[str]]:
    """Check 4: the newest usable snapshot, restored."""
    notes: list[str] = []
    if repair:
        result = store.load_newest_valid(validate=_validate)
        notes += [f"{reason}; moved to {where}" for where, reason in result.quarantined]
        candidates = [result.found] if result.found else []
    else:
        candidates = []
        for info in reversed(store.list()):
            try:
                meta, payload = store.read(info.version)
                _validate(meta, payload)
            except (StoreError, ValueError):
                continue
            candidates.append((meta, payload))
            break
    for meta, payload in candidates:
        if meta.seq > last_seq:
            reason = (
                f"{meta.path}: covers journal seq {meta.seq} but the journal ends at"
                f" {last_seq}; not used"
            )
            if repair:
                # Once the journal grows past it, it would pass for a valid base.
                reason += f"; moved to {store.quarantine(meta.path, reason)}"
            notes.append(reason)
            continue
        return snapshot.restore(snapshot.decode(payload)), meta, notes
    return None, None, notes


def recover(
    journal: Journal, store: SnapshotStore, *, repair: bool, notes: list[str] | None = None
) -> Recovered:
    """The state: the newest usable snapshot plus the journal after it."""
    found = list(notes or [])
    if repair and isinstance(journal, SqliteJournal):  # a server keeps no torn rows
        found += remove_torn_last_row(journal.path, store.root.parent / "quarantine")
    base, meta, snapshot_notes = load_snapshot(store, journal.last_seq(), repair=repair)
    found += snapshot_notes
    state = base if base is not None else State()
    tail = 0
    for _seq, event in journal.read(after=state.seq):
        apply(state, event)
        tail += 1
    return Recovered(state=state, snapshot=meta, tail=tail, notes=found)
