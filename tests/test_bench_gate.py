"""The performance regression gate (``bench/gate.py``): the committed baseline passes an
unchanged tree, and an injected 30% slowdown of one operation fails it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent


def gate(
    *args: str, baseline: str = "bench/baseline.json", **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "bench"), "--compare", baseline, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        check=False,
    )


def test_the_committed_baseline_passes_an_unchanged_tree() -> None:
    done = gate("--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["regressions"] == []
    assert set(report["figures"]) == {"decide", "fold", "snapshot", "profile"}
    assert all(f["ratio"] > 0 for f in report["figures"].values())


@pytest.fixture(scope="module")
def this_machine(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A baseline measured here and now: the committed one comes from another machine,
    whose ratios may sit far enough above this one's to hide a 30% slowdown."""
    path = tmp_path_factory.mktemp("gate") / "baseline.json"
    saved = subprocess.run(
        [str(ROOT / "scripts" / "bench"), "gate", "--save", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert saved.returncode == 0, saved.stdout + saved.stderr
    return str(path)


@pytest.mark.parametrize("operation", ["decide", "profile"])
def test_an_injected_30_percent_slowdown_fails_the_gate(operation: str, this_machine: str) -> None:
    done = gate(baseline=this_machine, TC_GATE_SLOWDOWN=f"{operation}:1.3")
    assert done.returncode == 1, done.stdout + done.stderr
    regressions = [line for line in done.stdout.splitlines() if line.startswith("REGRESSION")]
    assert [line.split()[1] for line in regressions] == [f"{operation}:"]
