"""``domain.profile``: attempt phases, the critical path and bottlenecks, from a journal
whose answers are known by construction (the simulator in virtual time, and a real
``tc run`` of command agents)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.cli_helpers import spawn_tc, tc, tc_json
from tests.helpers import agent_argv, journal_events, make_app, project, submit, task
from tests.test_claude_resume import wait_for_events
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import OrchestratorStarted
from trafficcontrol.domain.model import AgentSettings, ProjectId, ProjectSpec, SimSettings
from trafficcontrol.domain.profile import Stat, profile
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.runtime.simulator import Simulator


def chain_and_fillers(duration: dict[str, float]) -> SubmitRequest:
    """a → b → c (the critical path) beside short independent x, y, z."""
    specs = []
    for tid in ("a", "b", "c", "x", "y", "z"):
        deps = {"b": ("a",), "c": ("b",)}.get(tid, ())
        specs.append(
            task(
                tid,
                deps=deps,
                settings=AgentSettings(sim=SimSettings(duration_s=duration[tid], jitter=0.0)),
            )
        )
    proj = ProjectSpec(id=ProjectId("p"), path="/simulated/p", agent="sim", lock_in_place=False)
    return SubmitRequest(source="test", projects=[proj], tasks=specs)


def test_the_critical_path_of_a_simulated_chain_is_the_chain() -> None:
    durations = {"a": 10.0, "b": 20.0, "c": 5.0, "x": 3.0, "y": 3.0, "z": 3.0}
    sim = Simulator(chain_and_fillers(durations), SchedulerConfig(max_agents=4), seed=1)
    report = sim.run()
    assert report.ok, report.violations
    result = profile(sim.journal)
    assert [s.task_id for s in result.critical_path] == ["a", "b", "c"]
    assert result.makespan_s == pytest.approx(35.0, abs=1.0)
    ((phase, seconds, share), *_rest) = result.bottlenecks()
    assert phase == "work" and seconds == pytest.approx(35.0, abs=1.0) and share > 0.9
    assert result.phases["work"].count == 6
    assert result.dependency_gaps.count == 2 and result.dependency_gaps.max < 0.5


def test_a_queue_of_more_ready_tasks_than_agents_shows_as_queue_wait() -> None:
    durations = {"a": 10.0, "b": 10.0, "c": 10.0, "x": 10.0, "y": 10.0, "z": 10.0}
    sim = Simulator(chain_and_fillers(durations), SchedulerConfig(max_agents=1), seed=1)
    assert sim.run().ok
    result = profile(sim.journal)
    # Six ten-second tasks, one at a time: 60 s, and four of them started only after
    # another one had run while they were ready (the chain's b and c wait for a, b).
    assert result.makespan_s == pytest.approx(60.0, abs=1.0)
    waits = sorted(a.durations()["queue"] for a in result.attempts)
    assert waits[-1] >= 30.0 - 1.0 and sum(1 for w in waits if w > 1.0) >= 3
    assert result.phases["work"].total == pytest.approx(60.0, abs=1.0)


def test_stat_quantiles_are_nearest_rank() -> None:
    stat = Stat.of([float(v) for v in range(1, 101)])
    assert (stat.count, stat.p50, stat.p99, stat.max, stat.total) == (
        100,
        50.0,
        99.0,
        100.0,
        5050.0,
    )
    assert Stat.of([]).count == 0


@pytest.mark.e2e
def test_tc_profile_of_a_real_run_names_its_critical_path_and_bottlenecks(tmp_path: Path) -> None:
    home = tmp_path / "home"
    app = make_app(home)
    slow = AgentSettings(command=agent_argv("--work", "0.4"))
    fast = AgentSettings(command=agent_argv("--exit", "0"))
    submit(
        app,
        [project(tmp_path / "p", agent="command", command=fast.command)],
        [
            task("a", settings=slow),
            task("b", deps=["a"], settings=slow),
            task("c", deps=["b"], settings=slow),
            *(task(f"f{i}") for i in range(6)),
        ],
    )
    app.close()
    tc("run", "--no-live", "--max-agents", "3", home=home)

    result = profile(journal_events(home))
    assert [s.task_id for s in result.critical_path] == ["a", "b", "c"]
    for attempt in result.attempts:  # the command adapter measures the agent's own life
        assert attempt.agent_started_at is not None and attempt.exited_at is not None
        assert attempt.dispatched_at <= attempt.agent_started_at <= attempt.exited_at
        assert attempt.exited_at <= (attempt.finished_at or 0.0)

    shown = tc_json("profile", home=home)
    assert [s["task"] for s in shown["critical_path"]] == ["a", "b", "c"]
    assert len(shown["bottlenecks"]) == 3
    assert shown["bottlenecks"][0]["phase"] == "work"
    assert {p["phase"] for p in shown["phases"]} >= {"queue", "workspace", "spawn", "work"}
    assert 0 < shown["makespan_s"] < 60
    text = tc("profile", home=home).stdout
    assert "critical path" in text and "a → b → c" in text


@pytest.mark.e2e
def test_tc_profile_sample_profiles_the_running_orchestrator(tmp_path: Path) -> None:
    home = tmp_path / "home"
    app = make_app(home)
    submit(app, [project(tmp_path / "p")], [task("a")])
    app.close()
    refused = tc("profile", "--sample", "1s", home=home, check=False)
    assert refused.returncode == 2 and "nothing to sample" in refused.stderr
    assert tc("profile", "--sample", "soon", home=home, check=False).returncode == 2

    running = spawn_tc("run", "--forever", "--no-live", home=home)
    try:
        wait_for_events(
            home,
            lambda ev: any(isinstance(e, OrchestratorStarted) for e in ev),
            "tc run started",
        )
        done = tc("profile", "--sample", "1s", home=home)
    finally:
        running.send_signal(signal.SIGTERM)
        running.communicate(timeout=60)
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    html, speedscope = Path(lines["report"]), Path(lines["speedscope"])
    assert html.parent == home / "profiles"
    assert "pyinstrument" in html.read_text()
    assert "speedscope" in json.loads(speedscope.read_text())["$schema"]
