"""HTTP server benchmark: what serving the dashboard costs the loop, how fast a journal
append reaches an open page, and how fast the pages answer with 10,000 tasks.

Run from the repository root::

    python -m bench.http            # the full run (about a minute on 2 cores)
    python -m bench.http --quick    # a small run for smoke tests (about 10 s)
    python -m bench.http --json     # the same numbers as one JSON object

Numbers are reported, never asserted: the exit code is 0 whatever they are. Everything
listens on 127.0.0.1 only, on a port the kernel picks, with the token required (the
default), and every process the bench starts is waited for or killed before it ends.

(a) Throughput cost: ``bench.scheduling``'s workload (a seeded DAG of no-op ``sim``
    tasks at ``--concurrency`` agents, durability=process, tasks/s from the journal's
    timestamps, the journal re-folded: every task done exactly once) run with the
    server off and with it on, the way ``tc run --http`` runs it (``cli.http.serving``
    on the orchestrator's loop) and one dashboard client connected for the whole run:
    it reads ``/api/events/stream`` and, as ``static/live.js`` does on the overview,
    fetches ``/`` again 100 ms after a message, at most once a second (``--page none``:
    the stream only). The
    cases run ``--repeat`` times, interleaved, and their medians are compared, so a
    busy machine slows both; a third case per repeat, a client that only reads the
    stream, is shown for information. The loop thread's CPU time per task is shown
    too (steadier than wall time on a shared machine), and the garbage is collected
    before each run (else the previous run's state is collected inside this one).
(b) Push latency: journal append -> the client has read the SSE message that carries
    the batch. A commit listener registered on the orchestrator's ``LoopStats`` (beside
    the server's own) records ``time.monotonic()`` per batch; the client, a separate
    process (as a browser is), records ``time.monotonic()`` when it has read each
    ``journal`` message (CLOCK_MONOTONIC is one clock for every process on Linux). It
    is an SSE client (httpx), not a browser: the bytes are the ones a browser's
    EventSource reads, its rendering is not included. Measured under (a)'s load (the
    loop saturated: the worst case) and on a paced run (agents that take
    ``--paced-ms`` each, a few at a time: the usual case).
(c) Pages: a state home with ``--page-tasks`` tasks (run to done through the real loop,
    so there are as many attempts), served by a real ``tc serve`` process (the
    journal follower); ``GET /``, ``/api/tasks?limit=50``, ``/api/status`` and
    ``/metrics`` asked ``--requests`` times each over one keep-alive connection,
    interleaved, beside ``GET /healthz`` (the floor: the same server, client and
    connection doing almost nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import io
import json
import math
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import msgspec

from bench.scheduling import (
    BenchApp,
    dag_tasks,
    make_app,
    median_run,
    percentile,
    project_spec,
    verify_journal,
)
from trafficcontrol.api.auth import token_path
from trafficcontrol.cli import http as cli_http
from trafficcontrol.domain.events import AnyEvent
from trafficcontrol.domain.model import AgentSettings, SimSettings, TaskId, TaskSpec
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.runtime.orchestrator import Orchestrator

GOAL_RATIO = 0.97
GOAL_PUSH_P99_MS = 250.0
GOAL_OVERVIEW_P50_MS = 100.0
HOST = "127.0.0.1"
CLIENT_TIMEOUT_S = 60.0
"""Bound on every wait for the client or the server (a stuck one fails the bench)."""
MAX_RESYNCS = 100
PAGE_DEBOUNCE_S = 0.1
"""``DEBOUNCE_MS`` of ``static/live.js``."""
PAGE_MIN_INTERVAL_S = 1.0
"""``MIN_INTERVAL_MS`` of ``static/live.js``: refreshes at least this far apart."""
_REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = (
    ("healthz", "/healthz"),
    ("overview", "/"),
    ("tasks", "/api/tasks?limit=50"),
    ("status", "/api/status"),
    ("metrics", "/metrics"),
)


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"  .. {message}", file=sys.stderr, flush=True)


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50) * 1e3,
        "p99_ms": percentile(values, 99) * 1e3,
        "max_ms": max(values, default=math.nan) * 1e3,
    }


# -- the dashboard client (a child process) --------------------------------------------
class _Recorder:
    """What the client read; finished once it read ``last`` or the stream ended."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.messages: list[tuple[int, int, float]] = []
        """(first seq, last seq, monotonic time read) per ``journal`` message."""
        self.hello_seq: int | None = None
        self.resyncs = 0
        self.gaps = 0
        self.events = 0
        self.last_seq = 0
        self.ended = False
        self.error: str | None = None
        self.refresh = threading.Event()
        self.refreshes: list[float] = []
        """Seconds per ``GET /`` the page made to refresh itself."""
        self.stopping = threading.Event()

    def result(self, target: int | None) -> dict[str, Any]:
        return {
            "hello_seq": self.hello_seq,
            "messages": self.messages,
            "events": self.events,
            "last_seq": self.last_seq,
            "target_seq": target,
            "caught_up": target is not None and self.last_seq >= target,
            "resyncs": self.resyncs,
            "gaps": self.gaps,
            "refreshes": self.refreshes,
            "error": self.error,
        }


def _read_stream(client: httpx.Client, url: str, rec: _Recorder, page: str) -> bool:
    """One connection to the stream; True when it ended with ``resync``."""
    kind, data = "message", ""
    with client.stream("GET", f"{url}/api/events/stream") as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].lstrip()
            elif line == "" and data:
                now = time.monotonic()
                body = json.loads(data)
                with rec.cond:
                    if kind == "hello":
                        if rec.hello_seq is None:
                            print("ready", flush=True)
                        rec.hello_seq = body["seq"]
                    elif kind == "journal":
                        n = len(body["events"]) + body["dropped"]
                        rec.messages.append((body["seq"] - n + 1, body["seq"], now))
                        rec.events += n
                        rec.last_seq = body["seq"]
                        rec.gaps += bool(body.get("gap"))
                        if page == "overview":
                            rec.refresh.set()
                    elif kind == "resync":
                        rec.resyncs += 1
                    rec.cond.notify_all()
                if kind == "resync":
                    return True
                kind, data = "message", ""
    return False


def _stream(url: str, headers: dict[str, str], rec: _Recorder, page: str) -> None:
    """Read the stream as ``static/live.js`` does; on ``resync``, reload the page and
    subscribe again (at most ``MAX_RESYNCS`` times)."""
    timeout = httpx.Timeout(CLIENT_TIMEOUT_S, read=None)
    try:
        with httpx.Client(timeout=timeout, headers=headers) as client:
            for _ in range(MAX_RESYNCS + 1):
                if not _read_stream(client, url, rec, page):
                    break
                client.get(f"{url}/").raise_for_status()
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    with rec.cond:
        rec.ended = True
        rec.cond.notify_all()


def _refresher(url: str, headers: dict[str, str], rec: _Recorder) -> None:
    """The overview page's ``refreshFragments``: after a ``journal`` message, wait
    ``PAGE_DEBOUNCE_S`` (and at least ``PAGE_MIN_INTERVAL_S`` after the last fetch), fetch
    the page again; one fetch at a time, and messages that came during one ask for one
    more (``static/live.js``). On its own connection, as a
    browser's fetch beside an open EventSource."""
    try:
        with httpx.Client(timeout=CLIENT_TIMEOUT_S, headers=headers) as client:
            last = 0.0
            while not rec.stopping.is_set():
                if not rec.refresh.wait(0.2):
                    continue
                time.sleep(max(PAGE_DEBOUNCE_S, last + PAGE_MIN_INTERVAL_S - time.perf_counter()))
                rec.refresh.clear()
                start = last = time.perf_counter()
                client.get(f"{url}/", headers={"Accept": "text/html"}).raise_for_status()
                rec.refreshes.append(time.perf_counter() - start)
    except httpx.HTTPError as exc:
        rec.error = f"refresh: {type(exc).__name__}: {exc}"


def client_main(url: str, token_file: Path, page: str) -> int:
    """Read the stream (and refresh the page, as the overview does); print ``ready``
    after ``hello``; once stdin names the last seq, print what was read (as JSON) when
    the client has read it, or in a bounded time."""
    rec = _Recorder()
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    reader = threading.Thread(target=_stream, args=(url, headers, rec, page), daemon=True)
    refresher = threading.Thread(target=_refresher, args=(url, headers, rec), daemon=True)
    reader.start()
    if page == "overview":
        refresher.start()
    line = sys.stdin.readline()  # the bench writes it after its run (or closes stdin)
    target = int(line) if line.strip() else None
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    with rec.cond:
        while not rec.ended and (target is None or rec.last_seq < target):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            rec.cond.wait(left)
    rec.stopping.set()
    if refresher.is_alive():  # its last fetch
        refresher.join(PAGE_DEBOUNCE_S + CLIENT_TIMEOUT_S)
    with rec.cond:
        print(json.dumps(rec.result(target)), flush=True)
    return 0


# -- (a) and (b): the scheduling workload, with the server off or on --------------------
class _Appends:
    """A ``LoopStats`` commit listener: monotonic time per committed batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, float]] = []

    def __call__(self, first_seq: int, events: list[AnyEvent]) -> None:
        self.batches.append((first_seq, len(events), time.monotonic()))


def push_latencies(
    batches: list[tuple[int, int, float]], messages: list[tuple[int, int, float]]
) -> tuple[list[float], int]:
    """Per appended batch, the time until the message carrying its first event was
    read; and how many batches no message carried."""
    lasts = [m[1] for m in messages]
    out, missing = [], 0
    for first, _n, appended in batches:
        i = bisect.bisect_left(lasts, first)
        if i == len(messages) or messages[i][0] > first:
            missing += 1
            continue
        out.append(messages[i][2] - appended)
    return out, missing


class _GcTimer:
    """Time in the cyclic garbage collector while it is installed (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.full += info["generation"] == 2

    def __enter__(self) -> _GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self)


async def _timed_run(orch: Orchestrator) -> dict[str, float]:
    """``orch.run``; its wall time, the CPU time of this thread (the loop's: the
    journal's own thread and the client's process are not in it) and the time the
    garbage collector took in it."""
    with _GcTimer() as collector:
        cpu, start = time.thread_time(), time.perf_counter()
        await orch.run(until_idle=True)
        wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
    return {
        "run_wall_s": wall,
        "loop_cpu_s": cpu,
        "gc_s": collector.seconds,
        "gc_full": collector.full,
    }


async def _served_run(app: BenchApp, orch: Orchestrator, page: str) -> dict[str, Any]:
    """``orch.run`` as ``tc run --http`` runs it, one dashboard client connected."""
    appends = _Appends()
    orch.stats.listeners.append(appends)  # registered first: runs before the server's
    listener = cli_http.listen(app, f"{HOST}:0")
    assert listener is not None
    argv = [sys.executable, "-m", "bench.http", "--client"]
    with contextlib.redirect_stderr(io.StringIO()):  # the "dashboard: <url>" notice
        async with cli_http.serving(app, listener, lambda: orch) as server:
            assert server is not None
            argv += [server.url, "--token-file", str(token_path(app.home.root))]
            argv += ["--page", page]
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=_REPO_ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert proc.stdin is not None and proc.stdout is not None
            try:
                ready = await asyncio.wait_for(proc.stdout.readline(), CLIENT_TIMEOUT_S)
                if ready.strip() != b"ready":
                    raise SystemExit(f"bench client did not connect: {ready!r}")
                ran = await _timed_run(orch)
                proc.stdin.write(f"{orch.state.seq}\n".encode())
                await proc.stdin.drain()
                out = await asyncio.wait_for(proc.stdout.readline(), CLIENT_TIMEOUT_S)
                await asyncio.wait_for(proc.wait(), CLIENT_TIMEOUT_S)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    orch.stats.listeners.remove(appends)
    client: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    latencies, missing = push_latencies(appends.batches, client["messages"])
    return {
        **ran,
        "batches": len(appends.batches),
        "events_appended": sum(n for _f, n, _t in appends.batches),
        "messages": len(client["messages"]),
        "events_received": client["events"],
        "caught_up": client["caught_up"],
        "resyncs": client["resyncs"],
        "gaps": client["gaps"],
        "refreshes_s": client["refreshes"],
        "client_error": client["error"],
        "missing": missing,
        "latencies_s": latencies,
    }


def run_workload(
    n: int, concurrency: int, seed: int, *, served: bool, page: str = "overview"
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tc-bench-http-a-") as tmp:
        root = Path(tmp)
        app = make_app(root / "state", concurrency)
        tasks = dag_tasks(n, seed)
        submit_ok(app, SubmitRequest(source="bench", projects=[project_spec(root)], tasks=tasks))
        orch = app.orchestrator()
        orch.recover()
        gc.collect()  # the previous run's garbage is not this run's cost
        push: dict[str, Any] | None = None
        if served:
            push = asyncio.run(_served_run(app, orch, page))
            ran = {k: push.pop(k) for k in ("run_wall_s", "loop_cpu_s", "gc_s", "gc_full")}
        else:
            ran = asyncio.run(_timed_run(orch))
        app.close()
        result = verify_journal(root / "state" / "journal.db", n)
    result.update(ran, served=served, loop_cpu_us_per_task=ran["loop_cpu_s"] / n * 1e6)
    if push is not None:
        result["push"] = push
    return result


def submit_ok(app: BenchApp, request: SubmitRequest) -> None:
    result = app.request(request, wait_s=600)
    if not result.ok:
        raise SystemExit(f"bench submission refused: {result.message} {result.details[:5]}")


def run_paced(n: int, concurrency: int, paced_ms: float, page: str) -> dict[str, Any]:
    """Agents that take ``paced_ms`` each, ``concurrency`` at a time, independent."""
    with tempfile.TemporaryDirectory(prefix="tc-bench-http-b-") as tmp:
        root = Path(tmp)
        app = make_app(root / "state", concurrency)
        project = msgspec.structs.replace(
            project_spec(root),
            settings=AgentSettings(
                sim=SimSettings(duration_s=paced_ms / 1e3, jitter=0.5, tokens_in=1000)
            ),
        )
        tasks = [
            TaskSpec(id=TaskId(f"p{i:05d}"), project=project.id, title=f"paced {i}", prompt="x")
            for i in range(n)
        ]
        submit_ok(app, SubmitRequest(source="bench", projects=[project], tasks=tasks))
        orch = app.orchestrator()
        orch.recover()
        gc.collect()
        push = asyncio.run(_served_run(app, orch, page))
        app.close()
    push.update(tasks=n, concurrency=concurrency, paced_ms=paced_ms)
    return push


def summarize_push(runs: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for r in runs for x in r["latencies_s"]]
    keys = ("batches", "events_appended", "messages", "events_received", "missing")
    keys += ("resyncs", "gaps")
    out: dict[str, Any] = {k: sum(r[k] for r in runs) for k in keys}
    out.update(_ms(latencies))
    out["samples"] = len(latencies)
    refreshes = [x for r in runs for x in r["refreshes_s"]]
    out["page_refreshes"] = {"count": len(refreshes), **(_ms(refreshes) if refreshes else {})}
    out["caught_up"] = all(r["caught_up"] for r in runs)
    out["client_errors"] = [r["client_error"] for r in runs if r["client_error"]]
    return out


# -- (c) pages, from a real tc serve ------------------------------------------------------
def build_home(home: Path, n: int, seed: int) -> dict[str, Any]:
    """``n`` DAG tasks run to done through the real loop (so as many attempts)."""
    app = make_app(home, 50)
    start = time.perf_counter()
    tasks = dag_tasks(n, seed)
    submit_ok(app, SubmitRequest(source="bench", projects=[project_spec(home.parent)], tasks=tasks))
    orch = app.orchestrator()
    orch.recover()
    asyncio.run(orch.run(until_idle=True))
    counts = {str(k.value): v for k, v in orch.state.counts.items() if v}
    app.close()
    return {"tasks": n, "counts": counts, "build_s": time.perf_counter() - start}


_URL = re.compile(r"dashboard: (http://[^/\s]+)/")


@contextlib.contextmanager
def tc_serve(home: Path) -> Iterator[str]:
    """A ``tc serve`` process on ``home``; yields its URL; stopped with SIGINT after."""
    argv = [sys.executable, "-c", "from trafficcontrol.cli.app import main; main()"]
    argv += ["serve", "--home", str(home), "--http", f"{HOST}:0"]
    proc = subprocess.Popen(
        argv, cwd=_REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()

    def drain(pipe: IO[str]) -> None:  # also keeps the pipe from filling up
        for line in pipe:
            lines.put(line)

    try:
        assert proc.stderr is not None
        threading.Thread(target=drain, args=(proc.stderr,), daemon=True).start()
        url, seen = None, []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while url is None and (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            seen.append(line)
            if match := _URL.search(line):
                url = match.group(1)
        if url is None:
            raise SystemExit(f"tc serve did not start:\n{''.join(seen)}")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_pages(n: int, requests: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tc-bench-http-c-") as tmp:
        home = Path(tmp) / "state"
        built = build_home(home, n, seed)
        times: dict[str, list[float]] = {name: [] for name, _path in PAGES}
        sizes: dict[str, int] = {}
        with tc_serve(home) as url:
            token = token_path(home).read_text().strip()
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=CLIENT_TIMEOUT_S) as client:
                deadline = time.monotonic() + CLIENT_TIMEOUT_S
                while client.get("/readyz").status_code != 200:  # recovered
                    if time.monotonic() > deadline:
                        raise SystemExit("tc serve never became ready")
                    time.sleep(0.05)
                for name, path in PAGES:  # warm: templates compiled, connection open
                    response = client.get(path)
                    response.raise_for_status()
                    sizes[name] = len(response.content)
                for i in range(requests):
                    order = PAGES[i % len(PAGES) :] + PAGES[: i % len(PAGES)]  # rotate the order
                    for name, path in order:
                        start = time.perf_counter()
                        response = client.get(path)
                        elapsed = time.perf_counter() - start
                        if response.status_code != 200:
                            raise SystemExit(f"GET {path}: {response.status_code}")
                        times[name].append(elapsed)
                check = client.get("/api/tasks?limit=1").json()
    pages: dict[str, Any] = {}
    floor = percentile(times["healthz"], 50)
    for name, path in PAGES:
        figures = _ms(times[name])
        figures.update(path=path, bytes=sizes[name], samples=len(times[name]))
        figures["p50_over_floor"] = percentile(times[name], 50) / floor
        pages[name] = figures
    return {"home": built, "served_total": check["total"], "requests": requests, "pages": pages}


# -- report --------------------------------------------------------------------------
def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _spread(values: list[float]) -> str:
    return "/".join(f"{v:,.0f}" for v in values)


def _stream_only_lines(a: dict[str, Any]) -> list[str]:
    so = a.get("stream_only")
    if so is None:
        return []
    p = so["push"]
    return [
        f"    (info) a client that only reads the stream (no page refresh):"
        f" {so['tasks_per_s']:,.0f} tasks/s, {so['ratio']:.3f}x off"
        f" ({_spread(so['samples'])}); loop CPU {so['loop_cpu_us_per_task']:.0f} µs/task"
        f" ({so['loop_cpu_over_off']:.3f}x); push p50 {p['p50_ms']:.1f} ms,"
        f" p99 {p['p99_ms']:.1f} ms"
    ]


def _push_line(name: str, p: dict[str, Any]) -> str:
    pr = p["page_refreshes"]
    refreshed = (
        f"; {pr['count']:,} page refreshes (GET /) p50 {pr['p50_ms']:.1f} ms,"
        f" p99 {pr['p99_ms']:.1f} ms"
        if pr["count"]
        else ""
    )
    return (
        f"(b) {name}: {p['events_appended']:,} events in {p['batches']:,} batches,"
        f" {p['messages']:,} SSE messages covering {p['events_received']:,} events;"
        f" {p['missing']} batches never carried, {p['gaps']} gaps, {p['resyncs']} resyncs;"
        f" push max {p['max_ms']:.1f} ms{refreshed}"
    )


def report(r: dict[str, Any]) -> str:
    a, b, c = r["throughput"], r["push"], r["pages"]
    cpu = a["loop_cpu_us_per_task"]
    off, on, paced = a["off"], a["on"], b["paced"]
    loaded = b["loaded"]
    pages = c["pages"]
    rows = [
        ("metric", "ours", "floor / ref", "goal", ""),
        (
            f"(a) throughput, {off['tasks']:,} DAG tasks, {r['concurrency']} agents, server on",
            f"{on['tasks_per_s']:,.0f} tasks/s",
            f"{off['tasks_per_s']:,.0f} tasks/s off",
            "",
            "",
        ),
        (
            "    ratio on / off (1 dashboard client)",
            f"{a['ratio']:.3f}x",
            "",
            f">= {GOAL_RATIO}x",
            _verdict(a["ratio"] >= GOAL_RATIO),
        ),
        (
            "    done exactly once (journal re-folded)",
            "yes" if a["verified"] else "NO",
            "",
            "all tasks",
            _verdict(a["verified"]),
        ),
        (
            f"(b) push append->client p50, loaded ({loaded['samples']:,} batches)",
            f"{loaded['p50_ms']:.1f} ms",
            "",
            "",
            "",
        ),
        (
            "    push append->client p99, loaded",
            f"{loaded['p99_ms']:.1f} ms",
            "",
            f"<= {GOAL_PUSH_P99_MS:.0f} ms",
            _verdict(loaded["p99_ms"] <= GOAL_PUSH_P99_MS),
        ),
        (
            f"    push p50 / p99, paced ({paced['samples']:,} batches)",
            f"{paced['p50_ms']:.1f} / {paced['p99_ms']:.1f} ms",
            "",
            f"p99 <= {GOAL_PUSH_P99_MS:.0f} ms",
            _verdict(paced["p99_ms"] <= GOAL_PUSH_P99_MS),
        ),
    ]
    for name, _path in PAGES:
        p = pages[name]
        goal = f"p50 < {GOAL_OVERVIEW_P50_MS:.0f} ms" if name == "overview" else ""
        verdict = _verdict(p["p50_ms"] < GOAL_OVERVIEW_P50_MS) if name == "overview" else ""
        rows.append(
            (
                f"(c) GET {p['path']} p50 / p99, {c['home']['tasks']:,} tasks"
                if name == "healthz"
                else f"    GET {p['path']} p50 / p99",
                f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f} ms",
                "floor" if name == "healthz" else f"{p['p50_over_floor']:.1f}x floor",
                goal,
                verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    client = (
        "SSE + GET / 100 ms after a message, at most one a second, as static/live.js"
        if r["page"] == "overview"
        else "SSE only"
    )
    lines = [
        "TrafficControl HTTP bench [simulated no-op agents; the client is httpx in its own"
        f" process, not a browser: {client}], durability=process",
    ]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [
        "",
        f"(a) medians of {r['repeat']} interleaved pairs; on {_spread(a['samples_on'])},"
        f" off {_spread(a['samples_off'])} tasks/s; per-pair ratios"
        f" {'/'.join(f'{x:.3f}' for x in a['ratios_per_pair'])}",
        f"    the loop's CPU per task (main thread; medians): on {cpu['on']:.0f} µs,"
        f" off {cpu['off']:.0f} µs ({cpu['on_over_off']:.3f}x); in the garbage collector"
        f" on {a['gc_ms']['on']:.0f} ms, off {a['gc_ms']['off']:.0f} ms per run",
        *_stream_only_lines(a),
        *(_push_line(name, p) for name, p in (("loaded", loaded), ("paced", paced))),
        f"    paced: {paced['tasks']:,} agents of {paced['paced_ms']:.0f} ms ±50%,"
        f" {paced['concurrency']} at a time",
        f"(c) tc serve on {c['home']['tasks']:,} tasks {c['home']['counts']} (built in"
        f" {c['home']['build_s']:.1f} s); {c['requests']} requests per path, one keep-alive"
        " connection; bytes " + ", ".join(f"{name} {pages[name]['bytes']:,}" for name, _p in PAGES),
    ]
    if r["quick"]:
        lines.append("--quick: (a)'s runs last a fraction of a second; its ratio is noise")
    for problem in a["problems"]:
        lines.append(f"    PROBLEM: {problem}")
    for error in loaded["client_errors"] + paced["client_errors"]:
        lines.append(f"    CLIENT: {error}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=None, help="tasks per (a) run [10000]")
    parser.add_argument("--concurrency", type=int, default=50, help="max agents in (a) [50]")
    parser.add_argument("--repeat", type=int, default=None, help="(a) pairs [7, quick 3]")
    parser.add_argument("--paced-tasks", type=int, default=None, help="(b) paced run [400]")
    parser.add_argument("--paced-ms", type=float, default=50.0, help="(b) agent time [50]")
    parser.add_argument("--page-tasks", type=int, default=None, help="(c) tasks [10000]")
    parser.add_argument("--requests", type=int, default=None, help="(c) per path [200]")
    parser.add_argument(
        "--page",
        choices=["overview", "none"],
        default="overview",
        help="what the client does besides reading the stream: refresh the overview on"
        " each message as static/live.js does, or nothing [overview]",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the state homes go")
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--token-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.client:
        return client_main(args.client, args.token_file, args.page)

    quick, quiet = args.quick, args.json
    n = args.tasks or (1_000 if quick else 10_000)
    repeat = max(1, args.repeat or (3 if quick else 7))
    paced_n = args.paced_tasks or (40 if quick else 400)
    page_n = args.page_tasks or (2_000 if quick else 10_000)
    requests = args.requests or (20 if quick else 200)
    if args.tmpdir is not None:
        args.tmpdir.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(args.tmpdir)

    offs: list[dict[str, Any]] = []
    ons: list[dict[str, Any]] = []
    streams: list[dict[str, Any]] = []  # info: a client that only reads the stream
    for i in range(repeat):
        _log(quiet, f"(a) {i + 1}/{repeat}: {n:,} tasks at {args.concurrency} agents, server off")
        offs.append(run_workload(n, args.concurrency, args.seed, served=False))
        _log(quiet, f"    {i + 1}/{repeat}: the same, server on, one dashboard client")
        ons.append(run_workload(n, args.concurrency, args.seed, served=True, page=args.page))
        if args.page != "none":
            _log(quiet, f"    {i + 1}/{repeat}: the same, a client that only reads the stream")
            streams.append(run_workload(n, args.concurrency, args.seed, served=True, page="none"))
    off, on = median_run(offs, "tasks_per_s"), median_run(ons, "tasks_per_s")
    for run in (off, on):
        run.pop("push", None)
    runs = offs + ons + streams
    throughput: dict[str, Any] = {
        "off": off,
        "on": on,
        "ratio": on["tasks_per_s"] / off["tasks_per_s"],
        "ratios_per_pair": [
            o["tasks_per_s"] / f["tasks_per_s"] for o, f in zip(ons, offs, strict=True)
        ],
        "samples_on": [r["tasks_per_s"] for r in ons],
        "samples_off": [r["tasks_per_s"] for r in offs],
        "loop_cpu_us_per_task": {
            "off": statistics.median(r["loop_cpu_us_per_task"] for r in offs),
            "on": statistics.median(r["loop_cpu_us_per_task"] for r in ons),
        },
        "gc_ms": {
            "off": statistics.median(r["gc_s"] * 1e3 for r in offs),
            "on": statistics.median(r["gc_s"] * 1e3 for r in ons),
        },
        "verified": all(r["verified"] for r in runs),
        "problems": [p for r in runs for p in r["problems"]],
    }
    if streams:
        tps = statistics.median(r["tasks_per_s"] for r in streams)
        stream_cpu = statistics.median(r["loop_cpu_us_per_task"] for r in streams)
        throughput["stream_only"] = {
            "tasks_per_s": tps,
            "ratio": tps / off["tasks_per_s"],
            "samples": [r["tasks_per_s"] for r in streams],
            "loop_cpu_us_per_task": stream_cpu,
            "loop_cpu_over_off": stream_cpu / throughput["loop_cpu_us_per_task"]["off"],
            "push": summarize_push([r["push"] for r in streams]),
        }
    cpu = throughput["loop_cpu_us_per_task"]
    cpu["on_over_off"] = cpu["on"] / cpu["off"]
    _log(quiet, f"(b) paced: {paced_n} agents of {args.paced_ms:.0f} ms, 4 at a time")
    paced_run = run_paced(paced_n, 4, args.paced_ms, args.page)
    push = {
        "client": "sse-httpx-process",
        "loaded": summarize_push([r["push"] for r in ons]),
        "paced": summarize_push([paced_run]),
    }
    push["paced"].update(
        tasks=paced_run["tasks"], concurrency=paced_run["concurrency"], paced_ms=args.paced_ms
    )
    _log(quiet, f"(c) pages: {page_n:,} tasks, tc serve, {requests} requests per path")
    pages = run_pages(page_n, requests, args.seed)
    result: dict[str, Any] = {
        "quick": quick,
        "page": args.page,
        "concurrency": args.concurrency,
        "seed": args.seed,
        "repeat": repeat,
        "throughput": throughput,
        "push": push,
        "pages": pages,
        "goals": {
            "on_off_ratio": GOAL_RATIO,
            "push_p99_ms": GOAL_PUSH_P99_MS,
            "overview_p50_ms": GOAL_OVERVIEW_P50_MS,
        },
    }
    result["pass"] = {
        "on_off_ratio": throughput["ratio"] >= GOAL_RATIO,
        "exactly_once": throughput["verified"],
        "push_p99_ms": push["loaded"]["p99_ms"] <= GOAL_PUSH_P99_MS,
        "push_paced_p99_ms": push["paced"]["p99_ms"] <= GOAL_PUSH_P99_MS,
        "overview_p50_ms": pages["pages"]["overview"]["p50_ms"] < GOAL_OVERVIEW_P50_MS,
    }
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
