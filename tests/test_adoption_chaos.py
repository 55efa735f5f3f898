"""Kill -9 loop: agents that outlive ``tc run`` are adopted, never run twice.

150 tasks of real subprocess agents (``tests/agents/agent.py --ledger``: each appends
``START`` and ``END`` lines to a ledger outside the state home and works 0-0.4 s),
10 at once; ``tc run`` is SIGKILLed at seeded random moments — after a few more
agents ended, or after a random time that may fall in start-up or recovery — at
least 25 times, and restarted each time until the backlog is done.

Checked at the end:

- the journal: every task done exactly once, every dispatched attempt has exactly one
  end, ``verify_journal`` clean;
- the ledger (what really ran): no task's agent ran to completion twice, and each
  END is the attempt the journal recorded as succeeded;
- every attempt's outcome is its real exit: each interrupted attempt is one whose
  agent never started (a kill between journaling the dispatch and starting it);
- orphans: no process carries a run marker of this state home.

``TC_CHAOS_SEED`` replays another schedule (the kill points follow the ledger and
the clock, so timing still varies between runs).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.cli_helpers import spawn_tc, tc
from tests.helpers import AGENT, journal_events
from trafficcontrol.adapters.agents.process_group import RUN_MARKER_ENV
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import AttemptAdopted, AttemptDispatched, AttemptFinished
from trafficcontrol.domain.invariants import verify_journal
from trafficcontrol.domain.model import Outcome

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.slow]

SEED = int(os.environ.get("TC_CHAOS_SEED", "15"))
TASKS = 150
AGENTS = 10
KILLS = 25
MAX_RUNS = 80
RUN_DEADLINE_S = 120.0


def ledger_lines(ledger: Path) -> list[tuple[str, str, str]]:
    if not ledger.exists():
        return []
    return [tuple(line.split()) for line in ledger.read_text().splitlines()]  # type: ignore[misc]


def marked_under(home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            marker = proc.environ().get(RUN_MARKER_ENV, "")
            if marker.startswith(str(home)) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_kill_9_loop_no_agent_runs_twice(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    ledger = tmp_path / "ledger.txt"
    (tmp_path / "w").mkdir()
    lines = [
        "[[projects]]",
        'id = "w"',
        'path = "w"',
        'agent = "command"',
        f'command = ["{sys.executable}", "{AGENT}", "--work-max", "0.4", "--ledger", "{ledger}"]',
    ]
    for i in range(TASKS):
        deps = f'depends_on = ["t{i - 10}"]' if i >= 10 and i % 3 == 0 else ""
        lines += ["[[tasks]]", f'id = "t{i}"', 'project = "w"', 'prompt = "p"', deps]
    (tmp_path / "b.toml").write_text("\n".join(lines) + "\n")
    home = tmp_path / "home"
    tc("submit", str(tmp_path / "b.toml"), home=home)
    (home / "config.toml").write_text(
        "[run]\ngrace_s = 1.0\nrequest_poll_s = 0.05\nsnapshot_interval_s = 0.5\n"
    )

    kills = 0
    try:
        for run in range(MAX_RUNS):
            proc = spawn_tc("run", "--no-live", "--max-agents", str(AGENTS), home=home)
            if kills < KILLS:
                _kill_at_a_random_moment(proc, ledger, rng)
                if proc.returncode == -signal.SIGKILL:
                    kills += 1
                    continue
            else:
                proc.wait(timeout=RUN_DEADLINE_S)
            _out, err = proc.communicate()
            assert proc.returncode == 0, f"run {run} (seed {SEED}): exit {proc.returncode}\n{err}"
            break
        else:
            raise AssertionError(f"seed {SEED}: backlog not done after {MAX_RUNS} runs")
    finally:
        for leftover in marked_under(home):
            leftover.kill()
    assert kills >= KILLS, f"seed {SEED}: only {kills} kills landed"

    events = journal_events(home)
    ends = [e for e in events if isinstance(e, AttemptFinished)]
    dispatched = [e for e in events if isinstance(e, AttemptDispatched)]
    succeeded = {e.attempt_id for e in ends if e.outcome is Outcome.SUCCEEDED}
    assert Counter(a.split("#")[0] for a in succeeded) == Counter(
        {f"t{i}": 1 for i in range(TASKS)}
    ), f"seed {SEED}: not every task done exactly once"
    assert Counter(e.attempt_id for e in ends) == Counter({e.attempt_id: 1 for e in dispatched})
    assert verify_journal(events, SchedulerConfig(max_agents=AGENTS), settled=True) == []

    done = Counter(task for kind, task, _attempt in ledger_lines(ledger) if kind == "END")
    twice = sorted(task for task, n in done.items() if n > 1)
    assert twice == [], f"seed {SEED}: agents ran to completion twice: {twice}"
    assert {attempt for kind, _t, attempt in ledger_lines(ledger) if kind == "END"} == succeeded
    started = {attempt for kind, _t, attempt in ledger_lines(ledger) if kind == "START"}
    for end in ends:
        if end.outcome is not Outcome.SUCCEEDED:
            assert end.outcome is Outcome.INTERRUPTED, (end.attempt_id, end.outcome, end.error)
            assert end.attempt_id not in started, f"seed {SEED}: {end.attempt_id} ran, then lost"
    adopted = [e for e in events if isinstance(e, AttemptAdopted)]
    assert adopted, "kills mid-run must leave attempts to adopt"
    assert marked_under(home) == [], "orphans once all is done"
    print(
        f"seed {SEED}: {kills} SIGKILLs, {len(dispatched)} attempts, {len(adopted)} adopted"
        f" ({sum(e.finished for e in adopted)} finished while down),"
        f" {len(ends) - len(succeeded)} interrupted before their agent started"
    )


def _kill_at_a_random_moment(proc: subprocess.Popen[str], ledger: Path, rng: random.Random) -> None:
    """SIGKILL ``proc`` after 1-12 more agents ended, or after 0-1.5 s; or let it exit."""
    ends_before = sum(1 for line in ledger_lines(ledger) if line[0] == "END")
    by_ends = rng.random() < 0.6
    more = rng.randint(1, 12)
    after_s = rng.uniform(0.0, 1.5)
    start = time.monotonic()
    while proc.poll() is None:
        now = time.monotonic()
        if now - start > RUN_DEADLINE_S:
            break
        if by_ends:
            ended = sum(1 for line in ledger_lines(ledger) if line[0] == "END")
            if ended - ends_before >= more:
                break
        elif now - start >= after_s:
            break
        time.sleep(0.01)  # the moment is what we wait for: there is nothing to await
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.communicate()
