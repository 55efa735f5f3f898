"""``./scripts/bench store --quick`` runs on the local PostgreSQL and reports every
figure (numbers are not asserted: the bench reports them beside their floors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_quick_store_bench_runs_every_task_once_and_times_recovery() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.store", "--quick", "--json"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        timeout=300,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["ours"]["verified"] is True
    assert report["floor"]["rows"] == report["ours"]["journal_events"]
    assert report["floor"]["synchronous_commit"] == "on"
    assert report["recovery"]["events"] >= 19_999
    assert report["recovery"]["start_to_first_dispatch_s"] > 0
    assert set(report["pass"]) == {"floor_ratio", "tasks_per_s", "exactly_once", "recovery_lt_2s"}
