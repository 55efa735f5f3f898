"""``tc simulate`` and ``tc verify`` as a user runs them: real processes, real journals."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import TC, spawn_tc, tc
from tests.helpers import journal_events
from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.domain.events import AttemptDispatched, AttemptFinished
from trafficcontrol.domain.model import Outcome

pytestmark = pytest.mark.e2e

BACKLOG = """
[[projects]]
id = "api"
path = "{path}"
agent = "{agent}"
sim = {{ duration = 0.0, jitter = 0.0 }}

[[tasks]]
id = "migration"
project = "api"
prompt = "Write it."

[[tasks]]
id = "endpoint"
project = "api"
prompt = "Build it."
depends_on = ["migration"]
resources = ["db"]

[[tasks]]
id = "docs"
project = "api"
prompt = "Document it."
depends_on = ["{dep}"]
"""


def write_backlog(
    tmp_path: Path, *, path: str = "api", agent: str = "sim", dep: str = "migration"
) -> Path:
    backlog = tmp_path / "backlog.toml"
    backlog.write_text(BACKLOG.format(path=path, agent=agent, dep=dep))
    return backlog


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **env},
    )


def simulate_json(*args: str, **env: str) -> dict[str, Any]:
    done = run([*TC, "simulate", *args, "--json"], **env)
    assert done.returncode == 0, done.stdout + done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


# -- tc simulate ------------------------------------------------------------------------------
def test_simulate_reports_and_its_replay_command_reproduces_the_run() -> None:
    first = simulate_json("--seed", "7", "--agents", "5", "--faults", PYTHONHASHSEED="1")
    assert first["ok"] is True and first["settled"] is True
    assert first["tasks"]["total"] == 30
    assert first["replay"] == "tc simulate --seed 7 --agents 5 --faults"
    # The printed command, in another process with other hash seeds, gives the same run.
    argv = shlex.split(first["replay"])
    assert argv[0] == "tc"
    again = simulate_json(*argv[2:], PYTHONHASHSEED="2")
    assert again == first


def test_simulate_prints_a_readable_report() -> None:
    done = run([*TC, "simulate", "--seed", "1", "--agents", "8"])
    assert done.returncode == 0, done.stderr
    for needle in ("makespan", "utilisation", "recoveries", "tokens opus", "[simulated]"):
        assert needle in done.stdout, needle
    assert "every invariant held" in done.stdout


def test_simulate_plans_a_backlog_whose_directories_do_not_exist(tmp_path: Path) -> None:
    """A planning question about a claude backlog: no project directory, no model call."""
    backlog = write_backlog(tmp_path, path="not/here", agent="claude")
    backlog.write_text(backlog.read_text().replace("sim = { duration = 0.0, jitter = 0.0 }", ""))
    report = simulate_json(str(backlog), "--agents", "2", "--mean-duration", "300")
    assert report["ok"] is True
    assert report["tasks"]["done"] == 3
    # A chain of three 300 s tasks (±50%): between 450 s and 1350 s.
    assert 450 <= report["makespan_s"] <= 1350
    assert report["replay"].endswith("--agents 2 --mean-duration 300.0")
    assert report["replay"].startswith(f"tc simulate {backlog} --seed 0")


def test_simulate_refuses_a_bad_backlog_with_its_reasons(tmp_path: Path) -> None:
    cyclic = write_backlog(tmp_path, dep="docs")
    done = run([*TC, "simulate", str(cyclic)])
    assert done.returncode == 1
    assert "dependency cycle: docs -> docs" in done.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text('[[tasks]]\nid = "x\n')
    done = run([*TC, "simulate", str(broken)])
    assert done.returncode == 1
    assert "broken.toml:2: TOML syntax error" in done.stderr
    done = run([*TC, "simulate", "--crash-rate", "2"])
    assert done.returncode == 1
    assert "--crash-rate must be between 0 and 1" in done.stderr


STALLED_SCHEDULER = """
import sys
import time
from trafficcontrol.domain.decide import Decision, Dispatch, decide
from trafficcontrol.runtime import simulator

def stalled(state, now, config):
    decision = decide(state, now, config)
    if state.attempts:
        kept = [c for c in decision.commands if not isinstance(c, Dispatch)]
        return Decision(commands=kept, next_wakeup=decision.next_wakeup)
    return decision

simulator.decide = stalled
from trafficcontrol.cli.app import app
from trafficcontrol.cli.simulate import register
register(app)  # no-op when tc already has the command
sys.argv[0] = "tc"
app()
"""


def test_a_violation_prints_the_command_that_replays_it_and_exits_1() -> None:
    """A scheduler bug (injected in this process only) is caught and made replayable."""
    argv = ["simulate", "--seed", "2", "--agents", "4", "--crash-rate", "0.1"]
    done = run([sys.executable, "-c", STALLED_SCHEDULER, *argv])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "violation:" in done.stdout and "no progress: task" in done.stdout
    assert "tc simulate --seed 2 --agents 4 --crash-rate 0.1" in done.stdout
    as_json = run([sys.executable, "-c", STALLED_SCHEDULER, *argv, "--json"])
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["violations"]
    assert report["replay"] == "tc simulate --seed 2 --agents 4 --crash-rate 0.1"


# -- tc verify -----------------------------------------------------------------------------
def test_verify_checks_a_real_journal_and_names_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    home = tmp_path / "home"
    tc("submit", str(write_backlog(tmp_path)), home=home)
    tc("run", "--no-live", home=home)
    done = tc("verify", "--settled", home=home)
    assert done.stdout.startswith("OK: ")
    assert "every invariant holds" in done.stdout
    data = json.loads(tc("verify", "--settled", "--json", home=home).stdout)
    assert data["ok"] is True and data["violations"] == []

    journal = SqliteJournal(home / "journal.db")
    try:
        events = [e for _seq, e in journal.read()]
        first = next(e for e in events if isinstance(e, AttemptDispatched))
        seq = journal.append(
            [AttemptFinished(at=first.at + 1, attempt_id=first.attempt_id, outcome=Outcome.FAILED)]
        )
    finally:
        journal.close()
    done = tc("verify", home=home, check=False)
    assert done.returncode == 1
    assert f"at seq {seq}: attempt {first.attempt_id} has a second outcome (failed)" in (
        done.stdout
    )
    data = json.loads(tc("verify", "--json", home=home, check=False).stdout)
    assert data["ok"] is False and len(data["violations"]) == 1


def test_verify_needs_a_state_home(tmp_path: Path) -> None:
    done = tc("verify", home=tmp_path / "nothing", check=False)
    assert done.returncode == 1
    assert "no state in" in done.stderr


@pytest.mark.slow
def test_verify_holds_on_the_demos_journal(tmp_path: Path) -> None:
    demo = run([*TC, "demo", "--home", str(tmp_path), "--no-live", "--max-agents", "8"])
    assert demo.returncode == 0, demo.stdout + demo.stderr
    done = tc("verify", "--settled", "--max-agents", "8", home=tmp_path / "state")
    assert done.stdout.startswith("OK: ")


@pytest.mark.slow
def test_verify_holds_on_a_journal_that_survived_kill_9(tmp_path: Path) -> None:
    """The real runtime's crash recovery, checked by the same invariants as the simulator."""
    (tmp_path / "api").mkdir()
    home = tmp_path / "home"
    backlog = write_backlog(tmp_path)
    backlog.write_text(
        backlog.read_text().replace("duration = 0.0, jitter = 0.0", "duration = 2.0, jitter = 0.0")
    )
    tc("submit", str(backlog), home=home)
    runner = spawn_tc("run", "--no-live", home=home)
    try:
        deadline = time.monotonic() + 60
        while not any(isinstance(e, AttemptDispatched) for e in journal_events(home)):
            assert time.monotonic() < deadline, "no attempt started"
            time.sleep(0.05)  # polling another process's journal: nothing to await
        runner.send_signal(signal.SIGKILL)
    finally:
        runner.communicate()
    events = journal_events(home)
    open_attempts = {e.attempt_id for e in events if isinstance(e, AttemptDispatched)} - {
        e.attempt_id for e in events if isinstance(e, AttemptFinished)
    }
    assert open_attempts, "the kill came while an attempt ran"
    assert tc("verify", home=home).stdout.startswith("OK: ")
    tc("run", "--no-live", home=home)
    assert tc("verify", "--settled", home=home).stdout.startswith("OK: ")
    interrupted = [
        e
        for e in journal_events(home)
        if isinstance(e, AttemptFinished) and e.attempt_id in open_attempts
    ]
    assert [e.outcome for e in interrupted] == [Outcome.INTERRUPTED] * len(open_attempts)
