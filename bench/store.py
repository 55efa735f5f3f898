"""Store benchmark: ``bench.scheduling``'s throughput and dispatch latency on a chosen
store (PostgreSQL by default: a database of its own on the local server), beside a
floor measured in the same run on the same server.

Run from the repository root::

    ./scripts/bench store                                   # a scratch database on 127.0.0.1:5432
    ./scripts/bench store --store postgresql://u@host/db    # an empty database you name
    ./scripts/bench store --quick --json

(a) 10,000 seeded DAG tasks, no-op ``sim`` agents, 50 agents, through the real loop with
    the journal on the store; tasks/s from the journal's timestamps, the journal read
    back and folded: every task done exactly once; dispatch latency p50/p99 (ready →
    agent started) from the pool.
(b) The floor: one INSERT per state transition, each its own transaction (autocommit),
    on the same server with the same ``synchronous_commit`` — a naive durable scheduler.
(c) Recovery: a journal of ``--recovery-events`` (1,000,000) events on the store — one
    task cancelled and retried over and over, then left ready — with a snapshot at its
    end (written by ``tc snapshot create``, as a running ``tc run`` writes them every
    ``snapshot_interval_s``); then a real ``tc run`` process is started and timed from
    exec to its first dispatch (journaled). Floor: the same process with ``--help``.
Goal: (a) ≥ 0.5x the floor and ≥ 3,000 tasks/s; (c) < 2 s. Numbers are reported, never
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from bench.scheduling import dag_tasks, make_app, percentile, submit
from trafficcontrol.adapters.stores.urls import mask_url
from trafficcontrol.bootstrap import STORE_ENV, open_journal
from trafficcontrol.domain.events import AttemptDispatched, AttemptFinished
from trafficcontrol.domain.model import Outcome, TaskState
from trafficcontrol.domain.state import State, apply

ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def scratch_database() -> Iterator[str]:
    """An empty database on the local server, dropped afterwards."""
    name = f"tcbench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_throughput(url: str, n: int, concurrency: int, seed: int) -> dict[str, Any]:
    os.environ[STORE_ENV] = url
    try:
        with tempfile.TemporaryDirectory(prefix="tc-bench-store-") as tmp:
            root = Path(tmp)
            app = make_app(root / "state", concurrency)
            submit(app, root, dag_tasks(n, seed))
            orch = app.orchestrator(record_latency=True)
            orch.recover()
            start = time.perf_counter()
            asyncio.run(orch.run(until_idle=True))
            wall = time.perf_counter() - start
            latencies = list(orch.pool.latencies or [])
            app.close()
    finally:
        os.environ.pop(STORE_ENV, None)
    result = verify(url, n)
    result.update(
        run_wall_s=wall,
        dispatch_p50_ms=percentile(latencies, 50) * 1e3,
        dispatch_p99_ms=percentile(latencies, 99) * 1e3,
    )
    return result


def verify(url: str, n: int) -> dict[str, Any]:
    journal = open_journal(url)
    state = State()
    first = last = None
    succeeded: Counter[str] = Counter()
    events = 0
    try:
        for _seq, event in journal.read():
            apply(state, event)
            events += 1
            if isinstance(event, AttemptDispatched) and first is None:
                first = event.at
            elif isinstance(event, AttemptFinished):
                last = event.at
                if event.outcome is Outcome.SUCCEEDED:
                    succeeded[event.attempt_id.rsplit("#", 1)[0]] += 1
    finally:
        journal.close()
    done = sum(1 for r in state.tasks.values() if r.state is TaskState.DONE)
    span = (last or 0.0) - (first or 0.0)
    return {
        "tasks": n,
        "journal_events": events,
        "verified": done == n and len(succeeded) == n and set(succeeded.values()) == {1},
        "tasks_per_s": n / span if span > 0 else math.nan,
    }


def run_floor(url: str, n: int, rows: int) -> dict[str, Any]:
    """One INSERT per transition, each its own transaction, on the same server."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE bench_floor (seq bigserial PRIMARY KEY, task text NOT NULL,"
            " state text NOT NULL, at double precision NOT NULL)"
        )
        states = ("ready", "running", "started", "done")
        start = time.perf_counter()
        for i in range(rows):
            conn.execute(
                "INSERT INTO bench_floor(task, state, at) VALUES (%s, %s, %s)",
                (f"t{i % n:06d}", states[i % 4], time.time()),
            )
        elapsed = time.perf_counter() - start
        conn.execute("DROP TABLE bench_floor")
        sync = conn.execute("SHOW synchronous_commit").fetchone()
    return {
        "rows": rows,
        "floor_s": elapsed,
        "floor_tasks_per_s": n / elapsed,
        "synchronous_commit": sync[0] if sync else None,
    }


def run_recovery(url: str, events: int) -> dict[str, Any]:
    """(c): module notes."""
    from bench.scheduling import _task, project_spec
    from trafficcontrol.domain.events import (
        BacklogSubmitted,
        TaskCancelRequested,
        TaskRetryRequested,
    )
    from trafficcontrol.domain.model import TaskId

    with tempfile.TemporaryDirectory(prefix="tc-bench-store-c-") as tmp:
        root = Path(tmp)
        home = root / "home"
        home.mkdir()
        env = {**os.environ, STORE_ENV: url, "TC_HOME": str(home)}
        journal = open_journal(url)
        try:
            task_id = TaskId("again")
            journal.append(
                [
                    BacklogSubmitted(
                        at=0.0,
                        source="bench",
                        projects=[project_spec(root)],
                        tasks=[_task(task_id, [])],
                    )
                ]
            )
            written = 1
            start = time.perf_counter()
            while written < events:
                batch = []
                for i in range(min(10_000, events - written) // 2):
                    at = float(written + 2 * i)
                    batch.append(TaskCancelRequested(at=at, task_id=task_id))
                    batch.append(TaskRetryRequested(at=at + 1, task_id=task_id))
                if not batch:
                    break
                journal.append(batch)
                written += len(batch)
            append_s = time.perf_counter() - start
        finally:
            journal.close()
        tc = [sys.executable, "-m", "trafficcontrol"]
        start = time.perf_counter()
        subprocess.run([*tc, "snapshot", "create"], env=env, check=True, capture_output=True)
        snapshot_s = time.perf_counter() - start
        start = time.perf_counter()
        subprocess.run([*tc, "--help"], env=env, check=True, capture_output=True)
        floor_s = time.perf_counter() - start
        exec_at = time.time()
        subprocess.run(
            [*tc, "run", "--no-live"], env=env, check=True, capture_output=True, timeout=600
        )
        journal = open_journal(url)
        try:
            dispatched = [
                e.at for _s, e in journal.read(after=written) if isinstance(e, AttemptDispatched)
            ]
        finally:
            journal.close()
    return {
        "events": written,
        "append_s": append_s,
        "snapshot_create_s": snapshot_s,
        "start_to_first_dispatch_s": dispatched[0] - exec_at if dispatched else math.nan,
        "floor_process_s": floor_s,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="an empty PostgreSQL database [a scratch one]")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--recovery-events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks, 20,000 events")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    n = 1000 if args.quick else args.tasks
    recovery_events = 20_000 if args.quick else args.recovery_events

    def measure(url: str) -> dict[str, Any]:
        print(f"  .. (a) {n:,} tasks on {mask_url(url)}", file=sys.stderr)
        ours = run_throughput(url, n, args.concurrency, args.seed)
        print(f"  .. (b) floor: {ours['journal_events']:,} single-row commits", file=sys.stderr)
        floor = run_floor(url, n, ours["journal_events"])
        return {"store": mask_url(url), "ours": ours, "floor": floor}

    if args.store:
        result = measure(args.store)
    else:
        with scratch_database() as url:
            result = measure(url)
    print(f"  .. (c) recovery with {recovery_events:,} events", file=sys.stderr)
    with scratch_database() as url:
        result["recovery"] = run_recovery(url, recovery_events)
    ours, floor = result["ours"], result["floor"]
    ratio = ours["tasks_per_s"] / floor["floor_tasks_per_s"]
    result["ratio"] = ratio
    result["pass"] = {
        "floor_ratio": ratio >= 0.5,
        "tasks_per_s": ours["tasks_per_s"] >= 3000,
        "exactly_once": ours["verified"],
        "recovery_lt_2s": result["recovery"]["start_to_first_dispatch_s"] < 2.0,
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(
            f"store {result['store']}: {ours['tasks_per_s']:,.0f} tasks/s"
            f" ({n:,} DAG tasks, {args.concurrency} agents; floor"
            f" {floor['floor_tasks_per_s']:,.0f} tasks/s = {floor['rows']:,} single-row"
            f" commits, synchronous_commit={floor['synchronous_commit']}; ratio {ratio:.2f}x);"
            f" dispatch p50 {ours['dispatch_p50_ms']:.1f} ms, p99 {ours['dispatch_p99_ms']:.1f} ms;"
            f" exactly once: {ours['verified']}"
        )
        rec = result["recovery"]
        print(
            f"recovery: {rec['events']:,} events (appended in {rec['append_s']:.1f} s; snapshot"
            f" created in {rec['snapshot_create_s']:.1f} s): tc run exec -> first dispatch"
            f" {rec['start_to_first_dispatch_s']:.2f} s (floor: tc --help"
            f" {rec['floor_process_s']:.2f} s)"
        )
        print(
            "pass: "
            + ", ".join(f"{k}={'PASS' if v else 'MISS'}" for k, v in result["pass"].items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
