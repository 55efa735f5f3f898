"""SIGKILL of a real ``tc run`` mid-run, then a restart: every task done exactly once.

With supervisors (the default) the attempts the kill caught are adopted: their agents
finish while no orchestrator runs, or under the restarted one, and none runs twice.
Without (``supervise_agents = false``) they die with ``tc run`` and are interrupted."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tests.cli_helpers import spawn_tc, tc
from tests.helpers import AGENT, journal_events
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AttemptAdopted,
    AttemptDispatched,
    AttemptFinished,
)
from trafficcontrol.domain.invariants import verify_journal
from trafficcontrol.domain.model import Outcome

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

TASKS = 24


def wait_for_done(home: Path, at_least: int, timeout_s: float = 60.0) -> int:
    """Poll the journal (another process writes it) until enough attempts succeeded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (home / "journal.db").exists() or os.environ.get("TC_STORE"):
            done = sum(
                1
                for e in journal_events(home)
                if isinstance(e, AttemptFinished) and e.outcome is Outcome.SUCCEEDED
            )
            if done >= at_least:
                return done
        time.sleep(0.05)  # the other process gives no signal to wait on
    raise AssertionError(f"fewer than {at_least} tasks done after {timeout_s}s")


@pytest.mark.parametrize("supervised", [True, False], ids=["supervised", "unsupervised"])
def test_sigkill_mid_run_then_restart_finishes_every_task_exactly_once(
    tmp_path: Path, supervised: bool, store: str
) -> None:
    (tmp_path / "w").mkdir()
    record = tmp_path / "runs.txt"
    lines = [
        "[[projects]]",
        'id = "w"',
        'path = "w"',
        'agent = "command"',
        f'command = ["{sys.executable}", "{AGENT}", "--work", "0.4", "--record", "{record}"]',
    ]
    for i in range(TASKS):
        deps = f'depends_on = ["t{i - 4}"]' if i >= 4 else ""
        lines += ["[[tasks]]", f'id = "t{i}"', 'project = "w"', 'prompt = "p"', deps]
    (tmp_path / "b.toml").write_text("\n".join(lines) + "\n")
    home = tmp_path / "home"
    tc("submit", str(tmp_path / "b.toml"), home=home)
    if not supervised:
        (home / "config.toml").write_text("[run]\nsupervise_agents = false\n")

    first = spawn_tc("run", "--no-live", "--max-agents", "4", home=home)
    wait_for_done(home, at_least=6)
    first.send_signal(signal.SIGKILL)
    first.wait()
    first.communicate()
    before_restart = journal_events(home)
    unfinished = {e.attempt_id for e in before_restart if isinstance(e, AttemptDispatched)} - {
        e.attempt_id for e in before_restart if isinstance(e, AttemptFinished)
    }
    assert unfinished, "the kill should land while attempts run"

    tc("run", "--no-live", "--max-agents", "4", home=home)

    events = journal_events(home)
    ends = [e for e in events if isinstance(e, AttemptFinished)]
    succeeded = Counter(e.attempt_id.split("#")[0] for e in ends if e.outcome is Outcome.SUCCEEDED)
    assert succeeded == Counter({f"t{i}": 1 for i in range(TASKS)})
    interrupted = {e.attempt_id for e in ends if e.outcome is Outcome.INTERRUPTED}
    adopted = {e.attempt_id for e in events if isinstance(e, AttemptAdopted)}
    runs = Counter(line.split()[0] for line in record.read_text().splitlines())
    if supervised:
        assert adopted == unfinished
        assert interrupted == set()
        assert runs == Counter({f"t{i}": 1 for i in range(TASKS)}), "an agent ran twice"
    else:
        assert interrupted == unfinished
        assert adopted == set()
    # Every attempt has exactly one end, and no agent process outlived its attempt.
    dispatched = [e for e in events if isinstance(e, AttemptDispatched)]
    assert Counter(e.attempt_id for e in ends) == Counter({e.attempt_id: 1 for e in dispatched})
    for e in (e for e in events if isinstance(e, AgentProcessStarted)):
        assert not psutil.pid_exists(e.pid) or psutil.Process(e.pid).create_time() != e.create_time
    assert os.path.getsize(record) > 0
    assert verify_journal(events, SchedulerConfig(max_agents=4), settled=True) == []
