"""Agents outlive ``tc run``: a restart adopts what its predecessor left running.

Real ``tc run`` processes, real supervisors and real subprocess agents
(``tests/agents/agent.py``). Each test SIGKILLs ``tc run`` while an agent runs, then:

- restarts it and cancels the adopted attempt: its agent and grandchild die, the
  attempt is cancelled, nothing carries its run marker;
- restarts it past the task's timeout: the adopted attempt times out, its whole tree
  is killed;
- kills the supervisor and the agent too: no exit record, so the attempt is
  interrupted and restarted (``on_interrupt``), as before supervisors;
- stops it with ``--leave-agents-running``: the agent runs on, the stop is journaled
  with the attempt left running, and the next ``tc run`` adopts its end.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.cli_helpers import spawn_tc, tc
from tests.helpers import agent_argv, journal_events
from trafficcontrol.adapters.agents.process_group import marked_processes
from trafficcontrol.adapters.agents.supervision import AttemptFiles, read_shim_id
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AnyEvent,
    AttemptAdopted,
    AttemptDispatched,
    AttemptFinished,
    OrchestratorStopped,
)
from trafficcontrol.domain.invariants import verify_journal
from trafficcontrol.domain.model import Outcome

pytestmark = [pytest.mark.e2e]

DEADLINE_S = 60.0


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    """Poll ``check`` (another process changes what it looks at) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # other processes give no signal to wait on


def backlog(tmp_path: Path, *flags: str, task_extra: str = "") -> tuple[Path, Path]:
    """One command task whose agent writes ``started`` once it runs, then ``flags``."""
    started = tmp_path / "started"
    (tmp_path / "w").mkdir()
    argv = json.dumps(agent_argv("--started", str(started), *flags))
    path = tmp_path / "b.toml"
    path.write_text(
        f'[[projects]]\nid = "w"\npath = "w"\nagent = "command"\ncommand = {argv}\n\n'
        f'[[tasks]]\nid = "t"\nproject = "w"\nprompt = "p"\n{task_extra}\n'
    )
    return path, started


def events_of_kind(home: Path, kind: type[AnyEvent]) -> list[AnyEvent]:
    if not (home / "journal.db").exists():
        return []
    return [e for e in journal_events(home) if isinstance(e, kind)]


def start_and_kill(tmp_path: Path, *flags: str, task_extra: str = "") -> tuple[Path, Path]:
    """Submit, run until the agent has started and its supervisor is journaled, SIGKILL
    ``tc run``. Returns the home and the attempt's log."""
    path, started = backlog(tmp_path, *flags, task_extra=task_extra)
    home = tmp_path / "home"
    tc("submit", str(path), home=home)
    (home / "config.toml").write_text("[run]\ngrace_s = 1.0\nrequest_poll_s = 0.05\n")
    first = spawn_tc("run", "--no-live", home=home)
    try:
        wait_until("the agent to start", started.exists)
        wait_until("the supervisor's pid", lambda: bool(events_of_kind(home, AgentProcessStarted)))
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    (dispatched,) = events_of_kind(home, AttemptDispatched)
    assert isinstance(dispatched, AttemptDispatched)
    return home, Path(dispatched.log_path)


def supervisor_of(log: Path) -> psutil.Process:
    """The attempt's supervisor, by the pid its ``.shim`` file names (a supervisor forked
    by the launcher does not show the run marker in its /proc environ)."""
    shim_id = read_shim_id(AttemptFiles(log).shim)
    assert shim_id is not None, "no .shim file"
    return psutil.Process(shim_id.pid)


def ends(home: Path) -> list[AttemptFinished]:
    return [e for e in events_of_kind(home, AttemptFinished) if isinstance(e, AttemptFinished)]


def assert_nothing_left(log: Path) -> None:
    wait_until("no process carrying the run marker", lambda: not marked_processes(str(log)))


def test_an_adopted_attempt_is_cancelled_with_its_grandchild(tmp_path: Path) -> None:
    grandchild = tmp_path / "grandchild.pid"
    home, log = start_and_kill(tmp_path, "--block", "--grandchild", str(grandchild))
    agent_pid = int(grandchild.read_text())
    assert psutil.pid_exists(agent_pid), "the agent's grandchild lives on without tc run"
    assert marked_processes(str(log)), "the supervisor and agent outlived tc run"

    restart = spawn_tc("run", "--no-live", home=home)
    try:
        wait_until("the attempt to be adopted", lambda: bool(events_of_kind(home, AttemptAdopted)))
        tc("cancel", "t", home=home)
        assert restart.wait(timeout=DEADLINE_S) == 0
    finally:
        if restart.poll() is None:
            restart.kill()
        restart.communicate()

    (end,) = ends(home)
    assert end.attempt_id == "t#1" and end.outcome is Outcome.CANCELLED
    (adopted,) = events_of_kind(home, AttemptAdopted)
    assert isinstance(adopted, AttemptAdopted) and not adopted.finished
    assert_nothing_left(log)
    wait_until("the grandchild to die", lambda: not _alive(agent_pid))


def test_an_adopted_attempt_times_out_and_its_tree_is_killed(tmp_path: Path) -> None:
    grandchild = tmp_path / "grandchild.pid"
    home, log = start_and_kill(
        tmp_path, "--block", "--grandchild", str(grandchild), task_extra="timeout = 2.0"
    )
    leftover = int(grandchild.read_text())
    tc("run", "--no-live", home=home, check=False)

    timed_out = [e for e in ends(home) if e.attempt_id == "t#1"]
    assert [e.outcome for e in timed_out] == [Outcome.TIMED_OUT]
    assert events_of_kind(home, AttemptAdopted), "it was adopted, not interrupted"
    wait_until("the grandchild to die", lambda: not _alive(leftover))
    assert_nothing_left(log)


def test_a_supervisor_killed_with_its_agent_falls_back_to_on_interrupt(tmp_path: Path) -> None:
    record = tmp_path / "runs.txt"
    home, log = start_and_kill(tmp_path, "--work", "0.5", "--record", str(record))
    supervisor = supervisor_of(log)
    supervisor.kill()  # first, so that it cannot write a record of its agent's death
    for proc in marked_processes(str(log)):  # the agent
        proc.kill()
    wait_until("them to die", lambda: not marked_processes(str(log)) and not _alive(supervisor.pid))
    assert not AttemptFiles(log).exit.exists()

    tc("run", "--no-live", home=home)

    outcomes = {e.attempt_id: e.outcome for e in ends(home)}
    assert outcomes == {"t#1": Outcome.INTERRUPTED, "t#2": Outcome.SUCCEEDED}
    assert not events_of_kind(home, AttemptAdopted)
    assert len(record.read_text().splitlines()) == 2, "restarted, as on_interrupt says"


def test_leave_agents_running_hands_the_agent_to_the_next_run(tmp_path: Path) -> None:
    record = tmp_path / "runs.txt"
    path, started = backlog(tmp_path, "--work", "1.0", "--record", str(record))
    home = tmp_path / "home"
    tc("submit", str(path), home=home)
    first = spawn_tc("run", "--no-live", "--leave-agents-running", home=home)
    wait_until("the agent to start", started.exists)
    wait_until("the supervisor's pid", lambda: bool(events_of_kind(home, AgentProcessStarted)))
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=DEADLINE_S) == 0
    first.communicate()
    (stopped,) = events_of_kind(home, OrchestratorStopped)
    assert isinstance(stopped, OrchestratorStopped) and stopped.left_running == ("t#1",)
    assert not ends(home), "its end belongs to the next run"
    log = Path(next(e.log_path for e in journal_events(home) if isinstance(e, AttemptDispatched)))
    wait_until("the agent to finish on its own", AttemptFiles(log).exit.exists)

    tc("run", "--no-live", home=home)

    assert [(e.attempt_id, e.outcome) for e in ends(home)] == [("t#1", Outcome.SUCCEEDED)]
    (adopted,) = events_of_kind(home, AttemptAdopted)
    assert isinstance(adopted, AttemptAdopted) and adopted.finished
    assert len(record.read_text().splitlines()) == 1
    events = journal_events(home)
    assert verify_journal(events, SchedulerConfig(), settled=True) == []


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_supervisor_runs_without_the_orchestrators_pipes(tmp_path: Path) -> None:
    """Its stdio are files, never tc run's pipes: a dead reader cannot SIGPIPE it."""
    _home, log = start_and_kill(tmp_path, "--block")
    shim = supervisor_of(log)
    assert "trafficcontrol.cli.supervise" in shim.cmdline()
    for fd in (0, 1, 2):
        target = os.readlink(f"/proc/{shim.pid}/fd/{fd}")
        assert not target.startswith("pipe:"), (fd, target)
    assert os.getsid(shim.pid) == shim.pid, "a session of its own"
    shim.kill()
    for proc in marked_processes(str(log)):
        proc.kill()
    assert_nothing_left(log)
