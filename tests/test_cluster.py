"""Several ``tc run`` on one PostgreSQL store, as real processes: one leads, the others
follow as hot standbys and take over — after a SIGKILL, a SIGSTOP past the lease, a
network cut from PostgreSQL, and a ``tc handoff``.

The agents are real subprocesses (``tests/agents/agent.py --ledger``: each appends
``START`` and ``END`` lines to a ledger outside the state homes) under supervisors
that outlive the instance that started them, so a new leader adopts them. Each
instance has a state home of its own (as on another machine), all share the project
directory and the ledger. Checked every time, at the store and in the ledger:

- no write of a stale epoch was accepted: epochs never decrease along the journal;
- every task done exactly once in the journal, and no agent ran to completion twice;
- ``verify_journal`` clean.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli_helpers import TC, tc
from tests.helpers import AGENT
from tests.http_helpers import served
from tests.pg import CuttingProxy, admin, url_of
from trafficcontrol.adapters.stores.postgres import PostgresJournal
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import (
    AnyEvent,
    AttemptAdopted,
    AttemptDispatched,
    AttemptFinished,
)
from trafficcontrol.domain.invariants import verify_journal
from trafficcontrol.domain.model import Outcome

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

AGENTS = 4
WAIT_S = 60.0


class Cluster:
    """Instances (``tc run`` processes, a home each) on one database."""

    def __init__(self, root: Path, url: str, *, tasks: int, ttl_s: float) -> None:
        self.root = root
        self.url = url
        self.dbname = url.rpartition("/")[2]
        self.ledger = root / "ledger.txt"
        self.ttl_s = ttl_s
        self.tasks = tasks
        self.procs: dict[str, subprocess.Popen[str]] = {}
        (root / "w").mkdir()
        lines = [
            "[[projects]]",
            'id = "w"',
            'path = "w"',
            'agent = "command"',
            f'command = ["{sys.executable}", "{AGENT}", "--work-max", "0.5",'
            f' "--ledger", "{self.ledger}"]',
        ]
        for i in range(tasks):
            lines += ["[[tasks]]", f'id = "t{i}"', 'project = "w"', 'prompt = "p"']
        (root / "b.toml").write_text("\n".join(lines) + "\n")
        tc("submit", str(root / "b.toml"), home=self.home("submit"), env=self.env())

    def home(self, name: str) -> Path:
        home = self.root / name
        if not home.exists():
            home.mkdir()
            (home / "config.toml").write_text(
                "[run]\ngrace_s = 1.0\nrequest_poll_s = 0.05\nsnapshot_interval_s = 0\n"
                f"[cluster]\nlease_ttl_s = {self.ttl_s}\nstandby_poll_s = 0.05\n"
            )
        return home

    def env(self, url: str | None = None) -> dict[str, str]:
        return {**os.environ, "TC_STORE": url or self.url, "COLUMNS": "200", "NO_COLOR": "1"}

    def start(self, name: str, url: str | None = None) -> subprocess.Popen[str]:
        home = self.home(name)
        with (home / "stdout.txt").open("w") as out, (home / "stderr.txt").open("w") as err:
            proc = subprocess.Popen(  # the child keeps its own copies of the files
                [*TC, "run", "--no-live", "--max-agents", str(AGENTS)],
                env={**self.env(url), "TC_HOME": str(home)},
                stdout=out,
                stderr=err,
                text=True,
            )
        self.procs[name] = proc
        return proc

    def stderr(self, name: str) -> str:
        return (self.home(name) / "stderr.txt").read_text()

    # -- what the store says --------------------------------------------------------
    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with admin(self.dbname) as conn:
            return conn.execute(sql.encode(), args).fetchall()

    def lease(self) -> tuple[int | None, int]:
        """(pid of the live lease's holder or None, epoch)."""
        rows = self.query("SELECT holder, epoch, expires_at > clock_timestamp() FROM leases")
        if not rows:
            return None, 0
        holder, epoch, live = rows[0]
        pid = int(holder.split(":")[1]) if live and not holder.startswith("tc-cli") else None
        return pid, int(epoch)

    def role_of(self, proc: subprocess.Popen[str]) -> str | None:
        """The role the process last reported (its newest heartbeat)."""
        rows = self.query(
            "SELECT role FROM instances WHERE pid = %s ORDER BY seen_at DESC LIMIT 1", proc.pid
        )
        return rows[0][0] if rows else None

    def ended(self) -> int:
        return sum(1 for line in self._ledger() if line[0] == "END")

    def _ledger(self) -> list[list[str]]:
        if not self.ledger.exists():
            return []
        return [line.split() for line in self.ledger.read_text().splitlines()]

    def wait(self, what: str, condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        """Until ``condition`` holds (bounded): the processes' state, read as it changes."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                logs = {n: self.stderr(n)[-3000:] for n in self.procs}
                raise AssertionError(f"timed out waiting for {what}; stderr: {logs}")
            for name, proc in self.procs.items():
                if proc.poll() not in (None, 0, -signal.SIGKILL):
                    raise AssertionError(f"{name} exited {proc.returncode}: {self.stderr(name)}")
            time.sleep(0.02)  # polling other processes' state: nothing to await

    def leads(self, proc: subprocess.Popen[str]) -> Callable[[], bool]:
        return lambda: self.lease()[0] == proc.pid

    def stands_by(self, proc: subprocess.Popen[str]) -> Callable[[], bool]:
        return lambda: self.role_of(proc) == "standby"

    def finish(self, *names: str) -> None:
        for name in names:
            proc = self.procs[name]
            try:
                proc.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError(
                    f"{name} did not finish: {self.stderr(name)[-3000:]}"
                ) from None
            assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{self.stderr(name)}"

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()

    # -- the checks every test makes ------------------------------------------------------
    def events(self) -> list[AnyEvent]:
        journal = PostgresJournal(self.url)
        try:
            return [event for _seq, event in journal.read()]
        finally:
            journal.close()

    def check(self) -> list[AnyEvent]:
        epochs = [row[0] for row in self.query("SELECT epoch FROM events ORDER BY seq")]
        assert epochs == sorted(epochs), "a write of a stale epoch was accepted"
        events = self.events()
        ends = [e for e in events if isinstance(e, AttemptFinished)]
        dispatched = [e for e in events if isinstance(e, AttemptDispatched)]
        succeeded = {e.attempt_id for e in ends if e.outcome is Outcome.SUCCEEDED}
        assert Counter(a.split("#")[0] for a in succeeded) == Counter(
            {f"t{i}": 1 for i in range(self.tasks)}
        ), "not every task done exactly once"
        assert Counter(e.attempt_id for e in ends) == Counter({e.attempt_id: 1 for e in dispatched})
        assert verify_journal(events, SchedulerConfig(max_agents=AGENTS), settled=True) == []
        done = Counter(line[1] for line in self._ledger() if line[0] == "END")
        twice = sorted(t for t, n in done.items() if n > 1)
        ran = [line for line in self._ledger() if line[1] in twice]
        theirs = [e for e in events if getattr(e, "attempt_id", "").split("#")[0] in twice]
        assert twice == [], f"agents ran twice: {twice}; ledger {ran}; journal {theirs}"
        return events


@pytest.fixture
def cluster(
    tmp_path: Path, pg_url: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(*, tasks: int = 40, ttl_s: float = 6.0) -> Cluster:
        made.append(Cluster(tmp_path, pg_url, tasks=tasks, ttl_s=ttl_s))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_a_killed_leader_is_replaced_by_a_standby_twice(cluster: Callable[..., Cluster]) -> None:
    c = cluster(tasks=60)
    a = c.start("a")
    c.wait("a to lead", c.leads(a))
    b = c.start("b")
    c.wait("b to stand by", c.stands_by(b))
    c.wait("agents to work", lambda: c.ended() >= 8)
    _pid, first_epoch = c.lease()
    a.kill()  # SIGKILL: its session ends, the store lets b take over without waiting
    c.wait("b to take over", c.leads(b))
    assert c.lease()[1] == first_epoch + 1
    d = c.start("d")
    c.wait("d to stand by", c.stands_by(d))
    done = c.ended()
    c.wait("b to dispatch", lambda: c.ended() >= done + 4)
    b.kill()
    c.wait("d to take over", c.leads(d))
    c.finish("d")
    events = c.check()
    adopted = [e for e in events if isinstance(e, AttemptAdopted)]
    assert adopted, "agents running at each kill are adopted, not run again"


def test_split_brain_a_stopped_leader_is_fenced_and_steps_down(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster(tasks=40, ttl_s=1.5)
    a = c.start("a")
    c.wait("a to lead", c.leads(a))
    b = c.start("b")
    c.wait("b to stand by", c.stands_by(b))
    c.wait("agents to work", lambda: c.ended() >= 5)
    _pid, old_epoch = c.lease()
    a.send_signal(signal.SIGSTOP)  # alive, its session open: only expiry frees the lease
    c.wait("b to take over at expiry", c.leads(b))
    done = c.ended()
    c.wait("b to dispatch", lambda: c.ended() >= done + 3)
    a.send_signal(signal.SIGCONT)
    c.wait("a to step down and stand by", c.stands_by(a))
    c.finish("b", "a")  # b finishes the backlog; a then takes the lease, finds it done
    c.check()
    stale = c.query(
        "SELECT count(*) FROM events WHERE epoch = %s AND seq > ("
        " SELECT min(seq) FROM events WHERE epoch > %s)",
        old_epoch,
        old_epoch,
    )
    assert stale == [(0,)]
    assert "stepping_down" in c.stderr("a")


def test_a_leader_cut_off_from_postgresql_steps_down(cluster: Callable[..., Cluster]) -> None:
    c = cluster(tasks=40, ttl_s=2.0)
    with CuttingProxy() as proxy:
        parts = psycopg.conninfo.conninfo_to_dict(c.url)
        via_proxy = url_of(c.dbname).replace(f":{parts.get('port', 5432)}/", f":{proxy.port}/")
        a = c.start("a", via_proxy)
        c.wait("a to lead", c.leads(a))
        b = c.start("b")
        c.wait("b to stand by", c.stands_by(b))
        c.wait("agents to work", lambda: c.ended() >= 5)
        proxy.partition()  # the server sees a's sessions end: b need not wait for expiry
        c.wait("b to take over", c.leads(b))
        c.wait("a to step down", lambda: "stepping_down" in c.stderr("a"))
        proxy.heal()
        c.wait("a to stand by again", c.stands_by(a))
        c.finish("b", "a")
    c.check()


def test_handoff_under_load_restarts_no_agent(cluster: Callable[..., Cluster]) -> None:
    c = cluster(tasks=40)
    a = c.start("a")
    c.wait("a to lead", c.leads(a))
    alone = tc("handoff", home=c.home("a"), env=c.env(), check=False)
    assert alone.returncode == 1 and "no standby is running" in alone.stderr, alone.stderr
    assert c.lease()[0] == a.pid, "a refused handoff changes nothing"
    b = c.start("b")
    c.wait("b to stand by", c.stands_by(b))
    c.wait("agents to work", lambda: c.ended() >= 5)
    handed = tc("handoff", home=c.home("a"), env=c.env())
    assert f":{b.pid}:" in handed.stdout and "leads now" in handed.stdout, handed.stdout
    c.finish("a", "b")
    events = c.check()
    ends = [e for e in events if isinstance(e, AttemptFinished)]
    assert all(e.outcome is Outcome.SUCCEEDED for e in ends), "no attempt interrupted"
    started = Counter(line[1] for line in c._ledger() if line[0] == "START")
    assert set(started.values()) == {1}, "every agent started once"
    assert any(isinstance(e, AttemptAdopted) for e in events), "b adopted a's running agents"


def test_readyz_and_the_cluster_api_say_who_leads_and_how_far_the_standby_is(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TC_STORE", pg_url)
    (tmp_path / "b.toml").write_text(
        '[[projects]]\nid = "p"\npath = "p"\nagent = "sim"\n'
        '[[tasks]]\nid = "t1"\nproject = "p"\nprompt = "p"\n'
    )
    (tmp_path / "p").mkdir()
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        home.mkdir()
        (home / "config.toml").write_text("[cluster]\nstandby_poll_s = 0.05\n")
    tc("submit", str(tmp_path / "b.toml"), home=homes[0])
    with served(homes[0]) as a:
        wait_until("a to lead", lambda: a.get("/readyz").json().get("role") == "leader")
        with served(homes[1]) as b:
            wait_until("b to stand by", lambda: b.get("/readyz").json().get("role") == "standby")
            leader, standby = a.get("/readyz"), b.get("/readyz")
            assert leader.status_code == 200 and standby.status_code == 200
            assert leader.json()["epoch"] == standby.json()["epoch"] >= 2  # 1: tc submit
            assert standby.json()["lag_events"] == 0 and standby.json()["lag_s"] < 5
            assert standby.json()["following"] is True
            cluster = b.get("/api/cluster").json()
            assert cluster["shared"] is True and cluster["this"]["role"] == "standby"
            (lease,) = cluster["leases"]
            assert lease["live"] and f":{a.process.pid}:" in lease["holder"]
            roles = {i["pid"]: i["role"] for i in cluster["instances"]}
            assert roles[a.process.pid] == "leader" and roles[b.process.pid] == "standby"
            status = json.loads(tc("status", "--json", home=homes[1]).stdout)
            assert (
                status["orchestrator_running"] and status["leader"]["instance"] == lease["holder"]
            )
            page = b.get("/health")
            assert page.status_code == 200 and 'id="cluster"' in page.text
            assert 'id="cluster-role">standby' in page.text and lease["holder"] in page.text


def wait_until(what: str, condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # another process's state: nothing to await
