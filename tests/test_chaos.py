"""Chaos: 50 SIGKILLs of a real ``tc run`` at random moments, each followed by a restart.

Each iteration submits a small backlog with dependencies, runs ``tc run`` as a real
process with real subprocess agents (``tests/agents/agent.py``, a few tenths of a
second of work each, recording every real execution) and snapshots every 0.2 s, kills
it with SIGKILL at a seeded random moment — after a random number of finished
attempts, or after a random time that may fall in start-up or recovery — sometimes
kills the restart too, then restarts ``tc run`` until the backlog is done. Iterations
run in groups sharing one state home, so later kills land on a longer journal with
snapshots from earlier runs.

Checked after every iteration, over the whole home:

- every task is done exactly once: one SUCCEEDED ``AttemptFinished`` per task;
- every dispatched attempt has exactly one ``AttemptFinished``, and nothing else has;
- every real execution belongs to a journaled dispatch, none ran twice, and each
  task's successful attempt really ran;
- no agent process outlived its attempt: as soon as a restart has journaled its
  start (so it has dealt with its predecessor's leftovers), no live process carries
  the id of an attempt the journal says ended; and after the run no recorded
  (pid, create_time) is alive;
- when a snapshot existed at restart: recovery (snapshot + journal tail) uses it and
  folds to exactly the state a full replay gives, the restart quarantined nothing,
  and its stderr says the previous run did not stop cleanly; snapshots were written.

Set ``TC_CHAOS_SEED`` to replay another schedule; a failure names its seed, group and
iteration (timing still varies between runs: the kill points are synchronised on the
journal, not on a virtual clock).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests import pg
from tests.cli_helpers import spawn_tc
from tests.helpers import AGENT, journal_events, make_app, project, submit, task
from trafficcontrol.adapters.stores import recovery
from trafficcontrol.adapters.stores.codec import decode
from trafficcontrol.adapters.stores.snapshot_files import SnapshotStore
from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.bootstrap import STORE_ENV, open_journal
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AnyEvent,
    AttemptDispatched,
    AttemptFinished,
    OrchestratorStarted,
    OrchestratorStopped,
)
from trafficcontrol.domain.model import AgentSettings, Outcome, TaskSpec, TaskState
from trafficcontrol.domain.state import fold

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.slow]

SEED = int(os.environ.get("TC_CHAOS_SEED", "20250611"))
GROUPS = int(os.environ.get("TC_CHAOS_GROUPS", "10"))
PER_GROUP = 5  # iterations sharing one state home: 50 kills in all
MAX_AGENTS = "4"
CONFIG = """\
[run]
snapshot_interval_s = 0.2
grace_s = 1.0
request_poll_s = 0.05
"""
POLL_S = 0.02
DEADLINE_S = 60.0


@dataclass
class Ctx:
    """One iteration: where it runs and what it has seen, for the failure messages."""

    seed: str
    root: Path
    home: Path
    record: Path
    log: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    """Agents found alive after their attempt ended (reported at the end of the test)."""

    def fail(self, message: str) -> str:
        steps = "; ".join(self.log)
        return f"[chaos {self.seed}] {message}\n  steps: {steps}"


def backlog(rng: random.Random, prefix: str, record: Path) -> list[TaskSpec]:
    """5-8 tasks, each depending on 0-2 earlier ones, 0.1-0.4 s of real work each."""
    n = rng.randint(5, 8)
    ids = [f"{prefix}t{k}" for k in range(n)]
    tasks = []
    for k, tid in enumerate(ids):
        deps = rng.sample(ids[:k], min(k, rng.randint(0, 2)))
        secs = f"{rng.uniform(0.1, 0.4):.2f}"
        command = [sys.executable, AGENT, "--work", secs, "--record", str(record)]
        tasks.append(task(tid, "w", deps=deps, settings=AgentSettings(command=command)))
    return tasks


class PostgresDatabases:
    """Databases cloned from the session's migrated template (``tests/pg.py``)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._template = request.getfixturevalue("pg_template")
        self._names: list[str] = []

    def new(self) -> str:
        with pg.admin() as conn:
            self._names.append(pg.create_database(conn, template=self._template))
        return pg.url_of(self._names[-1])

    def drop_all(self) -> None:
        with pg.admin() as conn:
            for name in self._names:
                pg.drop_database(conn, name)


# -- watching the other process -----------------------------------------------------------
def journal_tail(home: Path, after: int) -> list[tuple[int, AnyEvent]]:
    """Committed events after ``after``, read without writing anything."""
    url = os.environ.get(STORE_ENV)
    if url:  # PostgreSQL: readers never block the writer
        journal = open_journal(url)
        try:
            return list(journal.read(after=after))
        finally:
            journal.close()
    db = sqlite3.connect(f"file:{home / 'journal.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq", (after,))
        return [(seq, decode(body, where=f"event {seq}")) for seq, body in rows]
    finally:
        db.close()


def last_seq(home: Path) -> int:
    url = os.environ.get(STORE_ENV)
    if url:
        journal = open_journal(url)
        try:
            return journal.last_seq()
        finally:
            journal.close()
    db = sqlite3.connect(f"file:{home / 'journal.db'}?mode=ro", uri=True, timeout=30)
    try:
        return int(db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    finally:
        db.close()


def wait_until(
    proc: subprocess.Popen[str], home: Path, after: int, done: Callable[[list[AnyEvent]], bool]
) -> bool:
    """Poll the journal until ``done(events after `after`)`` or the process exits.
    True when the condition held while the process still ran."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if done([e for _s, e in journal_tail(home, after)]):
            return proc.poll() is None
        time.sleep(POLL_S)  # the other process gives no signal to wait on
    raise AssertionError(f"condition not met within {DEADLINE_S}s")


def count(events: list[AnyEvent], kind: type[AnyEvent], **match: object) -> int:
    return sum(
        1
        for e in events
        if isinstance(e, kind) and all(getattr(e, k) == v for k, v in match.items())
    )


def kill_at_random_moment(
    ctx: Ctx, rng: random.Random, proc: subprocess.Popen[str], base: int, pending: int
) -> None:
    """SIGKILL ``proc`` at a seeded random moment (or not at all if it finished first)."""
    try:
        _kill_at_random_moment(ctx, rng, proc, base, pending)
    except BaseException:
        _reap(proc)
        raise


def _reap(proc: subprocess.Popen[str]) -> None:
    """Leave no ``tc`` process behind a failing check."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def _kill_at_random_moment(
    ctx: Ctx, rng: random.Random, proc: subprocess.Popen[str], base: int, pending: int
) -> None:
    mode = rng.choice(["finished", "finished", "dispatched", "time"])
    if mode == "finished":
        k = rng.randint(1, max(1, pending - 1))
        reached = wait_until(
            proc,
            ctx.home,
            base,
            lambda ev: count(ev, AttemptFinished, outcome=Outcome.SUCCEEDED) >= k,
        )
        what = f"after {k} finished"
    elif mode == "dispatched":
        k = rng.randint(1, 4)
        reached = wait_until(proc, ctx.home, base, lambda ev: count(ev, AttemptDispatched) >= k)
        what = f"after {k} dispatched"
    else:
        delay = rng.uniform(0.0, 1.5)
        try:
            proc.wait(timeout=delay)  # a random moment, not a synchronisation
            reached = False
        except subprocess.TimeoutExpired:
            reached = True
        what = f"after {delay:.2f}s"
    if reached:
        jitter = rng.choice([0.0, 0.0, rng.uniform(0.0, 0.15)])
        if jitter:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=jitter)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        ctx.log.append(f"SIGKILL {what} (+jitter)")
    else:
        ctx.log.append(f"no kill ({what}): run ended first rc={proc.returncode}")
    _out, err = proc.communicate(timeout=30)
    if proc.returncode not in (-signal.SIGKILL, 0):
        raise AssertionError(ctx.fail(f"tc run exited {proc.returncode}: {err[-2000:]}"))


# -- checks -----------------------------------------------------------------------------
def agent_processes(root: Path) -> list[tuple[str, psutil.Process]]:
    """Live agent processes of this test (their workdir is under ``root``)."""
    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if not env.get("TC_WORKDIR", "").startswith(str(root)):
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            found.append((env["TC_ATTEMPT_ID"], proc))
        except (psutil.Error, KeyError):
            continue
    return found


def check_no_agent_outlived_its_attempt(ctx: Ctx, when: str) -> None:
    events = journal_events(ctx.home)
    ended = {e.attempt_id for e in events if isinstance(e, AttemptFinished)}
    alive = [(aid, p.pid, p.create_time()) for aid, p in agent_processes(ctx.root) if aid in ended]
    history = [
        (seq, e)
        for seq, e in enumerate(events, start=1)
        if getattr(e, "attempt_id", None) in {a for a, _p, _t in alive}
        or isinstance(e, OrchestratorStarted | OrchestratorStopped)
    ]
    if alive:
        pids = {e.attempt_id for e in events if isinstance(e, AgentProcessStarted)}
        unjournaled = [a for a, _p, _t in alive if a not in pids]
        ctx.leftovers.append(
            ctx.fail(
                f"{when}: agents alive after their attempt ended: {alive}"
                f" (pid never journaled: {unjournaled}); journal: {history}"
            )
        )


def check_snapshot_recovery(ctx: Ctx) -> bool:
    """Before a restart: the snapshot recovery will use folds to the full replay's state.
    Returns whether a usable snapshot existed."""
    store = SnapshotStore(ctx.home / "snapshots", supported_schemas=[snapshot.SCHEMA])
    url = os.environ.get(STORE_ENV)
    journal = open_journal(url) if url else SqliteJournal(ctx.home / "journal.db")
    try:
        end = journal.last_seq()
        usable = [i for i in store.list() if i.meta is not None and i.meta.seq <= end]
        found = recovery.recover(journal, store, repair=False)
        replayed = fold([e for _s, e in journal.read()])
    finally:
        journal.close()
    if usable:
        assert found.snapshot is not None, ctx.fail(f"snapshots {usable} exist, none used")
        assert found.snapshot.version == max(i.version for i in usable), ctx.fail(
            f"recovery used snapshot {found.snapshot.version}, newest usable is {usable[-1]}"
        )
        assert found.snapshot.seq + found.tail == end
        assert snapshot.capture(found.state) == snapshot.capture(replayed), ctx.fail(
            f"snapshot {found.snapshot.version} + {found.tail} events != full replay"
        )
    return bool(usable)


def check_journal(ctx: Ctx, task_ids: set[str]) -> None:
    events = journal_events(ctx.home)
    dispatched = Counter(e.attempt_id for e in events if isinstance(e, AttemptDispatched))
    ends = [e for e in events if isinstance(e, AttemptFinished)]
    finished = Counter(e.attempt_id for e in ends)
    assert all(n == 1 for n in dispatched.values()), ctx.fail("attempt id dispatched twice")
    assert finished == dispatched, ctx.fail(
        f"attempts without exactly one end: {(finished - dispatched) + (dispatched - finished)}"
        f" / {[a for a, n in finished.items() if n > 1]}"
    )
    task_of = {e.attempt_id: e.task_id for e in events if isinstance(e, AttemptDispatched)}
    succeeded = Counter(task_of[e.attempt_id] for e in ends if e.outcome is Outcome.SUCCEEDED)
    assert succeeded == Counter(dict.fromkeys(task_ids, 1)), ctx.fail(
        f"not exactly one success per task: {succeeded}"
    )
    bad = [e for e in ends if e.outcome not in (Outcome.SUCCEEDED, Outcome.INTERRUPTED)]
    assert not bad, ctx.fail(f"unexpected outcomes: {bad}")
    state = fold(events)
    assert all(r.state is TaskState.DONE for r in state.tasks.values()), ctx.fail("not all done")
    assert not state.running and not state.running_orchestrator
    assert isinstance(events[-1], OrchestratorStopped)

    runs = [line.split() for line in ctx.record.read_text().splitlines() if line.strip()]
    ran = Counter(attempt for _task, attempt in runs)
    assert all(n == 1 for n in ran.values()), ctx.fail(f"an attempt ran twice: {ran}")
    assert set(ran) <= set(dispatched), ctx.fail(
        f"ran without a dispatch: {set(ran) - set(dispatched)}"
    )
    winners = {e.attempt_id for e in ends if e.outcome is Outcome.SUCCEEDED}
    assert winners <= set(ran), ctx.fail(f"succeeded without running: {winners - set(ran)}")

    for e in (e for e in events if isinstance(e, AgentProcessStarted)):
        try:
            proc = psutil.Process(e.pid)
            alive = (
                abs(proc.create_time() - e.create_time) < 0.01
                and proc.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.NoSuchProcess:
            alive = False
        assert not alive, ctx.fail(f"agent pid {e.pid} of {e.attempt_id} outlived the run")
    assert any((ctx.home / "snapshots").glob("snapshot-*.tcsnap")), ctx.fail("no snapshot written")


# -- one iteration ------------------------------------------------------------------------
def restart(ctx: Ctx, rng: random.Random, *, kill: bool, pending: int) -> None:
    """Start ``tc run`` after a crash; kill it again at a random moment when ``kill``."""
    had_snapshot = check_snapshot_recovery(ctx)
    before = journal_events(ctx.home)
    marks = [e for e in before if isinstance(e, OrchestratorStarted | OrchestratorStopped)]
    unclean = bool(marks) and isinstance(marks[-1], OrchestratorStarted)
    base = last_seq(ctx.home)
    proc = spawn_tc("run", "--no-live", "--max-agents", MAX_AGENTS, home=ctx.home)
    ctx.log.append(f"restart (snapshot={had_snapshot}, unclean={unclean}, kill={kill})")
    if kill:
        kill_at_random_moment(ctx, rng, proc, base, pending)
        return
    try:
        # Once the restart journaled its start it has killed its predecessor's leftovers.
        if wait_until(proc, ctx.home, base, lambda ev: count(ev, OrchestratorStarted) >= 1):
            check_no_agent_outlived_its_attempt(ctx, "after the restart's start")
        _out, err = proc.communicate(timeout=DEADLINE_S)
    except BaseException:
        _reap(proc)
        raise
    assert proc.returncode == 0, ctx.fail(f"restart exited {proc.returncode}: {err[-2000:]}")
    notes = [line for line in err.splitlines() if line.startswith("recovery:")]
    assert not [n for n in notes if "quarantine" in n or "moved to" in n or "not used" in n], (
        ctx.fail(f"restart repaired something after a SIGKILL: {notes}")
    )
    if unclean:
        assert any("did not stop cleanly" in n for n in notes), ctx.fail(
            f"restart did not notice the crash: {err[-2000:]}"
        )


def iteration(ctx: Ctx, rng: random.Random, prefix: str, all_tasks: set[str]) -> None:
    work = ctx.root / "w"
    tasks = backlog(rng, prefix, ctx.record)
    app = make_app(ctx.home)
    try:
        submit(app, [project(work, "w", agent="command")], tasks)
    finally:
        app.close()
    all_tasks |= {t.id for t in tasks}
    ctx.log.append(f"{len(tasks)} tasks")
    base = last_seq(ctx.home)
    first = spawn_tc("run", "--no-live", "--max-agents", MAX_AGENTS, home=ctx.home)
    kill_at_random_moment(ctx, rng, first, base, len(tasks))
    if first.returncode == -signal.SIGKILL and rng.random() < 0.25:
        restart(ctx, rng, kill=True, pending=len(tasks))
    if journal_events(ctx.home) and not _finished(ctx):
        restart(ctx, rng, kill=False, pending=len(tasks))
    check_no_agent_outlived_its_attempt(ctx, "after the run")
    check_journal(ctx, all_tasks)


def _finished(ctx: Ctx) -> bool:
    state = fold(journal_events(ctx.home))
    return all(r.state is TaskState.DONE for r in state.tasks.values()) and not (
        state.running_orchestrator
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_fifty_sigkills_at_random_moments_lose_and_repeat_nothing(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    kills = snapshots_at_restart = 0
    leftovers: list[str] = []
    databases = PostgresDatabases(request) if backend == "postgres" else None
    monkeypatch.delenv(STORE_ENV, raising=False)
    for g in range(GROUPS):
        if databases is not None:  # a state home per group, and so a database per group
            monkeypatch.setenv(STORE_ENV, databases.new())
        root = tmp_path / f"g{g}"
        home = root / "home"
        home.mkdir(parents=True)
        (home / "config.toml").write_text(CONFIG)
        all_tasks: set[str] = set()
        for i in range(PER_GROUP):
            seed = f"seed={SEED} group={g} iteration={i}"
            rng = random.Random(f"{SEED}:{g}:{i}")
            ctx = Ctx(seed=seed, root=root, home=home, record=root / "runs.txt")
            ctx.record.touch()
            iteration(ctx, rng, f"i{i}", all_tasks)
            leftovers += ctx.leftovers
            kills += sum(1 for step in ctx.log if step.startswith("SIGKILL"))
            snapshots_at_restart += sum(1 for s in ctx.log if "snapshot=True" in s)
    elapsed = time.monotonic() - started
    if databases is not None:
        databases.drop_all()
    print(
        f"chaos [{backend}]: {kills} SIGKILLs, {snapshots_at_restart} restarts from a"
        f" snapshot, {elapsed:.1f}s"
    )
    assert kills >= GROUPS * PER_GROUP * 0.8, f"only {kills} kills landed (seed {SEED})"
    assert snapshots_at_restart >= kills // 2
    assert not leftovers, f"{len(leftovers)} iteration(s) with leftover agents:\n" + "\n".join(
        leftovers
    )
