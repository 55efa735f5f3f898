"""Failover benchmark: how long the cluster goes without a dispatching leader.

Run from the repository root::

    python -m bench.failover                 # 20 SIGKILL failovers, 10 handoffs (~3 min)
    python -m bench.failover --quick         # 3 and 2 (smoke test)
    python -m bench.failover --chaos 30      # 30 minutes of random faults: availability
    python -m bench.failover --json          # one JSON object on stdout

Real processes: two ``tc run`` (a home each, one PostgreSQL database of the local
server made for the run and dropped after it; for ``--chaos`` a private server this
bench starts, so that it can restart it), ``command`` agents (``sh -c 'sleep 0.3'``)
under supervisors, ``--agents`` at once over a backlog that never runs dry. Times
are the wall clock of this one machine: the bench's fault times against the
journal's event times.

(a) SIGKILL of the leader -> the standby's first ``AttemptDispatched`` (the journal's
    ``at`` of the first event of the new epoch of that type), ``--kills`` times, each
    with a fresh standby started once the last one took over; median and p95. Goal:
    median < 3 s.
(b) ``tc handoff`` -> the new leader's first dispatch, ``--handoffs`` times; also the
    attempts the handoffs interrupted (goal: 0, none restarted) and the gap from
    the old leader's last dispatch to the new one's first (goal: < 1 s).
(c) ``--chaos MINUTES``: every 30-90 s (``--every``, seeded) one of: SIGKILL the leader, SIGSTOP it
    past its lease (then SIGCONT: it must step down), ``tc handoff``, restart
    PostgreSQL (``pg_ctl restart -m fast``); a standby is restarted after each kill.
    Tasks are submitted every 5 s. A fault's disruption is from the fault to the next
    dispatch; availability is 1 - (sum of disruptions) / duration (a conservative
    figure: it counts the natural gap between two dispatches too). Goal >= 99.9 %;
    also reported: the mean disruption per fault, and the fault rate at which 99.9 %
    holds (mean disruption / 0.001).
    At the end the journal is checked: epochs never decrease, ``verify_journal``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench.store import scratch_database

TC = [sys.executable, "-m", "trafficcontrol"]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
TTL_S = 2.0


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# -- the database ----------------------------------------------------------------------
def _as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    command = argv if os.geteuid() != 0 else ("runuser", "-u", "postgres", "--", *argv)
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


class PrivateServer:
    """A PostgreSQL cluster of the bench's own (``--chaos`` restarts it)."""

    def __init__(self) -> None:
        self.root = Path(f"/tmp/tc-bench-pg-{os.getpid()}")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def __enter__(self) -> PrivateServer:
        if not (PG_BIN / "initdb").exists():
            raise SystemExit(f"{PG_BIN}/initdb is missing: apt-get install -y postgresql")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(mode=0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        made = _as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres"
        )
        if made.returncode != 0:
            raise SystemExit(made.stderr)
        self.pg_ctl("start", "-l", str(self.root / "server.log"))
        return self

    def pg_ctl(self, *args: str) -> None:
        done = _as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root / 'data'}",
            "-w",
            *args,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)}: {done.stderr}")

    def __exit__(self, *exc: object) -> None:
        try:
            self.pg_ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# -- the cluster ---------------------------------------------------------------------------
class Cluster:
    def __init__(self, root: Path, url: str, *, agents: int) -> None:
        self.root = root
        self.url = url
        self.agents = agents
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.homes: dict[int, Path] = {}
        self._n = 0
        self._tasks = 0
        (root / "w").mkdir()

    def env(self, home: Path) -> dict[str, str]:
        return {**os.environ, "TC_STORE": self.url, "TC_HOME": str(home), "NO_COLOR": "1"}

    def submit(self, n: int) -> None:
        lines = [
            "[[projects]]",
            'id = "w"',
            f'path = "{self.root / "w"}"',
            'agent = "command"',
            'command = ["sh", "-c", "sleep 0.3"]',
        ]
        for i in range(self._tasks, self._tasks + n):
            lines += ["[[tasks]]", f'id = "t{i}"', 'project = "w"', 'prompt = "p"']
        self._tasks += n
        backlog = self.root / f"b{self._tasks}.toml"
        backlog.write_text("\n".join(lines) + "\n")
        home = self.root / "submitter"
        home.mkdir(exist_ok=True)
        subprocess.run(
            [*TC, "submit", str(backlog)], env=self.env(home), check=True, capture_output=True
        )

    def start(self) -> subprocess.Popen[bytes]:
        self._n += 1
        home = self.root / f"i{self._n}"
        home.mkdir()
        (home / "config.toml").write_text(
            "[run]\ngrace_s = 1.0\nrequest_poll_s = 0.05\nsnapshot_interval_s = 0\n"
            f"[cluster]\nlease_ttl_s = {TTL_S}\nstandby_poll_s = 0.05\n"
        )
        with (home / "stderr.txt").open("w") as err:
            proc = subprocess.Popen(
                [*TC, "run", "--no-live", "--forever", "--max-agents", str(self.agents)],
                env=self.env(home),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.procs[proc.pid] = proc
        self.homes[proc.pid] = home
        return proc

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as conn:
                    return conn.execute(sql.encode(), args).fetchall()
            except psycopg.OperationalError:  # the server restarting (--chaos)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def leader(self) -> tuple[int | None, int]:
        rows = self.query("SELECT holder, epoch, expires_at > clock_timestamp() FROM leases")
        if not rows or not rows[0][2] or rows[0][0].startswith("tc-cli"):
            return None, int(rows[0][1]) if rows else 0
        return int(rows[0][0].split(":")[1]), int(rows[0][1])

    def standing_by(self, proc: subprocess.Popen[bytes]) -> bool:
        rows = self.query(
            "SELECT role FROM instances WHERE pid = %s ORDER BY seen_at DESC LIMIT 1", proc.pid
        )
        return bool(rows) and rows[0][0] == "standby"

    def interrupted(self) -> int:
        rows = self.query(
            "SELECT count(*) FROM events WHERE type = 'attempt_finished'"
            " AND convert_from(body, 'UTF8')::jsonb->>'outcome' = 'interrupted'"
        )
        return int(rows[0][0])

    def first_dispatch(self, epoch: int) -> float | None:
        rows = self.query(
            "SELECT min(at) FROM events WHERE epoch = %s AND type = 'attempt_dispatched'", epoch
        )
        return rows[0][0]

    def last_dispatch(self, epoch: int) -> float | None:
        rows = self.query(
            "SELECT max(at) FROM events WHERE epoch = %s AND type = 'attempt_dispatched'", epoch
        )
        return rows[0][0]

    def dispatch_after(self, at: float) -> float | None:
        rows = self.query(
            "SELECT min(at) FROM events WHERE type = 'attempt_dispatched' AND at > %s", at
        )
        return rows[0][0]

    def wait(self, what: str, condition: Callable[[], Any], timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while not (value := condition()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.02)
        return value

    def proc_of(self, pid: int) -> subprocess.Popen[bytes]:
        return self.procs[pid]

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
        subprocess.run(["pkill", "-9", "-f", f"TC_AGENT_RUN={self.root}"], check=False)


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- (a) and (b) --------------------------------------------------------------------------
def run_failovers(
    root: Path, url: str, *, kills: int, handoffs: int, agents: int
) -> dict[str, Any]:
    cluster = Cluster(root, url, agents=agents)
    try:
        cluster.submit(4000)
        leader = cluster.start()
        cluster.wait("the first leader", lambda: cluster.leader()[0] == leader.pid)
        standby = cluster.start()
        gaps: list[float] = []
        for n in range(kills):
            cluster.wait("a standby", lambda s=standby: cluster.standing_by(s))  # type: ignore[misc]
            _pid, epoch = cluster.leader()
            cluster.wait("dispatching", lambda e=epoch: cluster.first_dispatch(e))  # type: ignore[misc]
            killed_at = time.time()
            leader.kill()
            leader.wait()
            cluster.wait("the takeover", lambda s=standby: cluster.leader()[0] == s.pid)  # type: ignore[misc]
            _pid, new_epoch = cluster.leader()
            first = cluster.wait(
                "the new leader's dispatch", lambda e=new_epoch: cluster.first_dispatch(e)
            )  # type: ignore[misc]
            gaps.append(first - killed_at)
            progress(f"kill {n + 1}/{kills}: next dispatch after {gaps[-1]:.3f} s")
            leader, standby = standby, cluster.start()
        # A kill between journaling a dispatch and starting its agent interrupts that
        # attempt (its agent never runs: the next leader fences it); a handoff must not.
        interrupted_by_kills = cluster.interrupted()
        handoff_gaps: list[float] = []
        dispatch_gaps: list[float] = []
        phases: list[tuple[float, float, float]] = []
        for n in range(handoffs):
            cluster.wait("a standby", lambda s=standby: cluster.standing_by(s))  # type: ignore[misc]
            _pid, epoch = cluster.leader()
            cluster.wait("dispatching", lambda e=epoch: cluster.first_dispatch(e))  # type: ignore[misc]
            asked_at = time.time()
            subprocess.run(
                [*TC, "handoff"],
                env=cluster.env(cluster.homes[leader.pid]),
                check=True,
                capture_output=True,
            )
            cluster.wait("the takeover", lambda s=standby: cluster.leader()[0] == s.pid)  # type: ignore[misc]
            _pid, new_epoch = cluster.leader()
            first = cluster.wait(
                "the new leader's dispatch", lambda e=new_epoch: cluster.first_dispatch(e)
            )  # type: ignore[misc]
            last_old = cluster.last_dispatch(epoch) or asked_at
            stopped = cluster.query(
                "SELECT max(at) FROM events WHERE epoch = %s AND type = 'orchestrator_stopped'",
                epoch,
            )[0][0]
            restarted = cluster.query(
                "SELECT min(at) FROM events WHERE epoch = %s AND type = 'orchestrator_started'",
                new_epoch,
            )[0][0]
            phases.append((stopped - asked_at, restarted - stopped, first - restarted))
            handoff_gaps.append(first - asked_at)
            dispatch_gaps.append(first - last_old)
            progress(
                f"handoff {n + 1}/{handoffs}: request -> dispatch {handoff_gaps[-1]:.3f} s,"
                f" last old -> first new dispatch {dispatch_gaps[-1]:.3f} s"
                f" (request -> old stopped {phases[-1][0]:.3f} s, -> new started"
                f" {phases[-1][1]:.3f} s, -> first dispatch {phases[-1][2]:.3f} s)"
            )
            leader.wait(timeout=60)
            leader, standby = standby, cluster.start()
        interrupted_by_handoffs = cluster.interrupted() - interrupted_by_kills
        adopted = cluster.query("SELECT count(*) FROM events WHERE type = 'attempt_adopted'")[0][0]
        return {
            "kills": len(gaps),
            "kill_to_dispatch_s": {
                "median": statistics.median(gaps) if gaps else None,
                "p95": _percentile(gaps, 0.95) if gaps else None,
                "max": max(gaps, default=None),
                "all": [round(g, 3) for g in gaps],
            },
            "handoffs": len(handoff_gaps),
            "handoff_to_dispatch_s": {
                "median": statistics.median(handoff_gaps) if handoff_gaps else None,
                "max": max(handoff_gaps, default=None),
            },
            "handoff_phases_median_s": {
                name: statistics.median(p[i] for p in phases) if phases else None
                for i, name in enumerate(
                    ("request_to_old_stopped", "to_new_started", "to_dispatch")
                )
            },
            "handoff_dispatch_gap_s": {
                "median": statistics.median(dispatch_gaps) if dispatch_gaps else None,
                "max": max(dispatch_gaps, default=None),
            },
            "interrupted_by_kills": interrupted_by_kills,
            "interrupted_attempts": interrupted_by_handoffs,
            "adopted_attempts": adopted,
        }
    finally:
        cluster.close()


# -- (c) ---------------------------------------------------------------------------------
def run_chaos(
    root: Path,
    minutes: float,
    *,
    agents: int,
    seed: int,
    every: tuple[float, float] = (30.0, 90.0),
    kinds: Sequence[str] = ("kill", "stop", "handoff", "pg_restart"),
) -> dict[str, Any]:
    rng = random.Random(seed)
    with PrivateServer() as server:
        cluster = Cluster(root, server.url, agents=agents)
        faults: list[dict[str, Any]] = []
        try:
            cluster.submit(2000)
            first = cluster.start()
            cluster.wait("the first leader", lambda: cluster.leader()[0] == first.pid)
            cluster.start()
            started = time.time()
            end = started + minutes * 60
            next_submit = time.monotonic() + 5
            while time.time() < end:
                pause = rng.uniform(*every)
                until = time.monotonic() + pause
                while time.monotonic() < until:
                    if time.monotonic() >= next_submit:
                        cluster.submit(20)
                        next_submit = time.monotonic() + 5
                    time.sleep(0.05)
                cluster.wait("a leader", lambda: cluster.leader()[0] is not None, 120)
                pid = cluster.leader()[0]
                if pid is None:
                    continue
                kind = rng.choice(list(kinds))
                at = time.time()
                if kind == "kill":
                    cluster.proc_of(pid).kill()
                    cluster.start()
                elif kind == "stop":
                    proc = cluster.proc_of(pid)
                    proc.send_signal(signal.SIGSTOP)
                    time.sleep(TTL_S + 1)  # past its lease: a standby takes over
                    proc.send_signal(signal.SIGCONT)
                elif kind == "handoff":
                    subprocess.run(
                        [*TC, "handoff"],
                        env=cluster.env(cluster.homes[pid]),
                        capture_output=True,
                        check=False,
                        timeout=60,
                    )
                    cluster.start()  # the old leader exits after a handoff
                else:
                    server.pg_ctl("restart", "-m", "fast", "-l", str(server.root / "server.log"))
                # From the fault to a dispatch made after it took effect (for a restart:
                # once the server is back, not one slipped in while it was stopping).
                after = time.time() if kind == "pg_restart" else at
                resumed = cluster.wait("a dispatch", lambda a=after: cluster.dispatch_after(a), 120)  # type: ignore[misc]
                faults.append({"kind": kind, "at": at, "disruption_s": resumed - at})
                progress(f"{kind}: next dispatch after {resumed - at:.3f} s")
            duration = time.time() - started
            epochs = [row[0] for row in cluster.query("SELECT epoch FROM events ORDER BY seq")]
        finally:
            cluster.close()
    down = sum(f["disruption_s"] for f in faults)
    mean = down / len(faults) if faults else 0.0
    return {
        "every_s": list(every),
        "mean_disruption_s": mean,
        "three_nines_if_faults_rarer_than_s": mean / 0.001,
        "minutes": round(duration / 60, 2),
        "faults": len(faults),
        "by_kind": {
            kind: sum(1 for f in faults if f["kind"] == kind)
            for kind in ("kill", "stop", "handoff", "pg_restart")
        },
        "availability": 1 - down / duration,
        "worst_disruption": max(faults, key=lambda f: f["disruption_s"], default=None),
        "epochs_monotonic": epochs == sorted(epochs),
    }


def report(result: dict[str, Any]) -> str:
    lines = ["Failover (bench.failover)"]
    if "kills" in result:
        k = result["kill_to_dispatch_s"]
        ok = k["median"] is not None and k["median"] < 3.0
        lines.append(
            f"(a) SIGKILL -> next dispatch: median {k['median']:.3f} s, p95 {k['p95']:.3f} s,"
            f" max {k['max']:.3f} s over {result['kills']} kills"
            f"  [goal median < 3 s: {'PASS' if ok else 'MISS'}]"
        )
        h, g = result["handoff_to_dispatch_s"], result["handoff_dispatch_gap_s"]
        if result["handoffs"]:
            ok = g["max"] < 1.0 and result["interrupted_attempts"] == 0
            lines.append(
                f"(b) tc handoff -> next dispatch: median {h['median']:.3f} s, max"
                f" {h['max']:.3f} s; old leader's last -> new leader's first dispatch: median"
                f" {g['median']:.3f} s, max {g['max']:.3f} s; attempts interrupted by the"
                f" handoffs: {result['interrupted_attempts']} (by the kills, dispatched but"
                f" not started: {result['interrupted_by_kills']}), adopted:"
                f" {result['adopted_attempts']}"
                f"  [goal gap < 1 s, none interrupted: {'PASS' if ok else 'MISS'}]"
            )
    if "availability" in result:
        ok = result["availability"] >= 0.999
        worst = result["worst_disruption"]
        lines.append(
            f"(c) chaos {result['minutes']} min, {result['faults']} faults {result['by_kind']}:"
            f" availability {result['availability'] * 100:.3f} %, worst"
            f" {worst['kind'] if worst else '-'} {worst['disruption_s'] if worst else 0:.3f} s,"
            f" epochs monotonic: {result['epochs_monotonic']}"
            f"  [goal >= 99.9 %: {'PASS' if ok else 'MISS'}]"
        )
        lines.append(
            f"    mean disruption {result['mean_disruption_s']:.3f} s per fault: 99.9 % holds"
            f" while faults are rarer than one per"
            f" {result['three_nines_if_faults_rarer_than_s'] / 60:.1f} min"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.failover",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--handoffs", type=int, default=10)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--chaos", type=float, metavar="MINUTES", default=None)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--every", default="30:90", help="--chaos: seconds between faults, MIN:MAX (uniform)"
    )
    parser.add_argument(
        "--kinds", default="kill,stop,handoff,pg_restart", help="--chaos: the faults to draw from"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tmpdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.kills, args.handoffs = 3, 2
    with tempfile.TemporaryDirectory(prefix="tc-bench-failover-", dir=args.tmpdir) as tmp:
        if args.chaos is not None:
            low, _, high = args.every.partition(":")
            result = run_chaos(
                Path(tmp),
                args.chaos,
                agents=args.agents,
                seed=args.seed,
                every=(float(low), float(high or low)),
                kinds=args.kinds.split(","),
            )
        else:
            with scratch_database() as url:
                result = run_failovers(
                    Path(tmp), url, kills=args.kills, handoffs=args.handoffs, agents=args.agents
                )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
