"""The simulator with several instances (``runtime.sim_cluster``): leases, fencing,
pauses and suspends of the leader, skewed clocks — and the CI property: 500 seeds with
every fault on and every invariant holding (one leader per epoch, no stale-epoch write
accepted, no instance acting without a live lease, the simulator's own)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.test_simulator import ALL_FAULTS, DEMO, random_backlog
from trafficcontrol.cli.simulate import load_backlog
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.runtime import sim_cluster
from trafficcontrol.runtime.sim_cluster import ClusterOptions, ClusterSimulator, simulate_cluster
from trafficcontrol.runtime.sim_faults import Faults, SimOptions

CONFIG = SchedulerConfig(max_agents=6)


def grants_are_unique(sim: ClusterSimulator) -> None:
    epochs = [epoch for _shard, epoch, _holder, _at in sim.table.grants]
    assert epochs == sorted(set(epochs)), "one grant per epoch, rising"


def test_without_faults_one_instance_leads_throughout() -> None:
    report, sim = simulate_cluster(DEMO, CONFIG, seed=1, cluster=ClusterOptions(pause=0, suspend=0))
    assert report.ok, report.violations
    assert sim.counts.takeovers == 1 and sim.counts.refused == 0
    assert set(sim.counts.epochs) - {0} == {1}


def test_a_paused_leader_is_replaced_and_steps_down_when_it_resumes() -> None:
    options = ClusterOptions(pause=0.3, suspend=0, pause_ttls=(2.0, 3.0), max_pauses=3)
    report, sim = simulate_cluster(DEMO, CONFIG, seed=2, cluster=options)
    assert report.ok, report.violations
    assert sim.counts.pauses == 3 and sim.counts.takeovers == 4
    # Each that woke up before the end found its deadline passed: no write was tried.
    assert sim.counts.stepped_down >= 2 and sim.counts.refused == 0
    grants_are_unique(sim)


def test_a_suspended_leader_believes_its_lease_and_its_write_is_refused() -> None:
    # Its clock stood still while the machine slept: it resumes trusting a lease a
    # standby has taken since, and the fenced journal refuses what it then decides.
    options = ClusterOptions(pause=0, suspend=0.3, pause_ttls=(2.0, 3.0), max_pauses=3)
    report, sim = simulate_cluster(DEMO, CONFIG, seed=3, cluster=options)
    assert report.ok, report.violations
    assert sim.counts.suspends == 3
    assert sim.counts.refused >= 1
    grants_are_unique(sim)


def test_acting_on_an_expired_lease_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # A trust rule that outlives the lease (2x the TTL) with slow clocks: the checker
    # must see the leader act once the store has let the lease go.
    monkeypatch.setattr(sim_cluster, "TRUST", 2.0)
    options = ClusterOptions(pause=0, suspend=0, clock_skew=0.0, lease_ttl_s=0.5)
    faults = Faults(slow_disk=0.5, slow_disk_s=3.0)
    report, _sim = simulate_cluster(DEMO, CONFIG, seed=4, cluster=options, faults=faults)
    assert any("without a live lease at the store" in v for v in report.violations)


@pytest.mark.slow
def test_five_hundred_seeds_with_every_fault_on_keep_every_invariant(tmp_path: Path) -> None:
    failures: list[str] = []
    seen: Counter[str] = Counter()
    options = ClusterOptions(pause=0.03, suspend=0.02, clock_skew=0.15)
    for seed in range(500):
        if seed % 2:
            request = DEMO
            config = SchedulerConfig(max_agents=1 + seed % 10)
            sim_options = SimOptions()
        else:
            path, config, sim_options = random_backlog(seed, tmp_path)
            request = load_backlog(path)
        report, sim = simulate_cluster(
            request, config, seed=seed, faults=ALL_FAULTS, options=sim_options, cluster=options
        )
        epochs = [epoch for _shard, epoch, _holder, _at in sim.table.grants]
        if epochs != sorted(set(epochs)):
            failures.append(f"seed {seed}: grants {epochs}")
        if not report.ok:
            failures.append(f"seed {seed}: {report.violations[:3]}")
        seen.update(
            takeovers=sim.counts.takeovers,
            pauses=sim.counts.pauses,
            suspends=sim.counts.suspends,
            stepped_down=sim.counts.stepped_down,
            refused=sim.counts.refused,
        )
        seen.update(report.faults)
    assert not failures, "\n".join(failures[:10])
    assert all(seen[k] > 0 for k in ("pauses", "suspends", "stepped_down", "refused")), seen
    print(f"500 seeds: {dict(seen)}")
