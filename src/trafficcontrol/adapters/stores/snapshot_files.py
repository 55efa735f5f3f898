"""Snapshot files under ``<home>/snapshots/``: atomic writes, validation, quarantine.

File format (all integers big-endian)::

    b"TCSNAP1\\n"                    8 bytes, magic
    header_len  u32                 4 bytes
    header_crc  u32                 4 bytes, CRC-32 of the header bytes
    header      JSON, header_len bytes: {schema, seq, version, created_at, instance,
                payload_sha256, payload_len, compressed_len}
    payload     zstd frame, compressed_len bytes, nothing after it

The sha256 covers the *uncompressed* payload, so it vouches for what the domain
decodes whatever the compressor did; the header has its own CRC-32 because the
header is read alone (``list``) and a flipped bit there would otherwise pass as a
plausible seq or schema. Names are ``snapshot-<version:08d>-<seq>.tcsnap``.

Design note. One writer (the leader) and any number of readers (``tc snapshot``):
a snapshot is written to ``<name>.tmp``, fsynced, renamed, and the directory
fsynced, so readers see a whole file or none; ``*.tmp`` left by a crash is ignored
and removed by the next write. Version numbers count up from 1 and never repeat:
the next one is above every name in the directory *and* in ``quarantine/``. A bad
snapshot is moved to ``quarantine/`` with ``<name>.reason.txt`` next to it, never
deleted; only retention deletes, and only readable snapshots its policy drops.
Checking that ``schema`` is supported is ours; decoding and migrating the payload
is the domain's (``load_newest_valid``'s ``validate`` callback).
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import io
import os
import re
import struct
import zlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zstandard

from trafficcontrol.errors import StoreError

MAGIC = b"TCSNAP1\n"
_PREFIX = struct.Struct(">II")
_HEAD = len(MAGIC) + _PREFIX.size
_MAX_HEADER = 64 * 1024  # a real header is ~300 bytes; more means garbage, not a header
_NAME = re.compile(r"snapshot-(\d+)-(\d+)\.tcsnap")
_ZSTD_LEVEL = 3


class CorruptSnapshotError(StoreError):
    """A snapshot file failed validation; the message names the file and the fault."""

    retryable = False

    def __init__(self, path: Path, fault: str, *, shown: str) -> None:
        super().__init__(f"{shown}: {fault}")
        self.path = path
        self.fault = fault


class SnapshotNotFoundError(StoreError):
    """No snapshot with the requested version in the snapshot directory."""

    retryable = False


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What a snapshot's header and directory entry say about it."""

    version: int
    """Snapshot number, 1, 2, 3, …; never reused (what ``tc snapshot rollback`` takes)."""
    schema: int
    """Schema version of the payload."""
    seq: int
    """Journal sequence number the snapshot covers (replay resumes after it)."""
    created_at: float
    """When it was written, epoch seconds."""
    instance: str
    """The orchestrator instance that wrote it."""
    size: int
    """Bytes on disk."""
    path: Path
    """Where the file is."""
    payload_sha256: str
    """Hex sha256 of the uncompressed payload."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A directory entry: ``meta`` when its header reads, else ``problem`` says why not."""

    version: int
    """From the file name, so unreadable files still sort and can be named."""
    path: Path
    """Where the file is."""
    meta: SnapshotMeta | None
    """Header contents, or None when the header cannot be read."""
    problem: str | None
    """What is wrong with the header or the file length, or None."""


@dataclass(frozen=True, slots=True)
class Problem:
    """A bad snapshot: which file, what is wrong."""

    path: Path
    """The file."""
    fault: str
    """What is wrong with it."""
    message: str
    """File and fault in one line, for people."""

    def __str__(self) -> str:
        return self.message


@dataclass(slots=True)
class LoadResult:
    """Outcome of ``load_newest_valid``."""

    found: tuple[SnapshotMeta, bytes] | None
    """The newest valid snapshot and its payload, or None (replay the whole journal)."""
    quarantined: list[tuple[Path, str]] = field(default_factory=list)
    """Each snapshot moved aside on the way: where it went and why."""


class _Header(msgspec.Struct, forbid_unknown_fields=True):
    schema: int
    seq: int
    version: int
    created_at: float
    instance: str
    payload_sha256: str
    payload_len: int
    compressed_len: int


class _Fault(Exception):
    """Internal: one validation fault, turned into a CorruptSnapshotError with the path."""


_header_decoder = msgspec.json.Decoder(_Header)


class SnapshotStore:
    def __init__(
        self,
        root: Path,
        *,
        keep_last: int = 12,
        keep_daily_days: int = 7,
        supported_schemas: Collection[int],
    ) -> None:
        if keep_last < 1:
            # keep_last >= 1 is what guarantees the snapshot just written survives retention
            raise ValueError(f"keep_last must be at least 1, not {keep_last}")
        self.root = root
        self.quarantine_dir = root / "quarantine"
        self.keep_last = keep_last
        self.keep_daily_days = keep_daily_days
        self.supported_schemas = frozenset(supported_schemas)

    # -- writing -------------------------------------------------------------------
    def write(
        self, payload: bytes, *, schema: int, seq: int, instance: str, now: float
    ) -> SnapshotMeta:
        """Write a snapshot atomically, then apply retention. Blocking."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_temp_files()
            version = self._next_version()
            data = _encode(
                payload, schema=schema, seq=seq, version=version, now=now, instance=instance
            )
            path = self.root / f"snapshot-{version:08d}-{seq}.tcsnap"
            _write_atomically(path, data)
            self._apply_retention(now)
        except OSError as exc:
            raise StoreError(f"{self._shown(self.root)}: cannot write a snapshot: {exc}") from exc
        return SnapshotMeta(
            version=version,
            schema=schema,
            seq=seq,
            created_at=now,
            instance=instance,
            size=len(data),
            path=path,
            payload_sha256=hashlib.sha256(payload).hexdigest(),
        )

    def _remove_temp_files(self) -> None:
        for tmp in self.root.glob("*.tmp"):
            tmp.unlink(missing_ok=True)

    def _next_version(self) -> int:
        names = [p.name for p in self.root.iterdir()]
        if self.quarantine_dir.is_dir():
            names += [p.name for p in self.quarantine_dir.iterdir()]
        # match() rather than fullmatch(): quarantined copies may carry a ".N" suffix
        versions = [int(m.group(1)) for n in names if (m := _NAME.match(n))]
        return max(versions, default=0) + 1

    def _apply_retention(self, now: float) -> None:
        metas = [i.meta for i in self.list() if i.meta is not None]
        keep = retained_versions(
            metas, now=now, keep_last=self.keep_last, keep_daily_days=self.keep_daily_days
        )
        for meta in metas:
            if meta.version not in keep:
                meta.path.unlink(missing_ok=True)

    # -- reading -------------------------------------------------------------------
    def list(self) -> builtins.list[SnapshotInfo]:
        """Every snapshot in the directory, by version, from headers only."""
        if not self.root.is_dir():
            return []
        infos = []
        for path in self.root.iterdir():
            if (m := _NAME.fullmatch(path.name)) is None or not path.is_file():
                continue
            try:
                meta, problem = _read_meta(path), None
            except _Fault as fault:
                meta, problem = None, str(fault)
            except FileNotFoundError:
                continue  # removed by retention since iterdir()
            infos.append(SnapshotInfo(int(m.group(1)), path, meta, problem))
        return sorted(infos, key=lambda i: i.version)

    def read(self, version: int) -> tuple[SnapshotMeta, bytes]:
        """The snapshot and its payload, fully validated; raises CorruptSnapshotError."""
        path = self._path_of(version)
        try:
            return _read_full(path, self.supported_schemas)
        except _Fault as fault:
            raise CorruptSnapshotError(path, str(fault), shown=self._shown(path)) from None
        except FileNotFoundError as exc:
            raise SnapshotNotFoundError(f"no snapshot version {version}") from exc
        except OSError as exc:
            raise StoreError(f"{self._shown(path)}: cannot read: {exc}") from exc

    def _path_of(self, version: int) -> Path:
        # by name only: reading every header to find one file would be wasted I/O
        for path in self.root.glob("snapshot-*.tcsnap"):
            if (m := _NAME.fullmatch(path.name)) and int(m.group(1)) == version:
                return path
        raise SnapshotNotFoundError(f"no snapshot version {version} in {self.root}")

    def verify(self, version: int | None = None) -> builtins.list[Problem]:
        """Fully validate every snapshot, or one; each bad file and its fault."""
        versions = [i.version for i in self.list()] if version is None else [version]
        problems = []
        for v in versions:
            try:
                self.read(v)
            except CorruptSnapshotError as exc:
                problems.append(Problem(exc.path, exc.fault, exc.message))
            except SnapshotNotFoundError:
                if version is not None:
                    raise
                # else retention removed it between list() and read(): not a fault
        return problems

    def load_newest_valid(
        self, validate: Callable[[SnapshotMeta, bytes], None] | None = None
    ) -> LoadResult:
        """The newest snapshot that validates (and passes ``validate``); bad ones quarantined.

        ``validate`` is the domain's decode: it raises CorruptSnapshotError or
        ValueError when the payload does not decode for its schema.
        """
        result = LoadResult(found=None)
        for info in reversed(self.list()):
            try:
                meta, payload = self.read(info.version)
                if validate is not None:
                    validate(meta, payload)
            except SnapshotNotFoundError:
                continue
            except CorruptSnapshotError as exc:
                result.quarantined.append((self.quarantine(info.path, exc.message), exc.message))
                continue
            except ValueError as exc:
                reason = f"{self._shown(info.path)}: payload does not decode: {exc}"
                result.quarantined.append((self.quarantine(info.path, reason), reason))
                continue
            result.found = (meta, payload)
            break
        return result

    # -- quarantine ----------------------------------------------------------------
    def quarantine(self, path: Path, reason: str) -> Path:
        """Move ``path`` into ``quarantine/`` with ``<name>.reason.txt``; never deletes."""
        try:
            self.quarantine_dir.mkdir(parents=True, exist_ok=True)
            target = _free_path(self.quarantine_dir, path.name)
            path.replace(target)
            target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
            _fsync_dir(self.quarantine_dir)
            _fsync_dir(path.parent)
        except OSError as exc:
            raise StoreError(f"{self._shown(path)}: cannot quarantine: {exc}") from exc
        return target

    def _shown(self, path: Path) -> str:
        """How messages name a file: relative to the home (``snapshots/…``)."""
        try:
            return str(path.relative_to(self.root.parent))
        except ValueError:
            return str(path)


def retained_versions(
    metas: Iterable[SnapshotMeta], *, now: float, keep_last: int, keep_daily_days: int
) -> set[int]:
    """Versions retention keeps: the last ``keep_last``, plus the newest of each of the
    last ``keep_daily_days`` UTC days (today included) relative to ``now``."""
    ordered = sorted(metas, key=lambda m: m.version)
    keep = {m.version for m in ordered[-keep_last:]}
    today = _utc_day(now)
    newest_of_day: dict[dt.date, int] = {}
    for meta in ordered:
        newest_of_day[_utc_day(meta.created_at)] = meta.version  # ascending: last one wins
    # clock skew can put a day after today; (today - day) is then negative and kept
    keep |= {v for day, v in newest_of_day.items() if (today - day).days < keep_daily_days}
    return keep


def _utc_day(t: float) -> dt.date:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).date()


# -- encoding and validation ---------------------------------------------------------
def _encode(
    payload: bytes, *, schema: int, seq: int, version: int, now: float, instance: str
) -> bytes:
    compressed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(payload)
    header = msgspec.json.encode(
        _Header(
            schema=schema,
            seq=seq,
            version=version,
            created_at=now,
            instance=instance,
            payload_sha256=hashlib.sha256(payload).hexdigest(),
            payload_len=len(payload),
            compressed_len=len(compressed),
        )
    )
    return MAGIC + _PREFIX.pack(len(header), zlib.crc32(header)) + header + compressed


def _read_meta(path: Path) -> SnapshotMeta:
    """Header and file length checks, without reading the payload."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(_HEAD)
        header_len = _check_prefix(head, size)
        header = _check_header(path, head, f.read(header_len), header_len)
    _check_length(size, header_len, header)
    return _meta(path, header, size)


def _read_full(path: Path, supported: frozenset[int]) -> tuple[SnapshotMeta, bytes]:
    data = path.read_bytes()
    header_len = _check_prefix(data[:_HEAD], len(data))
    header = _check_header(path, data[:_HEAD], data[_HEAD : _HEAD + header_len], header_len)
    _check_length(len(data), header_len, header)
    payload = _decompress(data[_HEAD + header_len :], header.payload_len)
    digest = hashlib.sha256(payload).hexdigest()
    if digest != header.payload_sha256:
        raise _Fault(
            f"checksum mismatch (payload sha256 {digest} != header {header.payload_sha256})"
        )
    if header.schema not in supported:
        listed = ", ".join(str(s) for s in sorted(supported))
        raise _Fault(f"unknown schema {header.schema} (supported: {listed})")
    return _meta(path, header, len(data)), payload


def _check_prefix(head: bytes, size: int) -> int:
    if size == 0:
        raise _Fault("empty file (0 bytes)")
    magic = head[: len(MAGIC)]
    if magic != MAGIC:
        if MAGIC.startswith(magic):
            raise _Fault(f"truncated in the magic line ({size} bytes)")
        raise _Fault(f"wrong magic {magic!r} (not a TrafficControl snapshot)")
    if len(head) < _HEAD:
        raise _Fault(f"truncated in the header length prefix ({size} bytes)")
    header_len: int = _PREFIX.unpack_from(head, len(MAGIC))[0]
    if header_len > _MAX_HEADER:
        raise _Fault(f"garbage header: length {header_len} exceeds {_MAX_HEADER}")
    return header_len


def _check_header(path: Path, head: bytes, raw: bytes, header_len: int) -> _Header:
    if len(raw) < header_len:
        raise _Fault(f"truncated in the header ({len(raw)} of {header_len} bytes)")
    expected: int = _PREFIX.unpack_from(head, len(MAGIC))[1]
    crc = zlib.crc32(raw)
    if crc != expected:
        raise _Fault(f"header checksum mismatch (crc32 {crc:08x} != {expected:08x})")
    try:
        header = _header_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise _Fault(f"garbage header: {exc}") from None
    named = _NAME.fullmatch(path.name)
    if named and (int(named.group(1)), int(named.group(2))) != (header.version, header.seq):
        raise _Fault(
            f"header says version {header.version} seq {header.seq}, "
            f"file name says version {int(named.group(1))} seq {int(named.group(2))}"
        )
    return header


def _check_length(size: int, header_len: int, header: _Header) -> None:
    body = size - _HEAD - header_len
    if body < header.compressed_len:
        raise _Fault(f"truncated payload ({body} of {header.compressed_len} compressed bytes)")
    if body > header.compressed_len:
        raise _Fault(f"{body - header.compressed_len} unexpected bytes after the payload")


def _decompress(body: bytes, expected: int) -> bytes:
    # Bounded read: a corrupted frame header could claim any content size.
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as reader:
            while len(out) <= expected and (chunk := reader.read(expected + 1 - len(out))):
                out += chunk
    except zstandard.ZstdError as exc:
        raise _Fault(f"payload does not decompress: {exc}") from None
    if len(out) != expected:
        more = "more than " if len(out) > expected else ""
        raise _Fault(f"payload is {more}{len(out)} bytes, header says {expected}")
    return bytes(out)


def _meta(path: Path, header: _Header, size: int) -> SnapshotMeta:
    return SnapshotMeta(
        version=header.version,
        schema=header.schema,
        seq=header.seq,
        created_at=header.created_at,
        instance=header.instance,
        size=size,
        path=path,
        payload_sha256=header.payload_sha256,
    )


# -- file system ---------------------------------------------------------------------
def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # makes the rename itself durable


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_path(directory: Path, name: str) -> Path:
    """``directory/name``, or ``name.1``, ``name.2``, … so nothing is overwritten."""
    target, n = directory / name, 0
    while target.exists() or target.with_name(target.name + ".reason.txt").exists():
        n += 1
        target = directory / f"{name}.{n}"
    return target
