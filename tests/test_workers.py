"""``tc worker``: attempts a leader queues for workers on other machines, as real
processes on one PostgreSQL store — a leader (``tc run``) and ``tc worker`` processes,
each with a state home and a checkout of its own (as on another machine).

The project's agent is ``command@workers``: the leader decides every dispatch (limits,
locks, capacity), the workers claim and run them in worktrees of their own checkout.
Checked: every task done exactly once in the journal and in the agents' ledger, the
work spread over both workers, a lost worker's attempts retried on the other, and the
leader never prepared a worktree itself.
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

import psutil
import pytest

from tests.cli_helpers import TC, tc
from tests.helpers import AGENT, git_repo
from tests.pg import admin
from trafficcontrol.adapters.agents.process_group import RUN_MARKER_ENV
from trafficcontrol.adapters.stores.postgres import PostgresJournal
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import AnyEvent, AttemptDispatched, AttemptFinished
from trafficcontrol.domain.invariants import verify_journal
from trafficcontrol.domain.model import Outcome

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

WAIT_S = 90.0


class Site:
    """A leader and its workers on one database; a git project each has a checkout of."""

    def __init__(self, root: Path, url: str, *, tasks: int, lost_after_s: float = 15.0) -> None:
        self.root = root
        self.url = url
        self.dbname = url.rpartition("/")[2]
        self.tasks = tasks
        self.ledger = root / "ledger.txt"
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.config = (
            "[run]\ngrace_s = 1.0\nrequest_poll_s = 0.05\n"
            f"[cluster]\nworker_poll_s = 0.05\nworker_lost_after_s = {lost_after_s}\n"
        )
        git_repo(root / "repo")
        lines = [
            "[[projects]]",
            'id = "repo"',
            f'path = "{root / "repo"}"',
            'agent = "command@workers"',
            f'command = ["{sys.executable}", "{AGENT}", "--work-max", "0.6",'
            f' "--ledger", "{self.ledger}"]',
        ]
        for i in range(tasks):
            lines += ["[[tasks]]", f'id = "t{i}"', 'project = "repo"', 'prompt = "p"']
        (root / "b.toml").write_text("\n".join(lines) + "\n")
        tc("submit", str(root / "b.toml"), home=self.home("leader"), env=self.env())

    def home(self, name: str) -> Path:
        home = self.root / name
        if not home.exists():
            home.mkdir()
            (home / "config.toml").write_text(self.config)
        return home

    def env(self) -> dict[str, str]:
        return {**os.environ, "TC_STORE": self.url, "NO_COLOR": "1"}

    def spawn(self, name: str, *argv: str) -> subprocess.Popen[str]:
        home = self.home(name)
        with (home / "stderr.txt").open("w") as err:
            self.procs[name] = subprocess.Popen(
                [*TC, *argv],
                env={**self.env(), "TC_HOME": str(home)},
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
            )
        return self.procs[name]

    def leader(self) -> subprocess.Popen[str]:
        return self.spawn("leader", "run", "--no-live", "--max-agents", "4")

    def worker(self, name: str, *, checkout: str = "repo") -> subprocess.Popen[str]:
        # A checkout of its own, as another machine would have.
        mine = self.root / f"{name}-checkout"
        if not mine.exists():
            subprocess.run(["git", "clone", "-q", str(self.root / checkout), str(mine)], check=True)
        return self.spawn(
            name, "worker", "--project", f"repo={mine}", "--host-id", name, "--max-agents", "2"
        )

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with admin(self.dbname) as conn:
            return conn.execute(sql.encode(), args).fetchall()

    def wait(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            if time.monotonic() > deadline:
                logs = {n: (self.home(n) / "stderr.txt").read_text()[-2000:] for n in self.procs}
                raise AssertionError(f"timed out waiting for {what}: {logs}")
            time.sleep(0.05)  # other processes' state: nothing to await

    def events(self) -> list[AnyEvent]:
        journal = PostgresJournal(self.url)
        try:
            return [event for _seq, event in journal.read()]
        finally:
            journal.close()

    def ledger_lines(self) -> list[list[str]]:
        if not self.ledger.exists():
            return []
        return [line.split() for line in self.ledger.read_text().splitlines()]

    def check(self) -> list[AnyEvent]:
        events = self.events()
        ends = [e for e in events if isinstance(e, AttemptFinished)]
        succeeded = {e.attempt_id for e in ends if e.outcome is Outcome.SUCCEEDED}
        assert Counter(a.split("#")[0] for a in succeeded) == Counter(
            {f"t{i}": 1 for i in range(self.tasks)}
        ), "not every task done exactly once"
        assert verify_journal(events, SchedulerConfig(max_agents=4), settled=True) == []
        done = Counter(line[1] for line in self.ledger_lines() if line[0] == "END")
        assert sorted(t for t, n in done.items() if n > 1) == [], "an agent ran twice"
        dispatched = [e for e in events if isinstance(e, AttemptDispatched)]
        assert {e.backend for e in dispatched} == {"command@workers"}
        assert not (self.home("leader") / "worktrees").exists(), "the leader made a worktree"
        return events

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for proc in marked_under(self.root):
            proc.kill()


def marked_under(root: Path) -> list[psutil.Process]:
    """Agents whose run marker (their log path) lies under ``root``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(RUN_MARKER_ENV, "").startswith(str(root)):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def site(tmp_path: Path, pg_url: str) -> Iterator[Callable[..., Site]]:
    made: list[Site] = []

    def make(**kw: Any) -> Site:
        made.append(Site(tmp_path, pg_url, **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_two_workers_share_the_attempts_and_each_task_runs_once(
    site: Callable[..., Site],
) -> None:
    s = site(tasks=24)
    s.worker("w1")
    s.worker("w2")
    leader = s.leader()
    leader.wait(timeout=WAIT_S)
    assert leader.returncode == 0, (s.home("leader") / "stderr.txt").read_text()
    s.check()
    by_worker = dict(s.query("SELECT worker, count(*) FROM work GROUP BY worker"))
    assert set(by_worker) == {"w1", "w2"} and sum(by_worker.values()) == 24, by_worker
    # Each ran in worktrees of its own checkout, never in the leader's project directory.
    for name in ("w1", "w2"):
        assert any((s.home(name) / "worktrees").rglob("README.md")), f"{name} made no worktree"
    cluster = json.loads(tc("cluster", "--json", home=s.home("leader"), env=s.env()).stdout)
    workers = {w["host_id"]: w for w in cluster["workers"]}
    assert set(workers) == {"w1", "w2"}
    assert all(w["projects"] == ["repo"] and w["max_agents"] == 2 for w in workers.values())
    assert not any(w["gone"] for w in workers.values())


def test_a_lost_worker_s_attempts_are_retried_on_another(site: Callable[..., Site]) -> None:
    s = site(tasks=12, lost_after_s=1.0)
    lost = s.worker("w1")
    leader = s.leader()
    s.wait(
        "w1 to run agents",
        lambda: (
            s.query("SELECT count(*) FROM work WHERE worker = 'w1' AND state = 'running'")[0][0]
            >= 2
        ),
    )
    lost.send_signal(signal.SIGKILL)  # the machine is gone: its agents with it
    for proc in marked_under(s.home("w1")):
        proc.kill()
    s.worker("w2")
    leader.wait(timeout=WAIT_S)
    assert leader.returncode == 0, (s.home("leader") / "stderr.txt").read_text()
    events = s.check()
    failed = [
        e
        for e in events
        if isinstance(e, AttemptFinished)
        and e.outcome is Outcome.FAILED
        and "w1 stopped reporting" in (e.error or "")
    ]
    assert failed, "w1's attempts were given up as lost"
    assert s.query("SELECT count(*) FROM work WHERE worker = 'w2' AND state = 'done'")[0][0] > 0


def test_agents_on_two_workers_never_overshoot_the_capacity_window(
    tmp_path: Path, pg_url: str
) -> None:
    """One leader meters every attempt wherever it runs: a 5-hour window of 500,000 units
    (reservations stop at 95%) over 20 simulated tasks of ~42,000 units each, on two
    workers: some run, the rest wait for the window, and usage stays within it."""
    (tmp_path / "p").mkdir()
    lines = [
        "[[projects]]",
        'id = "p"',
        f'path = "{tmp_path / "p"}"',
        'agent = "sim@workers"',
        "lock_in_place = false",
        "sim = { duration = 0.3, tokens_in = 20000 }",
    ]
    for i in range(20):
        lines += ["[[tasks]]", f'id = "t{i}"', 'project = "p"', 'prompt = "p"']
    (tmp_path / "b.toml").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "TC_STORE": pg_url, "NO_COLOR": "1"}
    homes = {name: tmp_path / name for name in ("leader", "w1", "w2")}
    for home in homes.values():
        home.mkdir()
        (home / "config.toml").write_text(
            "[run]\nrequest_poll_s = 0.05\n[cluster]\nworker_poll_s = 0.05\n"
            "[capacity.plan.all_models]\nsession_units = 500000\n"
        )
    tc("submit", str(tmp_path / "b.toml"), home=homes["leader"], env=env)
    procs = [
        subprocess.Popen(
            [*TC, *argv],
            env={**env, "TC_HOME": str(homes[name])},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, argv in (
            ("w1", ["worker", "--project", f"p={tmp_path / 'p'}", "--host-id", "w1"]),
            ("w2", ["worker", "--project", f"p={tmp_path / 'p'}", "--host-id", "w2"]),
            ("leader", ["run", "--no-live", "--forever", "--max-agents", "4"]),
        )
    ]
    try:
        deadline = time.monotonic() + WAIT_S
        seen = None
        while True:  # until what fits has run and the rest waits for the window: settled
            status = json.loads(tc("status", "--json", home=homes["leader"], env=env).stdout)
            counts = status["by_state"]
            idle = counts["done"] and counts["waiting"] and not counts["running"] + counts["ready"]
            # Idle twice with no event between: not the moment between an end and the
            # next dispatch.
            if idle and seen == status["events"]:
                break
            seen = status["events"] if idle else None
            assert time.monotonic() < deadline, counts
            time.sleep(0.5)  # other processes' state: nothing to await
        capacity = json.loads(tc("capacity", "--json", home=homes["leader"], env=env).stdout)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    (session,) = [w for w in capacity["windows"] if w["window"] == "session/all"]
    # Reservations stop at 95%; what an attempt really uses may pass its reservation a
    # little, never the window.
    assert 0 < session["used_units"] <= session["limit"]["effective"], session
    assert capacity["limit_hits"]["count"] == 0, capacity["limit_hits"]
    with admin(pg_url.rpartition("/")[2]) as conn:
        ran = dict(
            conn.execute(
                "SELECT worker, count(*) FROM work WHERE state = 'done' GROUP BY worker"
            ).fetchall()
        )
    assert set(ran) == {"w1", "w2"}, ran
    assert sum(ran.values()) == counts["done"] < 20, (ran, counts)
