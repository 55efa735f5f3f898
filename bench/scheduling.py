"""Scheduling benchmark: durable throughput, dispatch latency and memory, each beside a floor.

Run from the repository root::

    python -m bench.scheduling            # the full run (about a minute on 2 cores)
    python -m bench.scheduling --quick    # a small run for smoke tests
    python -m bench.scheduling --json     # the same numbers as one JSON object

Every agent is the ``sim`` backend as a no-op (duration 0, no log files), so what is
measured is the orchestrator itself: decide, journal (SQLite, WAL, synchronous=NORMAL),
fold, the agent pool and the event loop. Each measurement runs in a fresh temporary
state home. Numbers are reported, never asserted: the exit code is 0 whatever they are.

(a) Throughput: a seeded DAG (each task depends on 0-3 random earlier tasks) run at
    ``--concurrency`` agents; tasks/s from the first dispatch to the last finish, read
    from the journal's timestamps (submission excluded). Afterwards the journal is
    folded again into a fresh ``State``: every task must be done, with exactly one
    attempt dispatched and finished. The floor is a plain loop that writes one SQLite
    row per state transition, with one commit per row and the same durability
    settings, for as many transitions per task as run (a) journaled.
(b) Dispatch latency: ready -> agent started (``AgentPool.latencies``), measured on
    independent chains narrower than the agent limit, so a ready task never waits for
    a free slot and the number is the loop's own overhead (group commit of the finish,
    decide, group commit of the dispatch, agent task start). Run (a) saturates its
    slots, so its ready -> started times are mostly queueing; they are shown for
    information only.
(c) Memory: in separate processes (clean RSS), one submits ``--queued`` tasks and one
    recovers them into an orchestrator's state (queued, not run); peak RSS of each,
    beside a process that only imported the same modules.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import math
import os
import pstats
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

from trafficcontrol.adapters.agents.sim import SimBackend
from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.domain.events import (
    AttemptDispatched,
    AttemptFinished,
    BacklogSubmitted,
    OrchestratorStarted,
    OrchestratorStopped,
)
from trafficcontrol.domain.model import (
    AgentSettings,
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
from trafficcontrol.ports import AgentBackend
from trafficcontrol.settings import RunSettings, Settings

GOAL_TASKS_PER_S = 5_000.0
GOAL_FLOOR_RATIO = 0.5
GOAL_P99_MS = 10.0
GOAL_RSS_MB = 300.0

PROJECT = ProjectId("bench")
DURABILITY: Final[Literal["process"]] = "process"
_ORCHESTRATOR_EVENTS = (BacklogSubmitted, OrchestratorStarted, OrchestratorStopped)
_REPO_ROOT = Path(__file__).resolve().parents[1]


# -- workload ---------------------------------------------------------------------
class BenchApp(App):
    """The real composition root, with the sim backend as a no-op that writes no logs."""

    def backends(self) -> dict[str, AgentBackend]:
        return {"sim": SimBackend(clock=self.clock, seed=self.settings.sim.seed, write_logs=False)}


def make_app(home: Path, concurrency: int) -> BenchApp:
    settings = Settings(run=RunSettings(max_agents=concurrency, durability=DURABILITY))
    return BenchApp(Home(home), environ=os.environ, settings=settings)


def project_spec(path: Path) -> ProjectSpec:
    return ProjectSpec(
        id=PROJECT,
        path=str(path),
        agent="sim",
        lock_in_place=False,  # else every task would lock the one project: no parallelism
        max_attempts=1,
        settings=AgentSettings(sim=SimSettings(duration_s=0.0, jitter=0.0, tokens_in=1000)),
    )


def _task(task_id: str, deps: Sequence[str]) -> TaskSpec:
    return TaskSpec(
        id=TaskId(task_id),
        project=PROJECT,
        title=f"bench task {task_id}",
        prompt="no-op",
        depends_on=tuple(TaskId(d) for d in deps),
    )


def dag_tasks(n: int, seed: int) -> list[TaskSpec]:
    """n tasks; each depends on 0-3 distinct random earlier tasks (seeded)."""
    rng = random.Random(seed)
    ids = [f"t{i:06d}" for i in range(n)]
    tasks = []
    for i, task_id in enumerate(ids):
        k = min(i, rng.randint(0, 3))
        deps = sorted(ids[j] for j in rng.sample(range(i), k)) if k else []
        tasks.append(_task(task_id, deps))
    return tasks


def chain_tasks(chains: int, n: int) -> list[TaskSpec]:
    """``chains`` independent chains, n tasks in all; at most ``chains`` are ready at once."""
    length = max(1, n // chains)
    return [
        _task(f"c{c:03d}-{j:05d}", [f"c{c:03d}-{j - 1:05d}"] if j else [])
        for j in range(length)
        for c in range(chains)
    ]


def submit(app: App, root: Path, tasks: list[TaskSpec]) -> float:
    """Submit through the real request path; returns the seconds it took."""
    start = time.perf_counter()
    result = app.request(
        SubmitRequest(source="bench", projects=[project_spec(root)], tasks=tasks), wait_s=600
    )
    if not result.ok:
        raise SystemExit(f"bench submission refused: {result.message} {result.details[:5]}")
    return time.perf_counter() - start


# -- helpers ------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def rss_mb() -> dict[str, float]:
    """Peak and current RSS of this process, in MiB.

    ``ru_maxrss`` survives ``execve``: a child started by fork+exec starts from its
    parent's RSS at the fork, so it is exact only when the parent is small (the bench
    runs (c) first for that reason). ``VmHWM`` (Linux) is the peak of this process's own
    address space, so it is the number compared with the goal when it is available.
    """
    out = {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) / 1024  # kB
    out["peak_rss_mb"] = out.get("VmHWM", out["ru_maxrss_mb"])
    return out


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"  .. {message}", file=sys.stderr, flush=True)


# -- (a) throughput ---------------------------------------------------------------------
def run_throughput(
    n: int, concurrency: int, seed: int, *, profile: Path | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tc-bench-a-") as tmp:
        root = Path(tmp)
        app = make_app(root / "state", concurrency)
        submit_s = submit(app, root, dag_tasks(n, seed))
        orch = app.orchestrator(record_latency=True)
        start = time.perf_counter()
        orch.recover()
        recover_s = time.perf_counter() - start
        profiler = cProfile.Profile() if profile else None
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        asyncio.run(orch.run(until_idle=True))
        if profiler is not None:
            profiler.disable()
        run_wall_s = time.perf_counter() - start
        latencies = list(orch.pool.latencies or [])
        app.close()
        if profiler is not None and profile is not None:
            profiler.dump_stats(profile)
        result = verify_journal(root / "state" / "journal.db", n)
    result.update(
        submit_s=submit_s,
        recover_s=recover_s,
        run_wall_s=run_wall_s,
        latency_p50_ms=percentile(latencies, 50) * 1e3,
        latency_p99_ms=percentile(latencies, 99) * 1e3,
    )
    return result


def verify_journal(path: Path, n: int) -> dict[str, Any]:
    """Fold the journal again into a fresh State and check every task is done exactly once."""
    journal = SqliteJournal(path, durability=DURABILITY)
    state = State()
    types: Counter[str] = Counter()
    first_dispatch = last_finish = None
    dispatched: Counter[str] = Counter()
    succeeded: Counter[str] = Counter()
    for _seq, event in journal.read():
        apply(state, event)
        types[str(type(event).__struct_config__.tag)] += 1
        if isinstance(event, AttemptDispatched):
            dispatched[event.task_id] += 1
            first_dispatch = event.at if first_dispatch is None else first_dispatch
        elif isinstance(event, AttemptFinished):
            last_finish = event.at
            if event.outcome is Outcome.SUCCEEDED:
                succeeded[event.attempt_id.rsplit("#", 1)[0]] += 1
    journal.close()
    problems = []
    if len(state.tasks) != n:
        problems.append(f"{len(state.tasks)} tasks in the journal, expected {n}")
    not_done = [t for t, r in state.tasks.items() if r.state is not TaskState.DONE]
    if not_done:
        problems.append(f"{len(not_done)} tasks not done, e.g. {not_done[:3]}")
    multi: list[str] = [t for t, r in state.tasks.items() if len(r.attempts) != 1]
    multi += [t for t, c in dispatched.items() if c != 1] + [
        t for t, c in succeeded.items() if c != 1
    ]
    if multi or len(dispatched) != n or len(succeeded) != n:
        problems.append(
            f"not exactly once: {len(dispatched)} dispatched, {len(succeeded)} succeeded,"
            f" {len(set(multi))} with other than one attempt"
        )
    total = sum(types.values())
    per_task_events = total - sum(types[str(e.__struct_config__.tag)] for e in _ORCHESTRATOR_EVENTS)
    span = (last_finish or 0.0) - (first_dispatch or 0.0)
    return {
        "tasks": n,
        "journal_events": total,
        "transitions": per_task_events,
        "events_per_task": per_task_events / n,
        "event_types": dict(types),
        "span_s": span,
        "tasks_per_s": n / span if span > 0 else math.nan,
        "verified": not problems,
        "problems": problems,
    }


def run_floor(n: int, rows: int) -> dict[str, Any]:
    """A naive durable scheduler: one SQLite row and one commit per transition, nothing else."""
    with tempfile.TemporaryDirectory(prefix="tc-bench-floor-") as tmp:
        db = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE transitions (seq INTEGER PRIMARY KEY, task TEXT NOT NULL,"
            " state TEXT NOT NULL, at REAL NOT NULL)"
        )
        states = ("ready", "running", "started", "done")
        start = time.perf_counter()
        for i in range(rows):  # autocommit: each INSERT is its own transaction
            db.execute(
                "INSERT INTO transitions(task, state, at) VALUES (?, ?, ?)",
                (f"t{i % n:06d}", states[i % 4], time.time()),
            )
        elapsed = time.perf_counter() - start
        db.close()
    return {"rows": rows, "floor_s": elapsed, "floor_tasks_per_s": n / elapsed}


# -- (b) dispatch latency -----------------------------------------------------------
def run_latency(n: int, concurrency: int) -> dict[str, Any]:
    chains = max(1, concurrency // 2)
    with tempfile.TemporaryDirectory(prefix="tc-bench-b-") as tmp:
        root = Path(tmp)
        app = make_app(root / "state", concurrency)
        tasks = chain_tasks(chains, n)
        submit(app, root, tasks)
        orch = app.orchestrator(record_latency=True)
        orch.recover()
        asyncio.run(orch.run(until_idle=True))
        app.close()
    # The chain heads were ready since submission, before the run: not dispatch latency.
    latencies = list(orch.pool.latencies or [])[chains:]
    return {
        "latency_tasks": len(tasks),
        "latency_chains": chains,
        "samples": len(latencies),
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": max(latencies, default=math.nan) * 1e3,
    }


# -- (c) memory, in child processes ---------------------------------------------------
def child(kind: str, home: Path, queued: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if kind == "submit":
        app = make_app(home / "state", 50)
        out["seconds"] = submit(app, home, dag_tasks(queued, seed))
        app.close()
    elif kind == "recover":
        app = make_app(home / "state", 50)
        orch = app.orchestrator()
        start = time.perf_counter()
        state = orch.recover()
        out["seconds"] = time.perf_counter() - start
        out["tasks"] = len(state.tasks)
        out["ready"] = state.counts[TaskState.READY]
        out["pending"] = state.counts[TaskState.PENDING]
        app.close()
    out.update(rss_mb())
    return out


def _spawn(kind: str, home: Path, queued: int, seed: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.scheduling", "--child", kind, "--home", str(home)]
    argv += ["--queued", str(queued), "--seed", str(seed)]
    done = subprocess.run(argv, cwd=_REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench child {kind!r} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_memory(queued: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tc-bench-c-") as tmp:
        home = Path(tmp)
        return {
            "queued": queued,
            "bare": _spawn("bare", home, queued, seed),
            "submit": _spawn("submit", home, queued, seed),
            "recover": _spawn("recover", home, queued, seed),
        }


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r[key])
    return dict(ordered[(len(ordered) - 1) // 2])


# -- report --------------------------------------------------------------------------
def _spread(values: list[float]) -> str:
    return "/".join(f"{v:,.0f}" for v in values)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(r: dict[str, Any]) -> str:
    a, f, b, m = r["throughput"], r["floor"], r["latency"], r["memory"]
    ratio = r["ratio"]
    rows = [
        ("metric", "ours", "floor / ref", "goal", ""),
        (
            f"(a) throughput, {a['tasks']:,} DAG tasks, {r['concurrency']} agents",
            f"{a['tasks_per_s']:,.0f} tasks/s",
            f"{f['floor_tasks_per_s']:,.0f} tasks/s",
            f">= {GOAL_TASKS_PER_S:,.0f} tasks/s",
            _verdict(a["tasks_per_s"] >= GOAL_TASKS_PER_S),
        ),
        (
            "    ratio ours / floor",
            f"{ratio:.2f}x",
            "",
            f">= {GOAL_FLOOR_RATIO}x",
            _verdict(ratio >= GOAL_FLOOR_RATIO),
        ),
        (
            "    done exactly once (journal re-folded)",
            "yes" if a["verified"] else "NO",
            "",
            "all tasks",
            _verdict(a["verified"]),
        ),
        (
            f"(b) dispatch ready->started p50 ({b['samples']:,} samples)",
            f"{b['p50_ms']:.2f} ms",
            "",
            "",
            "",
        ),
        (
            "    dispatch ready->started p99",
            f"{b['p99_ms']:.2f} ms",
            "",
            f"< {GOAL_P99_MS:.0f} ms",
            _verdict(b["p99_ms"] < GOAL_P99_MS),
        ),
        (
            f"(c) peak RSS, recover {m['queued']:,} queued",
            f"{m['recover']['peak_rss_mb']:.0f} MB",
            f"{m['bare']['peak_rss_mb']:.0f} MB bare",
            f"< {GOAL_RSS_MB:.0f} MB",
            _verdict(m["recover"]["peak_rss_mb"] < GOAL_RSS_MB),
        ),
        (
            f"    peak RSS, submit {m['queued']:,} tasks",
            f"{m['submit']['peak_rss_mb']:.0f} MB",
            f"{m['bare']['peak_rss_mb']:.0f} MB bare",
            f"< {GOAL_RSS_MB:.0f} MB",
            _verdict(m["submit"]["peak_rss_mb"] < GOAL_RSS_MB),
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "TrafficControl scheduling bench [simulated no-op agents], durability=process"
        " (SQLite WAL, synchronous=NORMAL)",
    ]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    rec = m["recover"]
    lines += [
        "",
        f"(a) {a['journal_events']:,} journal events, {a['events_per_task']:.2f} per task"
        f" {a['event_types']}; first dispatch -> last finish {a['span_s']:.2f} s;"
        f" run() wall {a['run_wall_s']:.2f} s; submit {a['submit_s']:.2f} s;"
        f" recover {a['recover_s']:.2f} s",
        f"    medians of {r['repeat']} runs; ours {_spread(a['samples_tasks_per_s'])},"
        f" floor {_spread(f['samples_tasks_per_s'])} tasks/s",
        f"    floor: {f['rows']:,} rows, one commit each, in {f['floor_s']:.2f} s"
        f" ({f['rows'] / f['floor_s']:,.0f} commits/s)",
        f"    (info) ready->started in (a), incl. waiting for a free slot:"
        f" p50 {a['latency_p50_ms']:.1f} ms, p99 {a['latency_p99_ms']:.1f} ms",
        f"(b) {b['latency_chains']} independent chains, {b['latency_tasks']:,} tasks,"
        f" {r['concurrency']} agents (never short of a slot); max {b['max_ms']:.2f} ms",
        f"(c) submit {m['submit']['seconds']:.2f} s; recover {rec['seconds']:.2f} s"
        f" ({rec['ready']:,} ready, {rec['pending']:,} pending); RSS after recover"
        f" {rec.get('VmRSS', math.nan):.0f} MB; ru_maxrss recover/submit/bare"
        f" {rec['ru_maxrss_mb']:.0f}/{m['submit']['ru_maxrss_mb']:.0f}"
        f"/{m['bare']['ru_maxrss_mb']:.0f} MB",
    ]
    for problem in a["problems"]:
        lines.append(f"    PROBLEM: {problem}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scheduling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=None, help="tasks in run (a) [10000]")
    parser.add_argument("--queued", type=int, default=None, help="queued tasks in (c) [100000]")
    parser.add_argument("--latency-tasks", type=int, default=None, help="tasks in (b) [3000]")
    parser.add_argument("--concurrency", type=int, default=50, help="max agents [50]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs of (a) and of the floor, interleaved; the medians are reported [5, quick 1]",
    )
    parser.add_argument(
        "--tmpdir",
        type=Path,
        default=None,
        help="where the temporary state homes go (default: the system temp dir)",
    )
    parser.add_argument("--quick", action="store_true", help="1,000 tasks, 10,000 queued")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run only (a) under cProfile, write the stats here and print the top entries",
    )
    parser.add_argument("--child", choices=["bare", "submit", "recover"], help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child, args.home, args.queued, args.seed)))
        return 0

    n = args.tasks or (1_000 if args.quick else 10_000)
    queued = args.queued or (10_000 if args.quick else 100_000)
    latency_n = args.latency_tasks or (500 if args.quick else 3_000)
    repeat = max(1, args.repeat or (1 if args.quick else 5))
    quiet = args.json
    if args.tmpdir is not None:
        args.tmpdir.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(args.tmpdir)

    if args.profile is not None:
        a = run_throughput(n, args.concurrency, args.seed, profile=args.profile)
        print(f"profiled run: {a['tasks_per_s']:,.0f} tasks/s (under cProfile, main thread only)")
        stats = pstats.Stats(str(args.profile))
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)
        return 0

    # (c) first, while this process is small: see rss_mb() on ru_maxrss and exec.
    _log(quiet, f"(c) memory: {queued:,} queued tasks, in child processes")
    m = run_memory(queued, args.seed)
    runs, floors = [], []
    for i in range(repeat):
        _log(quiet, f"(a) throughput {i + 1}/{repeat}: {n:,} tasks at {args.concurrency} agents")
        runs.append(run_throughput(n, args.concurrency, args.seed))
        _log(quiet, f"    floor {i + 1}/{repeat}: {runs[-1]['transitions']:,} single-row commits")
        floors.append(run_floor(n, runs[-1]["transitions"]))
    a = median_run(runs, "tasks_per_s")
    a["verified"] = all(r["verified"] for r in runs)
    a["problems"] = [p for r in runs for p in r["problems"]]
    a["samples_tasks_per_s"] = [r["tasks_per_s"] for r in runs]
    f = median_run(floors, "floor_tasks_per_s")
    f["samples_tasks_per_s"] = [r["floor_tasks_per_s"] for r in floors]
    _log(quiet, f"(b) dispatch latency: {latency_n:,} tasks")
    b = run_latency(latency_n, args.concurrency)
    result = {
        "concurrency": args.concurrency,
        "seed": args.seed,
        "repeat": repeat,
        "throughput": a,
        "floor": f,
        "ratio": a["tasks_per_s"] / f["floor_tasks_per_s"],
        "ratios_per_pair": [
            r["tasks_per_s"] / fl["floor_tasks_per_s"] for r, fl in zip(runs, floors, strict=True)
        ],
        "latency": b,
        "memory": m,
        "goals": {
            "tasks_per_s": GOAL_TASKS_PER_S,
            "floor_ratio": GOAL_FLOOR_RATIO,
            "dispatch_p99_ms": GOAL_P99_MS,
            "peak_rss_mb": GOAL_RSS_MB,
        },
    }
    result["pass"] = {
        "tasks_per_s": a["tasks_per_s"] >= GOAL_TASKS_PER_S,
        "floor_ratio": result["ratio"] >= GOAL_FLOOR_RATIO,
        "exactly_once": a["verified"],
        "dispatch_p99_ms": b["p99_ms"] < GOAL_P99_MS,
        "peak_rss_mb": max(m["recover"]["peak_rss_mb"], m["submit"]["peak_rss_mb"]) < GOAL_RSS_MB,
    }
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
