"""The benchmark command runs and measures what the README says (numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def quick_report(module: str, *args: str) -> dict[str, Any]:
    """``python -m bench.MODULE --quick --json ARGS`` from the repository root: its report."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--quick", "--json", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        timeout=300,
        check=True,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_quick_bench_reports_every_metric_and_runs_each_task_once(tmp_path: Path) -> None:
    report = quick_report("scheduling", "--tmpdir", str(tmp_path))
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


def test_quick_adoption_bench_adopts_every_attempt_and_leaves_no_process(tmp_path: Path) -> None:
    report = quick_report("adoption", "--tmpdir", str(tmp_path))
    held, queued = report["build"]["held"], report["build"]["queued"]
    cases = report["start"]["cases"]
    assert (cases["live"]["adopted"], cases["live"]["adopted_finished"]) == (held, 0)
    assert (cases["finished"]["adopted"], cases["finished"]["adopted_finished"]) == (held, held)
    assert report["start"]["exit_records"] == {"succeeded": held}
    assert (cases["interrupted"]["adopted"], cases["interrupted"]["interrupted"]) == (0, held)
    assert cases["floor"]["running_before"] == 0 and cases["floor"]["interrupted"] == 0
    for name in ("live", "finished"):  # the adopted run on: only queued tasks can start
        assert cases[name]["running_before"] == held
        assert cases[name]["dispatched"] == cases[name]["dispatched_queued"] == queued
    for name in ("live", "floor", "finished", "interrupted"):
        assert 0 < cases[name]["from_start_s"] < cases[name]["from_exec_s"]
    overhead = report["overhead"]
    for kind in ("supervised", "command", "raw"):
        assert overhead[kind]["samples"] == overhead["attempts"]
        assert 0 < overhead[kind]["start_ms"] < overhead[kind]["round_ms"]
    assert report["idle"]["shim_rss_mb"] > 0 and report["idle"]["shims"] > 0
    assert report["left_to_kill"] == 0, "every process the bench started was already gone"
    assert set(report["pass"]) == {"start_adopting_live", "start_adopting_finished"}
    assert not list(tmp_path.iterdir()), "its state homes are removed"


def test_quick_http_bench_reports_the_three_goals_and_reads_every_batch(tmp_path: Path) -> None:
    report = quick_report("http", "--tmpdir", str(tmp_path))
    throughput = report["throughput"]
    assert throughput["verified"] is True and throughput["problems"] == []
    off, on = throughput["off"], throughput["on"]
    assert (off["served"], on["served"]) == (False, True)
    assert off["tasks"] == on["tasks"] and off["transitions"] == on["transitions"]
    assert throughput["ratio"] == on["tasks_per_s"] / off["tasks_per_s"]
    assert len(throughput["ratios_per_pair"]) == report["repeat"]
    for kind in ("loaded", "paced"):  # every committed batch reached the client, or is counted
        push = report["push"][kind]
        assert push["caught_up"] is True and push["client_errors"] == []
        assert push["samples"] > 0 and push["samples"] + push["missing"] == push["batches"]
        assert 0 < push["p50_ms"] <= push["p99_ms"] <= push["max_ms"]
        assert push["events_received"] <= push["events_appended"]
        if push["resyncs"] == push["gaps"] == 0:  # nothing fell out of the hub's ring
            assert push["events_received"] == push["events_appended"] and push["missing"] == 0
    pages = report["pages"]
    assert pages["served_total"] == pages["home"]["tasks"] == pages["home"]["counts"]["done"]
    for name in ("healthz", "overview", "tasks", "status", "metrics"):
        page = pages["pages"][name]
        assert page["samples"] == pages["requests"] and page["bytes"] > 0
        assert 0 < page["p50_ms"] <= page["p99_ms"]
    assert set(report["pass"]) == {
        "on_off_ratio",
        "exactly_once",
        "push_p99_ms",
        "push_paced_p99_ms",
        "overview_p50_ms",
    }
    assert not list(tmp_path.iterdir()), "its state homes are removed"


def test_quick_profile_bench_reports_span_cost_and_both_latencies() -> None:
    report = quick_report("profile")
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


def test_quick_store_bench_runs_every_task_once_and_times_recovery() -> None:
    report = quick_report("store")
    assert report["ours"]["verified"] is True
    assert report["floor"]["rows"] == report["ours"]["journal_events"]
    assert report["floor"]["synchronous_commit"] == "on"
    assert report["recovery"]["events"] >= 19_999
    assert report["recovery"]["start_to_first_dispatch_s"] > 0
    assert set(report["pass"]) == {"floor_ratio", "tasks_per_s", "exactly_once", "recovery_lt_2s"}


@pytest.mark.postgres
def test_quick_failover_bench_measures_each_kill_and_handoff(
    tmp_path: Path, pg_server: None
) -> None:
    report = quick_report("failover", "--tmpdir", str(tmp_path))
    assert report["kills"] == 3 and len(report["kill_to_dispatch_s"]["all"]) == 3
    assert report["handoffs"] == 2
    assert all(g > 0 for g in report["kill_to_dispatch_s"]["all"])
    assert report["interrupted_attempts"] == 0, "a handoff interrupts no attempt"
    # A kill interrupts at most the attempts it caught between dispatch and agent start.
    assert 0 <= report["interrupted_by_kills"] <= 3 * 4
    assert report["adopted_attempts"] > 0
