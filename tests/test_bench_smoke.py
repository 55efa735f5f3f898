"""The benchmark command runs and measures what the README says (numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_quick_bench_reports_every_metric_and_runs_each_task_once(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.scheduling", "--quick", "--json", "--tmpdir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        timeout=300,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["throughput"]["verified"] is True
    assert report["throughput"]["problems"] == []
    assert report["floor"]["rows"] == report["throughput"]["transitions"]
    assert report["latency"]["samples"] > 0 and report["latency"]["p99_ms"] > 0
    assert report["memory"]["recover"]["tasks"] == report["memory"]["queued"]
    assert set(report["pass"]) == {
        "tasks_per_s",
        "floor_ratio",
        "exactly_once",
        "dispatch_p99_ms",
        "peak_rss_mb",
    }
