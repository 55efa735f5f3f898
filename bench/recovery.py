"""Recovery benchmark: restart time on a long journal, snapshot size, persistence overhead.

Run from the repository root::

    python -m bench.recovery            # the full run (about two minutes on 2 cores)
    python -m bench.recovery --quick    # a small run for smoke tests
    python -m bench.recovery --json     # the same numbers as one JSON object

Numbers are reported beside their goals and a floor measured in the same run, never
asserted: the exit code is 0 whatever they are. Durability is ``process`` (SQLite WAL,
synchronous=NORMAL).

(a) Recovery: a journal of 1,000,000 events over 10,000 tasks, written straight
    through ``SqliteJournal.append`` in large batches: one ``BacklogSubmitted`` (via the
    real submit path), an ``OrchestratorStarted``, then two rounds of attempts per task
    at 20 at a time (dispatched, workspace, process, session, finished ``interrupted``,
    so every task is ready again at the end), each attempt padded with cheap field
    updates (workspace / process / session events) up to the event count. Every event
    is folded as it is generated, so the journal is known to fold. The journal ends
    without ``OrchestratorStopped`` (a crash) or, in a copy, with it (a clean stop).
    Each case runs in a fresh child process on its own copy of the home (page cache
    warm): ``App.start()`` (recovery) + ``check_backends`` + the orchestrator's loop
    until its first ``AttemptDispatched`` is committed. Reported: from ``exec`` of the
    child (interpreter and imports included) and from ``App.start()``. Floors: a bare
    SQLite scan of all rows (``SELECT seq, body``), and a child that only imports the
    same modules and exits.
(b) Snapshot of that state (10,000 tasks with seeded prose of realistic length: ~40
    character titles, ~400 character prompts; 20,000 attempts): encoded size, file size
    (zstd), encode time (on the loop) and write time (compress, sha256, write, fsync,
    rename; in a thread), restore time. Floors: the titles and prompts alone, zstd
    compressed the same way (no snapshot that holds them can be smaller), and writing
    and fsyncing the file's number of bytes to a plain file.
(c) Persistence overhead: 1,000 sim tasks of exactly 1 s at 20 agents (~50 s wall),
    then again with durations jittered +-50% (so finishes no longer arrive in perfect
    groups of 20 and group commit batches less; ``--no-jitter-run`` skips it),
    snapshots every 5 s (60x the default rate, so the number is an upper bound). The
    journal's ``append`` and the snapshot store's ``write`` are wrapped (here, not in
    src/), and so is ``snapshot.encode``; their time is divided by the agents' wall time
    (sum of attempt durations). Request polling (``take_requests`` every
    ``request_poll_s``) is journal I/O too and is shown beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import zstandard

from trafficcontrol.adapters.agents.sim import SimBackend
from trafficcontrol.adapters.stores.snapshot_files import SnapshotStore
from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.decide import attempt_id_for
from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AgentSessionStarted,
    AnyEvent,
    AttemptDispatched,
    AttemptFinished,
    OrchestratorStarted,
    OrchestratorStopped,
    WorkspacePrepared,
)
from trafficcontrol.domain.model import (
    AgentSettings,
    AttemptId,
    Outcome,
    ProjectId,
    ProjectSpec,
    SimSettings,
    TaskId,
    TaskSpec,
    TaskState,
)
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.domain.state import State, apply
from trafficcontrol.ports import AgentBackend, Fence
from trafficcontrol.settings import RunSettings, Settings

GOAL_RECOVERY_S = 1.0
GOAL_SNAPSHOT_MB = 2.0
GOAL_OVERHEAD = 0.005

PROJECT = ProjectId("bench")
DURABILITY: Final[Literal["process"]] = "process"
ATTEMPTS_PER_TASK = 2
CONCURRENCY = 20
BATCH = 50_000
_REPO_ROOT = Path(__file__).resolve().parents[1]


class BenchApp(App):
    """The real composition root with only the sim backend, writing no agent logs."""

    def backends(self) -> dict[str, AgentBackend]:
        return {"sim": SimBackend(clock=self.clock, seed=self.settings.sim.seed, write_logs=False)}


def make_app(home: Path, **run: Any) -> BenchApp:
    settings = Settings(run=RunSettings(durability=DURABILITY, **run))
    return BenchApp(Home(home), environ=os.environ, settings=settings)


def project_spec(path: Path, duration_s: float, jitter: float = 0.0) -> ProjectSpec:
    path.mkdir(parents=True, exist_ok=True)
    return ProjectSpec(
        id=PROJECT,
        path=str(path),
        agent="sim",
        lock_in_place=False,
        settings=AgentSettings(sim=SimSettings(duration_s=duration_s, jitter=jitter)),
    )


def tasks_of(n: int, seed: int = 1) -> list[TaskSpec]:
    """Tasks with seeded prose of realistic length (titles ~40, prompts ~400 characters),
    so snapshot compression is not flattered by identical strings."""
    rng = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    vocabulary = [
        "".join(rng.choices(letters, weights=range(26, 0, -1), k=rng.randint(2, 10)))
        for _ in range(2_000)
    ]

    def prose(words: int) -> str:
        return " ".join(rng.choices(vocabulary, k=words)).capitalize() + "."

    return [
        TaskSpec(id=TaskId(f"t{i:06d}"), project=PROJECT, title=prose(6), prompt=prose(65))
        for i in range(n)
    ]


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"  .. {message}", file=sys.stderr, flush=True)


# -- (a) building the journal ---------------------------------------------------------------
def build_journal(root: Path, n_tasks: int, n_events: int, quiet: bool) -> dict[str, Any]:
    """The home described in the module notes; returns what was built and the state."""
    home = root / "home"
    app = make_app(home)
    start = time.perf_counter()
    result = app.request(
        SubmitRequest(
            source="bench", projects=[project_spec(root / "proj", 3600.0)], tasks=tasks_of(n_tasks)
        ),
        wait_s=600,
    )
    if not result.ok:
        raise SystemExit(f"bench submission refused: {result.message} {result.details[:5]}")
    submit_s = time.perf_counter() - start
    journal = app.journal()
    state = State()
    for _seq, event in journal.read():
        apply(state, event)

    start = time.perf_counter()
    attempts = n_tasks * ATTEMPTS_PER_TASK
    base_events = 5 * attempts + 2  # + BacklogSubmitted + OrchestratorStarted
    padding, extra = divmod(max(0, n_events - base_events), attempts)
    at = time.time() - 86_400.0
    batch: list[AnyEvent] = []

    def emit(event: AnyEvent) -> None:
        apply(state, event)
        batch.append(event)
        if len(batch) >= BATCH:
            journal.append(batch)
            batch.clear()

    emit(OrchestratorStarted(at=at, instance="bench:1:build", pid=1, previous_clean=True))
    ids = sorted(state.tasks)
    workdir = str(root / "proj")
    made = 0
    for no in range(1, ATTEMPTS_PER_TASK + 1):
        for lo in range(0, n_tasks, CONCURRENCY):
            chunk = ids[lo : lo + CONCURRENCY]
            at += 1.0
            for tid in chunk:
                emit(
                    AttemptDispatched(
                        at=at,
                        attempt_id=attempt_id_for(tid, no),
                        task_id=tid,
                        attempt_no=no,
                        backend="sim",
                        model=None,
                        resources=(),
                        deadline=None,
                        log_path=f"{home}/logs/{tid}/{no}.log",
                    )
                )
            for tid in chunk:
                aid = attempt_id_for(tid, no)
                pad = padding + (1 if made < extra else 0)
                made += 1
                for k in range(3 + pad):
                    emit(_update(k % 3, aid, at, workdir))
            at += 1.0
            for tid in chunk:
                emit(
                    AttemptFinished(
                        at=at,
                        attempt_id=attempt_id_for(tid, no),
                        outcome=Outcome.INTERRUPTED,
                        error="bench: interrupted",
                    )
                )
        _log(quiet, f"    round {no}/{ATTEMPTS_PER_TASK}: journal at seq {state.seq:,}")
    if batch:
        journal.append(batch)
    build_s = time.perf_counter() - start
    assert state.seq == journal.last_seq()
    assert state.counts[TaskState.READY] == n_tasks and not state.running
    app.close()
    size = sum(p.stat().st_size for p in home.glob("journal.db*"))
    return {
        "home": home,
        "state": state,
        "events": state.seq,
        "tasks": n_tasks,
        "attempts": len(state.attempts),
        "padding_per_attempt": padding,
        "submit_s": submit_s,
        "build_s": build_s,
        "journal_mb": size / 1e6,
    }


def _update(kind: int, aid: AttemptId, at: float, workdir: str) -> AnyEvent:
    """A cheap event that only sets fields of a running attempt."""
    if kind == 0:
        return WorkspacePrepared(at=at, attempt_id=aid, path=workdir)
    if kind == 1:
        return AgentProcessStarted(at=at, attempt_id=aid, pid=4242, pgid=4242, create_time=at)
    return AgentSessionStarted(at=at, attempt_id=aid, session_id=str(uuid.uuid4()))


def bare_scan(home: Path) -> dict[str, float]:
    """Floor of a full replay: read every row's (seq, body) with sqlite3, nothing else."""
    db = sqlite3.connect(home / "journal.db")
    start = time.perf_counter()
    rows = 0
    for _row in db.execute("SELECT seq, body FROM events ORDER BY seq"):
        rows += 1
    elapsed = time.perf_counter() - start
    db.close()
    return {"rows": rows, "seconds": elapsed}


# -- (a) measuring, in a child process ----------------------------------------------------
def child_measure(home: Path, spawned_at: float) -> dict[str, Any]:
    """App.start() + check_backends + the loop until its first dispatch is committed."""
    entered = time.time()
    app = make_app(home)
    journal = app.journal()
    original = journal.append
    out: dict[str, Any] = {"entered_s": entered - spawned_at}

    def append(events: Sequence[AnyEvent], fence: Fence | None = None) -> int:
        last = original(events, fence)
        if any(isinstance(e, AttemptDispatched) for e in events):
            now = time.time()
            out["dispatched"] = sum(isinstance(e, AttemptDispatched) for e in events)
            out["from_exec_s"] = now - spawned_at
            out["from_start_s"] = now - started
            print(json.dumps(out), flush=True)
            os._exit(0)  # measured; what follows (agents, shutdown) is not
        return last

    journal.append = append  # type: ignore[method-assign]
    started = time.time()
    recovered = app.recover()
    out["recover_s"] = time.time() - started
    out["snapshot_version"] = recovered.snapshot.version if recovered.snapshot else None
    out["tail_events"] = recovered.tail
    out["notes"] = recovered.notes
    orchestrator = app.orchestrator()
    orchestrator.recover(recovered.state)
    orchestrator.check_backends()
    out["start_s"] = time.time() - started
    asyncio.run(orchestrator.run(until_idle=True))
    raise SystemExit("the orchestrator stopped without dispatching")


def child_bare(spawned_at: float) -> dict[str, Any]:
    return {"from_exec_s": time.time() - spawned_at}


def _spawn(kind: str, home: Path | None = None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.recovery", "--child", kind]
    if home is not None:
        argv += ["--home", str(home)]
    spawned_at = time.time()
    argv += ["--spawned-at", repr(spawned_at)]
    done = subprocess.run(argv, cwd=_REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench child {kind!r} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_recovery_cases(built: dict[str, Any], root: Path, quiet: bool) -> dict[str, Any]:
    master: Path = built["home"]
    cases: dict[str, Any] = {}
    for name, with_snapshot, clean in (
        ("snapshot_clean", True, True),
        ("snapshot_crash", True, False),
        ("replay_clean", False, True),
        ("replay_crash", False, False),
    ):
        _log(quiet, f"(a) recovery, {name.replace('_', ', ')}: child process")
        home = root / f"case-{name}"
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(master, home, ignore=None if with_snapshot else _no_snapshots)
        if clean:
            journal = SqliteJournal(home / "journal.db", durability=DURABILITY)
            journal.append([OrchestratorStopped(at=time.time(), instance="bench:1:build")])
            journal.close()
        cases[name] = _spawn("measure", home)
        shutil.rmtree(home, ignore_errors=True)
    return cases


def _no_snapshots(directory: str, names: list[str]) -> list[str]:
    return ["snapshots"] if "snapshots" in names else []


# -- (b) snapshot ---------------------------------------------------------------------------
def run_snapshot(built: dict[str, Any]) -> dict[str, Any]:
    state: State = built["state"]
    home: Path = built["home"]
    store = SnapshotStore(home / "snapshots", supported_schemas=[snapshot.SCHEMA])
    start = time.perf_counter()
    payload = snapshot.encode(state)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    meta = store.write(
        payload, schema=snapshot.SCHEMA, seq=state.seq, instance="bench", now=time.time()
    )
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    _meta, raw = store.read(meta.version)
    restored = snapshot.restore(snapshot.decode(raw))
    restore_s = time.perf_counter() - start
    assert snapshot.capture(restored) == snapshot.capture(state)
    # What no encoding of the state can go below: the users' own text, compressed alike.
    prose = msgspec.msgpack.encode([(t.spec.title, t.spec.prompt) for t in state.tasks.values()])
    prose_file = len(zstandard.ZstdCompressor(level=3).compress(prose))
    floor_path = home / "floor.bin"
    start = time.perf_counter()
    fd = os.open(floor_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, os.urandom(meta.size))
        os.fsync(fd)
    finally:
        os.close(fd)
    floor_s = time.perf_counter() - start
    floor_path.unlink()
    return {
        "tasks": len(state.tasks),
        "attempts": len(state.attempts),
        "payload_mb": len(payload) / 1e6,
        "prose_mb": len(prose) / 1e6,
        "prose_zstd_mb": prose_file / 1e6,
        "file_mb": meta.size / 1e6,
        "encode_s": encode_s,
        "write_s": write_s,
        "restore_s": restore_s,
        "floor_write_fsync_s": floor_s,
    }


# -- (c) persistence overhead ---------------------------------------------------------------
class _Timer:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.items = 0
        self._lock = threading.Lock()

    def wrap(self, fn: Callable[..., Any], size: Callable[..., int] | None = None) -> Any:
        def timed(*args: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                elapsed = time.perf_counter() - start
                with self._lock:
                    self.seconds += elapsed
                    self.calls += 1
                    self.items += size(*args, **kw) if size else 1

        return timed

    def as_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "calls": self.calls, "items": self.items}


class TimedSnapshotApp(BenchApp):
    """Hands the snapshotter a store whose ``write`` is timed."""

    write_timer: _Timer

    def snapshot_files(self) -> SnapshotStore:
        store = super().snapshot_files()
        store.write = self.write_timer.wrap(store.write)  # type: ignore[method-assign]
        return store


def run_overhead(
    n: int, concurrency: int, interval_s: float, jitter: float, root: Path
) -> dict[str, Any]:
    home = root / f"overhead-{jitter:g}"
    settings = Settings(
        run=RunSettings(
            durability=DURABILITY, max_agents=concurrency, snapshot_interval_s=interval_s
        )
    )
    app = TimedSnapshotApp(Home(home), environ=os.environ, settings=settings)
    append_t, write_t, encode_t, poll_t = _Timer(), _Timer(), _Timer(), _Timer()
    app.write_timer = write_t
    result = app.request(
        SubmitRequest(
            source="bench",
            projects=[project_spec(root / "proj-c", 1.0, jitter)],
            tasks=tasks_of(n),
        )
    )
    assert result.ok, result
    journal = app.journal()
    journal.append = append_t.wrap(  # type: ignore[method-assign]
        journal.append, lambda events, *a, **k: len(events)
    )
    journal.take_requests = poll_t.wrap(journal.take_requests)  # type: ignore[method-assign]
    original_encode = snapshot.encode
    snapshot.encode = encode_t.wrap(original_encode)  # the snapshotter calls it by module
    try:
        orchestrator, _notes = app.start()
        start = time.perf_counter()
        asyncio.run(orchestrator.run(until_idle=True))
        wall_s = time.perf_counter() - start
    finally:
        snapshot.encode = original_encode
    state = orchestrator.state
    app.close()
    agent_s = sum((a.ended_at or 0.0) - a.started_at for a in state.attempts.values() if a.ended_at)
    done = state.counts[TaskState.DONE]
    persistence_s = append_t.seconds + write_t.seconds + encode_t.seconds
    return {
        "tasks": n,
        "done": done,
        "concurrency": concurrency,
        "jitter": jitter,
        "snapshot_interval_s": interval_s,
        "wall_s": wall_s,
        "ideal_wall_s": n * 1.0 / concurrency,
        "agent_s": agent_s,
        "append": append_t.as_dict(),
        "snapshot_write": write_t.as_dict(),
        "snapshot_encode": encode_t.as_dict(),
        "request_poll": poll_t.as_dict(),
        "persistence_s": persistence_s,
        "share": persistence_s / agent_s if agent_s else float("nan"),
        "share_with_polling": (persistence_s + poll_t.seconds) / agent_s
        if agent_s
        else float("nan"),
    }


# -- report --------------------------------------------------------------------------------
def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(r: dict[str, Any]) -> str:
    j, cases, bare, scan, s, overheads = (
        r["journal"],
        r["recovery"],
        r["bare_child"],
        r["bare_scan"],
        r["snapshot"],
        r["overhead"],
    )
    rows = [("metric", "ours", "floor / ref", "goal", "")]
    for name, label in (
        ("snapshot_clean", "with snapshot, after a clean stop"),
        ("snapshot_crash", "with snapshot, after a crash"),
        ("replay_clean", "no snapshot (full replay), clean stop"),
        ("replay_crash", "no snapshot (full replay), after a crash"),
    ):
        case = cases[name]
        goal = name.startswith("snapshot")
        rows.append(
            (
                f"(a) start -> first dispatch, {label}",
                f"{case['from_exec_s']:.2f} s",
                f"{bare['from_exec_s']:.2f} s bare child",
                f"< {GOAL_RECOVERY_S:.0f} s" if goal else "",
                _verdict(case["from_exec_s"] < GOAL_RECOVERY_S) if goal else "",
            )
        )
        rows.append(
            (
                "      of which App.start() -> dispatch committed",
                f"{case['from_start_s']:.2f} s",
                f"{scan['seconds']:.2f} s bare scan" if not goal else "",
                "",
                "",
            )
        )
    rows += [
        (
            f"(b) snapshot file, {s['tasks']:,} tasks / {s['attempts']:,} attempts",
            f"{s['file_mb']:.2f} MB",
            f"{s['prose_zstd_mb']:.2f} MB prompts alone",
            f"< {GOAL_SNAPSHOT_MB:.0f} MB",
            _verdict(s["file_mb"] < GOAL_SNAPSHOT_MB),
        ),
        (
            "    snapshot encode (loop) + write (thread)",
            f"{s['encode_s'] * 1e3:.0f} + {s['write_s'] * 1e3:.0f} ms",
            f"{s['floor_write_fsync_s'] * 1e3:.0f} ms write+fsync",
            "",
            "",
        ),
    ]
    for c in overheads:
        rows += [
            (
                f"(c) persistence / agent time, {c['tasks']:,} x 1 s (jitter {c['jitter']:g})"
                f" at {c['concurrency']}",
                f"{c['share'] * 100:.3f} %",
                f"{c['share_with_polling'] * 100:.3f} % w/ polling",
                f"< {GOAL_OVERHEAD * 100:.1f} %",
                _verdict(c["share"] < GOAL_OVERHEAD),
            ),
            (
                "    run wall time",
                f"{c['wall_s']:.1f} s",
                f"{c['ideal_wall_s']:.1f} s ideal",
                "",
                "",
            ),
        ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "TrafficControl recovery bench [simulated agents], durability=process"
        " (SQLite WAL, synchronous=NORMAL)",
    ]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [
        "",
        f"(a) journal: {j['events']:,} events ({j['tasks']:,} tasks, {j['attempts']:,}"
        f" attempts, {j['padding_per_attempt']} padding updates each), {j['journal_mb']:.0f} MB;"
        f" built in {j['build_s']:.1f} s (submit {j['submit_s']:.2f} s);"
        f" bare scan of {scan['rows']:,} rows {scan['seconds']:.2f} s",
    ]
    for name, case in cases.items():
        lines.append(
            f"    {name}: exec->main {case['entered_s']:.2f} s, recover {case['recover_s']:.2f} s"
            f" (snapshot {case['snapshot_version']}, tail {case['tail_events']:,} events),"
            f" start {case['start_s']:.2f} s, {case['dispatched']} dispatched;"
            f" notes: {len(case['notes'])}"
        )
    lines.append(
        f"(b) encoded {s['payload_mb']:.2f} MB, of which titles + prompts {s['prose_mb']:.2f} MB"
        f" ({s['prose_zstd_mb']:.2f} MB with zstd alone); restore (read, decompress, decode,"
        f" rebuild) {s['restore_s'] * 1e3:.0f} ms"
    )
    lines += [
        f"(c) jitter {c['jitter']:g}: {c['done']:,} done; appends {c['append']['calls']:,} calls /"
        f" {c['append']['items']:,} events {c['append']['seconds']:.3f} s; snapshots"
        f" {c['snapshot_write']['calls']} x (encode {c['snapshot_encode']['seconds'] * 1e3:.1f}"
        f" ms + write {c['snapshot_write']['seconds'] * 1e3:.1f} ms in all, every"
        f" {c['snapshot_interval_s']:g} s); request polls {c['request_poll']['calls']:,}"
        f" {c['request_poll']['seconds']:.3f} s; agent time {c['agent_s']:,.0f} s"
        for c in overheads
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.recovery",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=None, help="journal events [1000000]")
    parser.add_argument("--tasks", type=int, default=None, help="tasks in (a)/(b) [10000]")
    parser.add_argument("--overhead-tasks", type=int, default=None, help="tasks in (c) [1000]")
    parser.add_argument("--concurrency", type=int, default=20, help="agents in (c) [20]")
    parser.add_argument("--snapshot-interval", type=float, default=5.0, help="(c) [5 s]")
    parser.add_argument(
        "--no-jitter-run",
        action="store_true",
        help="skip the second (c) run with duration jitter 0.5 (saves ~50 s)",
    )
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the state homes go")
    parser.add_argument("--quick", action="store_true", help="100,000 events, 1,000 tasks")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--child", choices=["measure", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "measure":
        child_measure(args.home, args.spawned_at)
        return 1
    if args.child == "bare":
        print(json.dumps(child_bare(args.spawned_at)))
        return 0

    n_events = args.events or (100_000 if args.quick else 1_000_000)
    n_tasks = args.tasks or (1_000 if args.quick else 10_000)
    n_overhead = args.overhead_tasks or (100 if args.quick else 1_000)
    quiet = args.json
    if args.tmpdir is not None:
        args.tmpdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tc-bench-recovery-", dir=args.tmpdir) as tmp:
        root = Path(tmp)
        _log(quiet, f"(a) building a {n_events:,}-event journal over {n_tasks:,} tasks")
        built = build_journal(root, n_tasks, n_events, quiet)
        _log(quiet, "(b) snapshot of that state")
        snap = run_snapshot(built)
        scan = bare_scan(built["home"])
        bare = _spawn("bare")
        cases = run_recovery_cases(built, root, quiet)
        overhead = []
        for jitter in (0.0, *([] if args.no_jitter_run else [0.5])):
            _log(
                quiet,
                f"(c) persistence overhead: {n_overhead:,} x 1 s (jitter {jitter:g})"
                f" at {args.concurrency}",
            )
            overhead.append(
                run_overhead(n_overhead, args.concurrency, args.snapshot_interval, jitter, root)
            )
    journal_facts = {k: v for k, v in built.items() if k not in ("home", "state")}
    result = {
        "journal": journal_facts,
        "bare_scan": scan,
        "bare_child": bare,
        "recovery": cases,
        "snapshot": snap,
        "overhead": overhead,
        "goals": {
            "recovery_s": GOAL_RECOVERY_S,
            "snapshot_mb": GOAL_SNAPSHOT_MB,
            "overhead_share": GOAL_OVERHEAD,
        },
    }
    result["pass"] = {
        "recovery_with_snapshot_clean": cases["snapshot_clean"]["from_exec_s"] < GOAL_RECOVERY_S,
        "recovery_with_snapshot_crash": cases["snapshot_crash"]["from_exec_s"] < GOAL_RECOVERY_S,
        "snapshot_mb": snap["file_mb"] < GOAL_SNAPSHOT_MB,
        "overhead_share": all(c["share"] < GOAL_OVERHEAD for c in overhead),
    }
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
