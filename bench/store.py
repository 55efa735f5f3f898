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
Goal: (a) ≥ 0.5x the floor and ≥ 3,000 tasks/s. Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
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
from trafficcontrol.bootstrap import STORE_ENV, mask_url, open_journal
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="an empty PostgreSQL database [a scratch one]")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    n = 1000 if args.quick else args.tasks

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
    ours, floor = result["ours"], result["floor"]
    ratio = ours["tasks_per_s"] / floor["floor_tasks_per_s"]
    result["ratio"] = ratio
    result["pass"] = {
        "floor_ratio": ratio >= 0.5,
        "tasks_per_s": ours["tasks_per_s"] >= 3000,
        "exactly_once": ours["verified"],
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
        print(
            "pass: "
            + ", ".join(f"{k}={'PASS' if v else 'MISS'}" for k, v in result["pass"].items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
