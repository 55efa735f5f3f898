"""Adoption benchmark: a restart that adopts running attempts, and what a supervisor costs.

Run from the repository root::

    python -m bench.adoption            # the full run (under a minute on 2 cores)
    python -m bench.adoption --quick    # a small run for smoke tests
    python -m bench.adoption --json     # the same numbers as one JSON object

Numbers are reported beside their goals and a floor measured in the same run, never
asserted: the exit code is 0 whatever they are. Real processes throughout: real
``tc run``, real supervisors (``python -m trafficcontrol.cli.supervise``), real
``command`` agents (``sh``). Every process the bench starts carries the run marker
(``TC_AGENT_RUN``) of an attempt under the bench's temporary directory, or is one the
bench holds by its pid; all of them are killed at the end, whatever happens.

(a) Start -> first dispatch with adopted attempts. A real ``tc run --no-live``
    (max_agents = ``--held``, 100) starts ``--held`` command tasks whose agent is a
    shell that traps SIGTERM (exit 0) and waits on a ``sleep``; once every agent has
    started and every supervisor's pid is journaled, ``tc run`` is SIGKILLed, and
    ``--queued`` (10) tasks of a second project (agent ``true``) are submitted, as
    ``tc submit`` would while it is down. Each case runs a fresh child process on a
    copy of that home (the copies' journals name the same attempts' files, so every
    copy adopts the same supervisors): ``App.start()`` (recovery, with the integrity
    check of a crash) + ``check_backends`` + the loop until its first
    ``AttemptDispatched`` is committed, with max_agents above held + queued so a slot
    is free. Reported from ``exec`` of the child and from ``App.start()``, plus when
    the start batch (``AttemptAdopted`` ..., ``OrchestratorStarted``) was committed.
    Cases, ``--repeat`` times each (medians):
      - ``live``: the supervisors still run (followed from here on);
      - ``floor``: the same journal with those attempts journaled as ended, so the
        start has nothing to account for (the cost of adopting is the difference);
      - ``finished``: the agents were then SIGTERMed (they exit 0), so every
        supervisor wrote its exit record and exited while no orchestrator ran;
      - ``interrupted``: those exit records removed: supervisors gone without one,
        the path every attempt took before supervisors (leftover kill + run-marker
        scan per attempt, journaled interrupted).
    Also a child that only imports the same modules and exits.
(b) Supervisor overhead per attempt, in this process, ``--attempts`` (30) sequential
    rounds, the kinds interleaved (order rotated each round): spawn -> agent start and
    spawn -> result of an agent that prints its own start time (``date +%s.%N``), run
    by ``SupervisedBackend`` over ``CommandBackend`` (what ``tc run`` does), by the
    plain ``CommandBackend``, and by a bare ``asyncio.create_subprocess_exec`` (the
    floor). References: spawn -> exit of ``python -c pass`` and of
    ``python -c "import trafficcontrol.cli.supervise"`` (the supervisor's own start).
    Then ``--idle-shims`` (as many as ``--held``) supervisors of a sleeping agent,
    followed by this process: each one's RSS and USS and CPU while idle, beside a bare
    idle Python interpreter, and this process's CPU spent following them all (report
    polls every ``poll_s`` = 50 ms per attempt).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import psutil

from trafficcontrol.adapters.agents.command import CommandBackend
from trafficcontrol.adapters.agents.process_group import RUN_MARKER_ENV, kill_marked
from trafficcontrol.adapters.agents.supervised import SHIM_MODULE, SupervisedBackend
from trafficcontrol.adapters.agents.supervision import AttemptFiles, read_exit_record
from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AnyEvent,
    AttemptAdopted,
    AttemptDispatched,
    AttemptFinished,
    OrchestratorStarted,
)
from trafficcontrol.domain.model import (
    AgentSettings,
    AttemptId,
    Outcome,
    ProjectId,
    ProjectSpec,
    TaskId,
    TaskSpec,
)
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.ports import AgentBackend, AgentRequest, Fence
from trafficcontrol.settings import RunSettings, Settings
from trafficcontrol.testing.fakes import RecordingReporter

GOAL_START_S = 1.0
DURABILITY: Final[Literal["process"]] = "process"
GRACE_S = 1.0
HELD, QUEUED = ProjectId("held"), ProjectId("queued")
HELD_SCRIPT = "trap 'kill $!; exit 0' TERM; sleep 3600 & echo $$ > \"$0\"; wait"
"""The held agent: SIGTERM makes it exit 0 (a real, successful end); it writes its pid
into its started file only once the trap is set."""
IDLE_SCRIPT = 'echo $$ > "$0"; exec sleep 3600'
STAMP = ["date", "+%s.%N"]
DEADLINE_S = 300.0
_REPO_ROOT = Path(__file__).resolve().parents[1]


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"  .. {message}", file=sys.stderr, flush=True)


def _wait_until(what: str, check: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    """Poll ``check`` (other processes change what it looks at) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.05)  # other processes give no signal to wait on


def make_app(home: Path, **run: Any) -> App:
    settings = Settings(run=RunSettings(durability=DURABILITY, grace_s=GRACE_S, **run))
    return App(Home(home), environ=os.environ, settings=settings)


def _submit(app: App, project: ProjectSpec, n: int, prefix: str) -> None:
    tasks = [
        TaskSpec(
            id=TaskId(f"{prefix}{i:03d}"), project=project.id, title=f"{prefix} {i}", prompt="p"
        )
        for i in range(n)
    ]
    result = app.request(SubmitRequest(source="bench", projects=[project], tasks=tasks))
    if not result.ok:
        raise SystemExit(f"bench submission refused: {result.message} {result.details[:5]}")


def _command_project(pid: ProjectId, path: Path, command: list[str]) -> ProjectSpec:
    path.mkdir(parents=True, exist_ok=True)
    return ProjectSpec(
        id=pid,
        path=str(path),
        agent="command",
        lock_in_place=False,
        settings=AgentSettings(command=command),
    )


# -- processes the bench started -----------------------------------------------------------
def marked_under(prefix: str) -> dict[str, list[psutil.Process]]:
    """Live processes whose run marker (an attempt's log path) is under ``prefix``."""
    found: dict[str, list[psutil.Process]] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            marker = proc.environ().get(RUN_MARKER_ENV, "")
            if marker.startswith(prefix) and proc.status() != psutil.STATUS_ZOMBIE:
                found.setdefault(marker, []).append(proc)
    return found


def clean_up(prefix: str) -> int:
    """Kill every process carrying a run marker under ``prefix``; how many there were."""
    found = marked_under(prefix)
    if found:
        kill_marked(found, GRACE_S)
    return sum(len(procs) for procs in found.values())


# -- (a) the home --------------------------------------------------------------------------
def build_home(root: Path, held: int, queued: int, quiet: bool) -> dict[str, Any]:
    """Run ``held`` agents under a real ``tc run``, SIGKILL it, queue ``queued`` more."""
    home, started = root / "home", root / "started"
    started.mkdir()
    app = make_app(home)
    script = ["sh", "-c", HELD_SCRIPT, f"{started}/{{task_id}}"]
    _submit(app, _command_project(HELD, root / "proj-held", script), held, "h")
    app.close()
    (home / "config.toml").write_text(
        f'[run]\nmax_agents = {held}\ngrace_s = {GRACE_S}\ndurability = "{DURABILITY}"\n'
    )
    out, err = (root / "tc-run.out").open("wb"), (root / "tc-run.err").open("wb")
    begun = time.perf_counter()
    run = subprocess.Popen(
        [sys.executable, "-m", "trafficcontrol", "run", "--no-live"],
        cwd=_REPO_ROOT,
        env={**os.environ, "TC_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
    )
    journal = SqliteJournal(home / "journal.db", durability=DURABILITY)
    seen = {"seq": 0, "processes": 0}

    def all_started() -> bool:
        if run.poll() is not None:
            raise SystemExit(
                f"bench: tc run exited {run.returncode}:\n{_tail(root / 'tc-run.err')}"
            )
        for seq, event in journal.read(after=seen["seq"]):
            seen["seq"] = seq
            seen["processes"] += isinstance(event, AgentProcessStarted)
        return seen["processes"] >= held and len(list(started.iterdir())) >= held

    try:
        _wait_until(f"{held} agents under tc run", all_started)
        started_s = time.perf_counter() - begun
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
        out.close()
        err.close()
        journal.close()
    _log(quiet, f"(a) {held} agents started in {started_s:.1f} s; tc run SIGKILLed")
    app = make_app(home)
    _submit(app, _command_project(QUEUED, root / "proj-queued", ["true"]), queued, "q")
    state = app.read_state()
    app.close()
    logs = sorted(a.log_path for a in state.running.values())
    assert len(logs) == held, f"{len(logs)} attempts running, {held} expected"
    return {
        "home": home,
        "logs": logs,
        "agent_pids": [int(p.read_text()) for p in sorted(started.iterdir())],
        "held": held,
        "queued": queued,
        "all_started_s": started_s,
    }


def _tail(path: Path) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-20:])


def _copy(built: dict[str, Any], root: Path, name: str) -> Path:
    copy = root / f"case-{name}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(built["home"], copy, ignore=shutil.ignore_patterns("logs", "worktrees"))
    return copy


def _end_running(home: Path) -> None:
    """Journal every running attempt as ended (the floor: nothing left to account for)."""
    app = make_app(home)
    running = list(app.read_state().running)
    app.close()
    journal = SqliteJournal(home / "journal.db", durability=DURABILITY)
    journal.append(
        [
            AttemptFinished(at=time.time(), attempt_id=aid, outcome=Outcome.INTERRUPTED)
            for aid in running
        ]
    )
    journal.close()


def release_agents(built: dict[str, Any], root: Path) -> dict[str, int]:
    """SIGTERM the held agents (they exit 0); wait for every exit record and supervisor."""
    for pid in built["agent_pids"]:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.environ().get(RUN_MARKER_ENV, "").startswith(str(root)):
                proc.terminate()
    exits = [AttemptFiles(Path(log)).exit for log in built["logs"]]
    _wait_until("every exit record", lambda: all(e.exists() for e in exits))
    _wait_until("every supervisor to exit", lambda: not marked_under(str(built["home"])))
    outcomes: dict[str, int] = {}
    for path in exits:
        record = read_exit_record(path)
        key = "missing" if record is None else str(record.outcome)
        outcomes[key] = outcomes.get(key, 0) + 1
    return outcomes


# -- (a) measuring, in a child process ----------------------------------------------------
def child_measure(home: Path, max_agents: int, spawned_at: float) -> None:
    """App.start() + check_backends + the loop until its first dispatch is committed."""
    entered = time.time()
    app = make_app(home, max_agents=max_agents)
    journal = app.journal()
    original = journal.append
    out: dict[str, Any] = {"entered_s": entered - spawned_at}

    def append(events: Sequence[AnyEvent], fence: Fence | None = None) -> int:
        last = original(events, fence)
        now = time.time()
        if any(isinstance(e, OrchestratorStarted) for e in events):
            out["start_batch_s"] = now - started
            out["adopted"] = sum(isinstance(e, AttemptAdopted) for e in events)
            out["adopted_finished"] = sum(
                isinstance(e, AttemptAdopted) and e.finished for e in events
            )
            out["interrupted"] = sum(isinstance(e, AttemptFinished) for e in events)
        dispatched = [e.task_id for e in events if isinstance(e, AttemptDispatched)]
        if dispatched:
            out["dispatched"] = len(dispatched)
            out["dispatched_queued"] = sum(t.startswith("q") for t in dispatched)
            out["from_exec_s"] = now - spawned_at
            out["from_start_s"] = now - started
            print(json.dumps(out), flush=True)
            os._exit(0)  # measured; what follows (agents, shutdown) is not
        return last

    journal.append = append  # type: ignore[method-assign]
    started = time.time()
    orchestrator, _notes = app.start()
    orchestrator.check_backends()
    out["running_before"] = len(orchestrator.state.running)
    out["start_s"] = time.time() - started
    asyncio.run(orchestrator.run(until_idle=True))
    raise SystemExit("the orchestrator stopped without dispatching")


def _spawn(kind: str, home: Path | None = None, max_agents: int = 0) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.adoption", "--child", kind]
    if home is not None:
        argv += ["--home", str(home), "--max-agents", str(max_agents)]
    spawned_at = time.time()
    argv += ["--spawned-at", repr(spawned_at)]
    done = subprocess.run(argv, cwd=_REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench child {kind!r} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _measure(built: dict[str, Any], root: Path, name: str) -> dict[str, Any]:
    home = _copy(built, root, name)
    if name == "floor":
        _end_running(home)
    result = _spawn("measure", home, built["held"] + built["queued"] + 1)
    shutil.rmtree(home, ignore_errors=True)
    return result


def run_start_cases(built: dict[str, Any], root: Path, repeat: int, quiet: bool) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {
        "live": [],
        "floor": [],
        "finished": [],
        "interrupted": [],
    }
    bare = [_spawn("bare") for _ in range(repeat)]
    for r in range(repeat):
        _log(quiet, f"(a) supervisors live: adopt, and the floor ({r + 1}/{repeat})")
        for name in ("live", "floor") if r % 2 == 0 else ("floor", "live"):
            runs[name].append(_measure(built, root, name))
    _log(quiet, "(a) agents SIGTERMed: waiting for their exit records")
    outcomes = release_agents(built, root)
    for r in range(repeat):
        _log(quiet, f"(a) exit records written while down: adopt ({r + 1}/{repeat})")
        runs["finished"].append(_measure(built, root, "finished"))
    for log in built["logs"]:
        AttemptFiles(Path(log)).exit.unlink(missing_ok=True)
    for r in range(repeat):
        _log(quiet, f"(a) supervisors gone without exit records: interrupt ({r + 1}/{repeat})")
        runs["interrupted"].append(_measure(built, root, "interrupted"))
    cases = {name: _summary(results) for name, results in runs.items()}
    cases["bare"] = _summary(bare)
    return {"cases": cases, "exit_records": outcomes}


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numeric fields; counts from the first run (they never vary)."""
    out: dict[str, Any] = {"runs": len(results)}
    for key, value in results[0].items():
        values = [r[key] for r in results]
        if key.endswith("_s"):
            out[key] = statistics.median(values)
            out[key.removesuffix("_s") + "_range_s"] = [min(values), max(values)]
        else:
            out[key] = value
            out[key + "_all_equal"] = all(v == value for v in values)
    return out


def child_bare(spawned_at: float) -> dict[str, Any]:
    return {"from_exec_s": time.time() - spawned_at}


# -- (b) supervisor overhead ----------------------------------------------------------------
def _request(root: Path, name: str, command: list[str]) -> AgentRequest:
    return AgentRequest(
        attempt_id=AttemptId(f"{name}#1"),
        task_id=TaskId(name),
        project_id=ProjectId("bench"),
        attempt_no=1,
        title=name,
        prompt="p",
        workdir=root / "work",
        log_path=root / "b-logs" / f"{name}.log",
        model=None,
        settings=AgentSettings(command=command),
    )


def _stamp_in(log: Path) -> float:
    """The agent's own start time: the one line of its log that is a number."""
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            return float(line)
    raise SystemExit(f"bench: no start time in {log}")


async def _one(kind: str, request: AgentRequest, backends: dict[str, AgentBackend]) -> list[float]:
    """[spawn -> agent start, spawn -> result] in ms (agent start is None for references)."""
    log = request.log_path
    log.parent.mkdir(parents=True, exist_ok=True)
    spawned = time.time()
    if kind in backends:
        result = await backends[kind].run(request, RecordingReporter())
        if result.outcome is not Outcome.SUCCEEDED:
            raise SystemExit(f"bench: {kind} attempt failed: {result.error}")
    else:
        argv = {
            "raw": STAMP,
            "python": [sys.executable, "-c", "pass"],
            "imports": [sys.executable, "-c", f"import {SHIM_MODULE}"],
        }[kind]
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=request.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            os.close(fd)
        await proc.wait()
    done = time.time()
    start = (_stamp_in(log) - spawned) * 1e3 if kind in ("raw", *backends) else float("nan")
    return [start, (done - spawned) * 1e3]


async def run_overhead(root: Path, attempts: int) -> dict[str, Any]:
    (root / "work").mkdir(exist_ok=True)
    environ = dict(os.environ)
    backends: dict[str, AgentBackend] = {
        "supervised": SupervisedBackend(
            CommandBackend(environ=environ, grace_s=GRACE_S), environ=environ, grace_s=GRACE_S
        ),
        "command": CommandBackend(environ=environ, grace_s=GRACE_S),
    }
    kinds = ["supervised", "command", "raw", "python", "imports"]
    samples: dict[str, list[list[float]]] = {k: [] for k in kinds}
    for i in range(attempts):
        for kind in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:
            request = _request(root, f"{kind}{i:03d}", STAMP)
            samples[kind].append(await _one(kind, request, backends))
    out: dict[str, Any] = {"attempts": attempts}
    for kind, rows in samples.items():
        out[kind] = {
            "start_ms": statistics.median(r[0] for r in rows)
            if kind in ("raw", *backends)
            else None,
            "round_ms": statistics.median(r[1] for r in rows),
            "samples": len(rows),
        }
    sup, cmd = out["supervised"], out["command"]
    out["start_overhead_ms"] = sup["start_ms"] - cmd["start_ms"]
    out["start_ratio"] = sup["start_ms"] / cmd["start_ms"]
    out["round_overhead_ms"] = sup["round_ms"] - cmd["round_ms"]
    out["round_ratio"] = sup["round_ms"] / cmd["round_ms"]
    return out


async def run_idle(root: Path, shims: int, sample_s: float) -> dict[str, Any]:
    """``shims`` supervisors of a sleeping agent, followed here; then stopped."""
    environ = dict(os.environ)
    backend = SupervisedBackend(
        CommandBackend(environ=environ, grace_s=GRACE_S), environ=environ, grace_s=GRACE_S
    )
    started = root / "idle-started"
    started.mkdir(exist_ok=True)
    (root / "work").mkdir(exist_ok=True)
    script = ["sh", "-c", IDLE_SCRIPT, f"{started}/{{task_id}}"]
    reporters = [RecordingReporter() for _ in range(shims)]
    runs = [
        asyncio.create_task(backend.run(_request(root, f"idle{i:03d}", script), reporters[i]))
        for i in range(shims)
    ]
    bare = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(3600)", stdin=asyncio.subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while len(list(started.iterdir())) < shims:
            if time.monotonic() > deadline or any(r.done() for r in runs):
                raise SystemExit("bench: the idle supervisors did not start their agents")
            await asyncio.sleep(0.05)  # other processes give no signal to wait on
        await asyncio.sleep(1.0)  # let start-up work (imports, first polls) settle
        procs = [psutil.Process(r.processes[0][0]) for r in reporters]
        procs.append(psutil.Process(bare.pid))
        before = [_cpu(p) for p in procs]
        ours, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(sample_s)
        ours, wall = time.process_time() - ours, time.perf_counter() - wall
        cpu = [(_cpu(p) - b) / wall for p, b in zip(procs, before, strict=True)]
        memory = [p.memory_full_info() for p in procs]
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        bare.kill()
        await bare.wait()
    mb = 1e6
    return {
        "shims": shims,
        "sample_s": wall,
        "shim_rss_mb": statistics.median(m.rss / mb for m in memory[:-1]),
        "shim_uss_mb": statistics.median(m.uss / mb for m in memory[:-1]),
        "shim_cpu_share": statistics.mean(cpu[:-1]),
        "bare_python_rss_mb": memory[-1].rss / mb,
        "bare_python_uss_mb": memory[-1].uss / mb,
        "bare_python_cpu_share": cpu[-1],
        "follower_cpu_share_per_attempt": ours / wall / shims,
    }


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


# -- report --------------------------------------------------------------------------------
def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(r: dict[str, Any]) -> str:
    a, cases, b, idle = r["build"], r["start"]["cases"], r["overhead"], r["idle"]
    held, bare, floor = a["held"], cases["bare"], cases["floor"]
    rows = [("metric", "ours", "floor / ref", "goal", "")]
    for name, label in (
        ("live", f"{held} supervisors live, adopted"),
        ("finished", f"{held} exit records written while down, adopted"),
        ("interrupted", f"{held} supervisors gone, no exit record: interrupted"),
    ):
        case = cases[name]
        goal = name != "interrupted"
        rows += [
            (
                f"(a) start -> first dispatch, {label}",
                f"{case['from_exec_s']:.2f} s",
                f"{floor['from_exec_s']:.2f} s none running",
                f"< {GOAL_START_S:.0f} s" if goal else "",
                _verdict(case["from_exec_s"] < GOAL_START_S) if goal else "",
            ),
            (
                "      of which App.start() -> dispatch committed",
                f"{case['from_start_s']:.2f} s",
                f"{floor['from_start_s']:.2f} s none running",
                "",
                "",
            ),
        ]
    rows.append(
        ("(a) a child that only imports and exits", f"{bare['from_exec_s']:.2f} s", "", "", "")
    )
    sup, cmd, raw = b["supervised"], b["command"], b["raw"]
    rows += [
        (
            "(b) spawn -> agent start, supervised (median)",
            f"{sup['start_ms']:.1f} ms",
            f"{cmd['start_ms']:.1f} ms command, {raw['start_ms']:.1f} ms bare exec",
            "",
            f"x{b['start_ratio']:.1f}",
        ),
        (
            "    spawn -> result, trivial agent (median)",
            f"{sup['round_ms']:.1f} ms",
            f"{cmd['round_ms']:.1f} ms command, {raw['round_ms']:.1f} ms bare exec",
            "",
            f"x{b['round_ratio']:.1f}",
        ),
        (
            "    python -c pass / import the supervisor, spawn -> exit",
            f"{b['python']['round_ms']:.1f} / {b['imports']['round_ms']:.1f} ms",
            "",
            "",
            "",
        ),
        (
            f"(b) one idle supervisor (median of {idle['shims']}): RSS / USS",
            f"{idle['shim_rss_mb']:.1f} / {idle['shim_uss_mb']:.1f} MB",
            f"{idle['bare_python_rss_mb']:.1f} / {idle['bare_python_uss_mb']:.1f} MB bare python",
            "",
            "",
        ),
        (
            "    its CPU while idle / the follower's, per attempt",
            f"{idle['shim_cpu_share'] * 100:.3f}"
            f" / {idle['follower_cpu_share_per_attempt'] * 100:.3f} %",
            f"{idle['bare_python_cpu_share'] * 100:.3f} % bare python",
            "",
            "",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "TrafficControl adoption bench [real tc run, supervisors and command agents],"
        " durability=process (SQLite WAL, synchronous=NORMAL)",
    ]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    before, after = r["load_avg_1m"]
    lines += [
        "",
        f"load average (1 min) {before:.2f} before, {after:.2f} after; processes left to kill at"
        f" the end: {r['left_to_kill']}",
        f"(a) {held} agents under tc run started in {a['all_started_s']:.1f} s, then SIGKILL;"
        f" {a['queued']} queued; medians of {cases['live']['runs']} runs;"
        f" exit records after SIGTERM to the agents: {r['start']['exit_records']}",
    ]
    for name in ("live", "floor", "finished", "interrupted"):
        c = cases[name]
        lines.append(
            f"    {name}: exec->main {c['entered_s']:.2f} s,"
            f" App.start()+check {c['start_s']:.2f} s,"
            f" start batch committed at {c['start_batch_s']:.2f} s ({c['adopted']} adopted,"
            f" {c['adopted_finished']} of them finished, {c['interrupted']} interrupted);"
            f" from exec {c['from_exec_range_s'][0]:.2f}-{c['from_exec_range_s'][1]:.2f} s;"
            f" {c['dispatched']} dispatched ({c['dispatched_queued']} queued tasks)"
        )
    lines.append(
        f"(b) {b['attempts']} rounds; overhead per attempt: start +{b['start_overhead_ms']:.1f} ms,"
        f" round trip +{b['round_overhead_ms']:.1f} ms; idle sampled {idle['sample_s']:.1f} s;"
        f" following {idle['shims']} attempts:"
        f" {idle['follower_cpu_share_per_attempt'] * idle['shims'] * 100:.1f} % of a core"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.adoption",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--held", type=int, default=None, help="attempts left running [100]")
    parser.add_argument("--queued", type=int, default=None, help="tasks queued while down [10]")
    parser.add_argument("--repeat", type=int, default=None, help="children per case in (a) [5]")
    parser.add_argument("--attempts", type=int, default=None, help="rounds in (b) [30]")
    parser.add_argument("--idle-shims", type=int, default=None, help="idle supervisors [--held]")
    parser.add_argument("--idle-sample", type=float, default=None, help="idle CPU sample [5 s]")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the state homes go")
    parser.add_argument(
        "--quick", action="store_true", help="5 held, 2 queued, 1 run per case, 5 rounds"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--child", choices=["measure", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-agents", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "measure":
        child_measure(args.home, args.max_agents, args.spawned_at)
        return 1
    if args.child == "bare":
        print(json.dumps(child_bare(args.spawned_at)))
        return 0

    quick = args.quick
    held = args.held or (5 if quick else 100)
    queued = args.queued or (2 if quick else 10)
    repeat = args.repeat or (1 if quick else 5)
    attempts = args.attempts or (5 if quick else 30)
    idle_shims = args.idle_shims or held
    idle_sample = args.idle_sample or (1.0 if quick else 5.0)
    quiet = args.json
    if args.tmpdir is not None:
        args.tmpdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tc-bench-adoption-", dir=args.tmpdir) as tmp:
        root = Path(tmp)
        try:
            _log(quiet, f"(a) {held} agents under a real tc run")
            built = build_home(root, held, queued, quiet)
            start = run_start_cases(built, root, repeat, quiet)
            _log(quiet, f"(b) supervisor overhead: {attempts} rounds")
            overhead = asyncio.run(run_overhead(root, attempts))
            _log(quiet, f"(b) {idle_shims} idle supervisors, sampled {idle_sample:g} s")
            idle = asyncio.run(run_idle(root, idle_shims, idle_sample))
        finally:
            left = clean_up(str(root))
    facts = {k: v for k, v in built.items() if k not in ("home", "logs", "agent_pids")}
    cases = start["cases"]
    result = {
        "build": facts,
        "start": start,
        "overhead": overhead,
        "idle": idle,
        "left_to_kill": left,
        "load_avg_1m": [load_before[0], os.getloadavg()[0]],
        "goals": {"start_s": GOAL_START_S},
        "pass": {
            "start_adopting_live": cases["live"]["from_exec_s"] < GOAL_START_S,
            "start_adopting_finished": cases["finished"]["from_exec_s"] < GOAL_START_S,
        },
    }
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
