"""PostgreSQL stopped (``pg_ctl stop -m fast``) and started again in the middle of a
real ``tc run`` with real subprocess agents: no event lost, no task done twice,
dispatch paused during the outage and resumed after, one ``store_outage`` incident.

The server is a private cluster this test creates (``initdb`` into its own directory,
its own port, run as the ``postgres`` user since PostgreSQL refuses root), so stopping
it disturbs nothing else.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli_helpers import spawn_tc, tc
from tests.helpers import AGENT, journal_events
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import AttemptDispatched, AttemptFinished, StoreOutage
from trafficcontrol.domain.invariants import verify_journal
from trafficcontrol.domain.model import Outcome

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.chaos]

BIN = Path("/usr/lib/postgresql/15/bin")
TASKS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(*argv: str) -> subprocess.CompletedProcess[str]:
    command = argv if os.geteuid() != 0 else ("runuser", "-u", "postgres", "--", *argv)
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


class Cluster:
    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        done = _as_postgres(
            str(BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}",
            "-w",
            *args,
        )
        assert done.returncode == 0, (args, done.stdout, done.stderr)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if not (BIN / "initdb").exists():
        raise AssertionError(f"{BIN}/initdb is missing: apt-get install -y postgresql")
    root = Path(f"/tmp/tc-pg-{os.getpid()}-{tmp_path.name}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o755)
    shutil.chown(root, "postgres", "postgres") if os.geteuid() == 0 else None
    made = _as_postgres(
        str(BIN / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "postgres"
    )
    assert made.returncode == 0, made.stderr
    server = Cluster(root)
    server.pg_ctl("start", "-l", str(root / "server.log"))
    try:
        yield server
    finally:
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(server.data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def backlog(root: Path, record: Path) -> Path:
    (root / "w").mkdir()
    lines = [
        "[[projects]]",
        'id = "w"',
        'path = "w"',
        'agent = "command"',
        f'command = ["{sys.executable}", "{AGENT}", "--work", "0.3", "--ledger", "{record}"]',
        "lock_in_place = false",
        "",
    ]
    for i in range(TASKS):
        lines += ["[[tasks]]", f'id = "t{i:02d}"', 'project = "w"', 'prompt = "x"', ""]
    path = root / "backlog.toml"
    path.write_text("\n".join(lines))
    return path


def succeeded(home: Path) -> int:
    try:
        events = journal_events(home)
    except Exception:  # the server is down: nothing to read now
        return -1
    return sum(
        1 for e in events if isinstance(e, AttemptFinished) and e.outcome is Outcome.SUCCEEDED
    )


def test_a_postgres_restart_mid_run_loses_nothing_and_pauses_dispatch(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TC_STORE", cluster.url)
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        "[run]\nrequest_poll_s = 0.05\nstore_retry_max_s = 0.5\nstore_busy_timeout_s = 2.0\n"
    )
    record = tmp_path / "runs.txt"
    record.touch()
    tc("submit", str(backlog(tmp_path, record)), home=home)
    run = spawn_tc("run", "--no-live", "--max-agents", "4", home=home)
    try:
        deadline = time.monotonic() + 60
        while succeeded(home) < 8:
            assert time.monotonic() < deadline, "fewer than 8 tasks done in 60 s"
            assert run.poll() is None, run.communicate()
            time.sleep(0.05)  # another process writes the journal
        cluster.pg_ctl("stop", "-m", "fast")
        stopped_at = time.time()
        time.sleep(2.0)  # the outage itself: agents finish while the store is down
        started_at = time.time()
        cluster.pg_ctl("start", "-l", str(cluster.data.parent / "server.log"))
        _out, err = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err[-3000:]

    events = journal_events(home)
    assert verify_journal(events, SchedulerConfig(max_agents=4), settled=True) == []
    done = Counter(
        e.attempt_id.split("#")[0]
        for e in events
        if isinstance(e, AttemptFinished) and e.outcome is Outcome.SUCCEEDED
    )
    assert len(done) == TASKS and set(done.values()) == {1}, done
    ran = Counter(
        line.split()[1] for line in record.read_text().splitlines() if line.startswith("END")
    )
    assert len(ran) == TASKS and max(ran.values()) == 1, "an agent ran to completion twice"
    outages = [e for e in events if isinstance(e, StoreOutage)]
    assert len(outages) == 1, outages
    assert outages[0].started_at <= started_at
    during = [
        e for e in events if isinstance(e, AttemptDispatched) and stopped_at < e.at < started_at
    ]
    assert during == [], "an attempt was dispatched while the store was down"
    later = [e for e in events if isinstance(e, AttemptDispatched) and e.at > started_at]
    assert later, "dispatch did not resume after the outage"
