"""Snapshot files: format, atomic writes, retention, and every kind of damage."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from trafficcontrol.adapters.stores.snapshot_files import (
    MAGIC,
    CorruptSnapshotError,
    SnapshotMeta,
    SnapshotNotFoundError,
    SnapshotStore,
)
from trafficcontrol.errors import StoreError

DAY = 86400.0
T0 = 1_700_000_000.0  # 2023-11-14 22:13 UTC


def store_in(tmp_path: Path, **kwargs: int) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snapshots", supported_schemas=(1, 2), **kwargs)


def incompressible(n: int, seed: int = 7) -> bytes:
    # zstd stores random bytes as a raw block, so a flipped payload byte reaches sha256
    return random.Random(seed).randbytes(n)


def write(store: SnapshotStore, payload: bytes, seq: int, now: float = T0) -> SnapshotMeta:
    return store.write(payload, schema=1, seq=seq, instance="inst-a", now=now)


def test_round_trip_and_header_fields(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    payload = b"state " * 1000
    meta = store.write(payload, schema=2, seq=120, instance="inst-a", now=T0)
    assert meta.path == tmp_path / "snapshots" / "snapshot-00000001-120.tcsnap"
    assert (meta.version, meta.schema, meta.seq, meta.instance) == (1, 2, 120, "inst-a")
    assert meta.created_at == T0
    assert meta.size == meta.path.stat().st_size < len(payload)  # compressed
    assert meta.path.read_bytes().startswith(MAGIC)
    assert store.read(1) == (meta, payload)
    [info] = store.list()
    assert (info.version, info.meta, info.problem) == (1, meta, None)
    assert store.verify() == []


def test_versions_increase_and_read_picks_by_version(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    metas = [write(store, f"p{i}".encode(), seq=10 * i) for i in range(1, 4)]
    assert [m.version for m in metas] == [1, 2, 3]
    assert [i.version for i in store.list()] == [1, 2, 3]
    assert store.read(2)[1] == b"p2"
    with pytest.raises(SnapshotNotFoundError):
        store.read(9)


def test_empty_store(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    assert store.list() == []
    assert store.verify() == []
    result = store.load_newest_valid()
    assert (result.found, result.quarantined) == (None, [])


def test_leftover_tmp_is_ignored_and_cleaned_at_next_write(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    write(store, b"one", seq=1)
    tmp = store.root / "snapshot-00000002-5.tcsnap.tmp"
    tmp.write_bytes(MAGIC + b"half a snapsh")  # what a crash mid-write leaves
    assert [i.version for i in store.list()] == [1]
    assert store.verify() == []
    found = store.load_newest_valid().found
    assert found is not None and found[1] == b"one"
    meta = write(store, b"two", seq=5)
    assert not tmp.exists()
    assert meta.version == 2 and store.read(2)[1] == b"two"
    assert list(store.root.glob("*.tmp")) == []


def test_retention_keeps_last_n_plus_one_per_day_for_a_week(tmp_path: Path) -> None:
    store = store_in(tmp_path, keep_last=3, keep_daily_days=7)
    # four snapshots a day for ten days, six hours apart
    times = [T0 - 10 * DAY + i * 6 * 3600 for i in range(40)]
    quarantined = store.quarantine_dir / "keep-me.tcsnap"
    for i, now in enumerate(times, start=1):
        if i == 2:
            store.quarantine_dir.mkdir()
            quarantined.write_bytes(b"bad")
        write(store, b"x", seq=i, now=now)
    now = times[-1]
    kept = {i.version for i in store.list()}
    last_three = {38, 39, 40}
    # newest of each of the last seven UTC days (today included) relative to now
    newest_per_day: dict[int, int] = {}
    for version, t in enumerate(times, start=1):
        newest_per_day[int(t // DAY)] = version
    daily = {v for day, v in newest_per_day.items() if int(now // DAY) - day < 7}
    assert len(daily) == 7
    assert kept == last_three | daily
    assert quarantined.read_bytes() == b"bad"


def test_retention_spares_unreadable_files(tmp_path: Path) -> None:
    store = store_in(tmp_path, keep_last=1)
    first = write(store, b"a", seq=1)
    first.path.write_bytes(b"garbage")  # for quarantine to judge, not for retention
    for seq in range(2, 5):
        write(store, b"b", seq=seq)
    assert first.path.exists()
    assert [i.version for i in store.list()] == [1, 4]


def test_keep_last_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_last"):
        store_in(tmp_path, keep_last=0)


# -- damage ------------------------------------------------------------------------
def flip(offset: int) -> Callable[[bytes], bytes]:
    def damage(data: bytes) -> bytes:
        at = offset if offset >= 0 else len(data) + offset
        return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]

    return damage


def cut(keep: int) -> Callable[[bytes], bytes]:
    return lambda data: data[:keep]


DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "payload byte flipped": (flip(-100), r"checksum mismatch \(payload sha256 [0-9a-f]{64} != "),
    "header byte flipped": (flip(len(MAGIC) + 8 + 12), r"header checksum mismatch \(crc32 "),
    "header crc flipped": (flip(len(MAGIC) + 5), r"header checksum mismatch"),
    "empty": (cut(0), r"empty file \(0 bytes\)"),
    "truncated in magic": (cut(3), r"truncated in the magic line \(3 bytes\)"),
    "truncated in prefix": (cut(len(MAGIC) + 2), r"truncated in the header length prefix"),
    "truncated in header": (cut(len(MAGIC) + 8 + 10), r"truncated in the header \(10 of \d+"),
    "truncated in payload": (cut(-1), r"truncated payload \(\d+ of \d+ compressed bytes\)"),
    "trailing bytes": (lambda d: d + b"xyz", r"3 unexpected bytes after the payload"),
    "wrong magic": (lambda d: b"PK\x03\x04" + d[4:], r"wrong magic b'PK\\x03\\x04"),
    "garbage header": (
        lambda d: MAGIC + random.Random(3).randbytes(200),
        r"garbage header: length \d+ exceeds|header checksum mismatch",
    ),
    "random bytes": (lambda d: random.Random(4).randbytes(300), r"wrong magic"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damage_is_named_by_read_verify_and_list(tmp_path: Path, case: str) -> None:
    damage, fault = DAMAGE[case]
    store = store_in(tmp_path)
    meta = write(store, incompressible(4096), seq=120)
    meta.path.write_bytes(damage(meta.path.read_bytes()))
    name = re.escape("snapshots/snapshot-00000001-120.tcsnap")
    with pytest.raises(CorruptSnapshotError, match=rf"^{name}: (?:{fault})") as caught:
        store.read(1)
    assert not caught.value.retryable and isinstance(caught.value, StoreError)
    [problem] = store.verify()
    assert problem.path == meta.path and re.match(fault, problem.fault)
    assert str(problem) == caught.value.message
    [info] = store.list()
    if case != "payload byte flipped":  # the only fault a header-only read cannot see
        assert info.meta is None and info.problem is not None


def test_flipped_byte_in_a_compressed_payload_is_detected(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    meta = write(store, b"abc" * 5000, seq=1)
    meta.path.write_bytes(flip(-5)(meta.path.read_bytes()))
    with pytest.raises(CorruptSnapshotError, match=r"does not decompress|checksum|bytes, header"):
        store.read(1)


def test_unknown_schema_is_a_fault(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    store.write(b"future", schema=99, seq=7, instance="i", now=T0)
    [info] = store.list()
    assert info.meta is not None and info.meta.schema == 99  # list reads, verify judges
    with pytest.raises(CorruptSnapshotError, match=r": unknown schema 99 \(supported: 1, 2\)$"):
        store.read(1)
    assert [p.fault for p in store.verify(1)] == ["unknown schema 99 (supported: 1, 2)"]


def test_header_that_disagrees_with_the_file_name(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    meta = write(store, b"x", seq=3)
    meta.path.rename(store.root / "snapshot-00000005-3.tcsnap")
    with pytest.raises(CorruptSnapshotError, match="header says version 1 seq 3, file name"):
        store.read(5)


def test_verify_checks_every_snapshot_and_names_each_bad_one(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    metas = [write(store, incompressible(512, seed=i), seq=i) for i in range(1, 5)]
    metas[0].path.write_bytes(b"")
    metas[2].path.write_bytes(flip(-10)(metas[2].path.read_bytes()))
    problems = store.verify()
    assert [(p.path, p.fault.split(" (")[0]) for p in problems] == [
        (metas[0].path, "empty file"),
        (metas[2].path, "checksum mismatch"),
    ]
    assert store.verify(2) == []
    with pytest.raises(SnapshotNotFoundError):
        store.verify(9)


# -- recovery ----------------------------------------------------------------------
def test_load_falls_back_past_bad_snapshots_and_quarantines_them(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    good = write(store, b"good", seq=10)
    truncated = write(store, incompressible(2048), seq=20)
    flipped = write(store, incompressible(2048), seq=30)
    truncated.path.write_bytes(truncated.path.read_bytes()[:-50])
    flipped.path.write_bytes(flip(-7)(flipped.path.read_bytes()))

    result = store.load_newest_valid()

    assert result.found == (good, b"good")
    assert [(p.name, r.split(": ")[1].split(" (")[0]) for p, r in result.quarantined] == [
        ("snapshot-00000003-30.tcsnap", "checksum mismatch"),
        ("snapshot-00000002-20.tcsnap", "truncated payload"),
    ]
    for moved, reason in result.quarantined:
        assert moved.parent == store.quarantine_dir and moved.exists()
        assert reason.startswith(f"snapshots/{moved.name}: ")
        assert moved.with_name(moved.name + ".reason.txt").read_text() == reason + "\n"
    assert not truncated.path.exists() and not flipped.path.exists()
    assert [i.version for i in store.list()] == [1]


def test_load_quarantines_what_the_domain_cannot_decode(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    write(store, b"old", seq=1)
    write(store, b"undecodable", seq=2)

    def validate(meta: SnapshotMeta, payload: bytes) -> None:
        if payload == b"undecodable":
            raise ValueError("payload is not msgpack")

    result = store.load_newest_valid(validate)
    assert result.found is not None and result.found[1] == b"old"
    [(moved, reason)] = result.quarantined
    assert moved.name == "snapshot-00000002-2.tcsnap"
    assert reason.endswith("payload does not decode: payload is not msgpack")


def test_load_with_every_snapshot_bad_returns_none_and_quarantines_all(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    metas = [write(store, b"x", seq=i) for i in range(1, 4)]
    for meta in metas:
        meta.path.write_bytes(b"\x00" * 40)
    result = store.load_newest_valid()
    assert result.found is None
    assert [p.name for p, _ in result.quarantined] == [m.path.name for m in reversed(metas)]
    assert store.list() == []
    assert sorted(p.name for p in store.quarantine_dir.iterdir()) == sorted(
        [m.path.name for m in metas] + [m.path.name + ".reason.txt" for m in metas]
    )


def test_versions_never_repeat_after_quarantine(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    write(store, b"a", seq=1)
    bad = write(store, b"b", seq=2)
    store.quarantine(bad.path, "test")
    assert write(store, b"c", seq=3).version == 3
    for meta in [m for i in store.list() if (m := i.meta)]:
        store.quarantine(meta.path, "test")
    assert write(store, b"d", seq=4).version == 4


def test_quarantine_never_overwrites(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    meta = write(store, b"a", seq=1)
    first = store.quarantine(meta.path, "first")
    meta.path.write_bytes(b"again")
    second = store.quarantine(meta.path, "second")
    assert first != second
    assert first.read_bytes() != second.read_bytes() == b"again"
    assert second.with_name(second.name + ".reason.txt").read_text() == "second\n"
