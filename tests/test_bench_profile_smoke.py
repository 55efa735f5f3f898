"""``./scripts/bench profile --quick`` runs and reports every figure (numbers are not
asserted: the bench reports them beside their floors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_quick_profile_bench_reports_span_cost_and_both_latencies() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.profile", "--quick", "--json"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        timeout=300,
        check=True,
    )
    report = json.loads(done.stdout)
    spans = report["spans"]
    assert spans["exactly_once"] is True
    assert spans["spans_observed_per_run"] > 0 and spans["span_cost_us"] > 0
    before, after = report["latency"]["before"], report["latency"]["after"]
    assert before["fork_supervisors"] is False and after["fork_supervisors"] is True
    assert before["attempts"] == after["attempts"] == 20
    assert set(report["pass"]) == {
        "span_overhead_lt_2pct",
        "ready_to_agent_p50_cut_25pct",
        "exit_to_dependent_p50_cut_25pct",
    }
