"""An agent that goes silent is hung: its process group is killed and it is retried."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil

from tests.helpers import journal_events, make_app, project, run_until_idle, submit, task
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import AttemptFinished, AttemptStopRequested
from trafficcontrol.domain.failures import FailureClass
from trafficcontrol.domain.invariants import verify_journal
from trafficcontrol.domain.model import AttemptId, Outcome, StopReason, TaskState
from trafficcontrol.runtime.watchdog import HungWatch

# Prints once, leaves a grandchild and goes silent on its first run; finishes on the next.
HANG_ONCE = """\
import os, subprocess, sys, time
marker, grandchild = sys.argv[1], sys.argv[2]
print("working", flush=True)
if not os.path.exists(marker):
    open(marker, "w").close()
    child = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(60)"])
    with open(grandchild, "w") as f:
        f.write(str(child.pid))
    while True:
        time.sleep(60)  # hung: alive, silent
print("done", flush=True)
"""

HUNG_AFTER_S = 1.0


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_silent_agent_is_killed_as_hung_and_retried(tmp_path: Path) -> None:
    home = tmp_path / "home"
    app = make_app(home, hung_after_s=HUNG_AFTER_S, grace_s=0.5)
    script = tmp_path / "hang_once.py"
    script.write_text(HANG_ONCE)
    grandchild = tmp_path / "grandchild.pid"
    argv = [sys.executable, str(script), str(tmp_path / "hung-once"), str(grandchild)]
    submit(
        app,
        [project(tmp_path / "p", agent="command", command=argv)],
        [task("h", retry_backoff_s=0.0)],
    )

    orchestrator = await run_until_idle(app)

    state = orchestrator.state
    record = state.tasks["h"]
    assert record.state is TaskState.DONE
    attempts = [state.attempts[a] for a in record.attempts]
    first, last = attempts[0], attempts[-1]
    assert last.outcome is Outcome.SUCCEEDED
    for hung in attempts[:-1]:  # the first; more only if a machine stalls a whole second
        assert hung.outcome is Outcome.FAILED
        assert hung.stop_reason is StopReason.HUNG
        assert hung.failure_class is FailureClass.TRANSIENT
        assert hung.failure_rule == "hung"
    assert first.stop_reason is StopReason.HUNG
    # The whole process group died, grandchild included.
    assert first.pid is not None and _gone(first.pid)
    assert _gone(int(grandchild.read_text()))

    events = journal_events(home)
    stop = next(e for e in events if isinstance(e, AttemptStopRequested))
    end = next(e for e in events if isinstance(e, AttemptFinished) and e.attempt_id == first.id)
    assert (stop.attempt_id, stop.reason) == (first.id, StopReason.HUNG)
    assert events.index(stop) < events.index(end)  # journaled before the kill
    assert end.failure is not None and end.failure.idle_s is not None
    assert end.failure.idle_s >= HUNG_AFTER_S  # the watchdog never reports less
    assert verify_journal(events, SchedulerConfig(), settled=True) == []
    health = orchestrator.health()
    assert health.hung_killed == len(attempts) - 1 >= 1
    assert health.hung_after_s == HUNG_AFTER_S


def test_hung_watch_counts_silence_from_the_last_growth(tmp_path: Path) -> None:
    watch = HungWatch(10.0)
    log, never = tmp_path / "a.log", tmp_path / "missing.log"
    log.write_text("x")
    a, b = AttemptId("a#1"), AttemptId("b#1")
    logs = {a: str(log), b: str(never)}
    assert watch.check(logs, 100.0) == []
    assert watch.check(logs, 101.0) == []  # before the next look: not even stat'ed
    log.write_text("xy")  # a grows at 105: its silence counts from there
    assert watch.check(logs, 105.0) == []
    hung = watch.check(logs, 110.0)
    assert hung == [(b, 10.0)]  # b's log never appeared: silent since first seen
    # The loop passes only attempts not being stopped: b is gone from here on.
    assert watch.check({a: str(log)}, 115.0) == [(a, 10.0)]
    assert watch.next_check() is None  # both reported and forgotten
    assert HungWatch(None).check(logs, 1e9) == []
