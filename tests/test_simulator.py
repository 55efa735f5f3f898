"""The deterministic simulator: replay, planning numbers, every fault kind, recovery,
and the CI property — hundreds of seeds with all faults on, every invariant holding,
each failure naming the ``tc simulate`` command that replays it."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.domain_driver import canonical
from trafficcontrol.adapters.agents.sim import SimBackend
from trafficcontrol.cli.simulate import load_backlog, replay_command
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.decide import Decision, Dispatch, SchedulerConfig, decide
from trafficcontrol.domain.events import AttemptDispatched
from trafficcontrol.domain.model import (
    AgentSettings,
    AttemptId,
    Outcome,
    ProjectId,
    ProjectSpec,
    SimSettings,
    TaskId,
    TaskSpec,
)
from trafficcontrol.domain.records import AttemptRecord
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.domain.state import State, apply, fold
from trafficcontrol.errors import BacklogError
from trafficcontrol.ports import AgentRequest, Leftover
from trafficcontrol.runtime import simulator as simulator_module
from trafficcontrol.runtime.sim_agents import plan_attempt
from trafficcontrol.runtime.sim_faults import Faults, SimOptions
from trafficcontrol.runtime.sim_report import SimReport
from trafficcontrol.runtime.simulator import Simulator, simulate
from trafficcontrol.testing.fakes import RecordingReporter

DEMO = load_backlog(None)
ALL_FAULTS = Faults.all_on()
FAULT_KINDS = ("agent_crash", "agent_hang", "orchestrator_crash", "store_failure", "slow_commit")


def fixed(duration: float) -> AgentSettings:
    return AgentSettings(sim=SimSettings(duration_s=duration, jitter=0.0))


def backlog(tasks: list[TaskSpec], **project: Any) -> SubmitRequest:
    spec = ProjectSpec(
        id=ProjectId("p"), path="/virtual/p", is_git=True, settings=fixed(10.0), **project
    )
    return SubmitRequest(source="test", projects=[spec], tasks=tasks)


def task(tid: str, *deps: str, **kw: Any) -> TaskSpec:
    return TaskSpec(
        id=TaskId(tid),
        project=ProjectId("p"),
        title=tid,
        prompt="do it",
        depends_on=tuple(TaskId(d) for d in deps),
        **kw,
    )


def journal_bytes(sim: Simulator) -> bytes:
    return msgspec.json.encode(sim.journal)


# -- determinism --------------------------------------------------------------------------
def test_the_same_seed_replays_the_same_run() -> None:
    config = SchedulerConfig(max_agents=6)
    first = Simulator(DEMO, config, seed=11, faults=ALL_FAULTS)
    second = Simulator(DEMO, config, seed=11, faults=ALL_FAULTS)
    assert first.run() == second.run()
    assert journal_bytes(first) == journal_bytes(second)
    assert first.crashes == second.crashes

    other = Simulator(DEMO, config, seed=12, faults=ALL_FAULTS)
    assert other.run() != first.run() or journal_bytes(other) != journal_bytes(first)
    assert journal_bytes(other) != journal_bytes(first)


def test_without_faults_the_runs_generator_is_never_drawn() -> None:
    """Agents draw from generators keyed by the seed; a run without faults leaves the
    run's own generator untouched, so adding a fault kind changes only what it injects."""
    sim = Simulator(DEMO, SchedulerConfig(), seed=5)
    before = sim.rng.getstate()
    assert sim.run().ok
    assert sim.rng.getstate() == before


def test_a_simulated_attempt_is_what_the_sim_adapter_does() -> None:
    """Same key, same draws: ``tc simulate --seed N`` plays attempts as ``tc run`` with
    sim seed N (durations, failures, tokens, session ids)."""
    sim = SimSettings(duration_s=0.0, jitter=0.5, failure_rate=0.5, tokens_in=5000)

    class Clock:
        def now(self) -> float:
            return 0.0

        def monotonic(self) -> float:
            return 0.0

        async def sleep(self, seconds: float) -> None:
            slept.append(seconds)

    for n in range(20):
        slept: list[float] = []
        attempt_id = AttemptId(f"t{n}#{n % 3 + 1}")
        request = AgentRequest(
            attempt_id=attempt_id,
            task_id=TaskId(f"t{n}"),
            project_id=ProjectId("p"),
            attempt_no=n % 3 + 1,
            title="t",
            prompt="p",
            workdir=Path("/virtual"),
            log_path=Path("/virtual/log"),
            model=("opus", "haiku", None)[n % 3],
            settings=AgentSettings(sim=msgspec.structs.replace(sim, duration_s=float(n))),
        )
        backend = SimBackend(clock=Clock(), seed=7, write_logs=False)
        result = asyncio.run(backend.run(request, RecordingReporter()))
        plan = plan_attempt(
            msgspec.structs.replace(sim, duration_s=float(n)),
            seed=7,
            attempt_id=attempt_id,
            attempt_no=n % 3 + 1,
            model=request.model,
            faults=Faults(),
            rng=random.Random(0),
        )
        assert (plan.outcome, plan.usage, plan.session_id) == (
            result.outcome,
            result.usage,
            result.session_id,
        )
        assert [plan.duration_s] == (slept or [0.0])


# -- planning ------------------------------------------------------------------------------
def test_a_chain_of_four_ten_second_tasks_takes_forty_seconds() -> None:
    request = backlog([task("a"), task("b", "a"), task("c", "b"), task("d", "c")])
    report = simulate(request, SchedulerConfig(max_agents=8), seed=1)
    assert report.ok, report.violations
    assert report.makespan_s == 40.0
    assert report.tasks["done"] == 4
    assert report.utilisation == pytest.approx(40.0 / (8 * 40.0))


def test_sixteen_ten_second_tasks_on_eight_agents_take_twenty_seconds() -> None:
    request = backlog([task(f"t{i}") for i in range(16)])
    report = simulate(request, SchedulerConfig(max_agents=8), seed=1)
    assert report.ok, report.violations
    assert report.makespan_s == 20.0
    assert report.utilisation == 1.0
    assert report.busy_agent_s == 160.0


def test_limits_and_locks_shape_the_plan() -> None:
    exclusive = backlog([task(f"t{i}", resources=("db",)) for i in range(4)])
    assert simulate(exclusive, SchedulerConfig(max_agents=8), seed=1).makespan_s == 40.0
    per_project = backlog([task(f"t{i}") for i in range(4)], max_concurrent=2)
    assert simulate(per_project, SchedulerConfig(max_agents=8), seed=1).makespan_s == 20.0


def test_tasks_of_other_backends_take_the_mean_duration() -> None:
    request = backlog([task("a", agent="claude", settings=None)])
    request = msgspec.structs.replace(
        request, projects=[msgspec.structs.replace(request.projects[0], settings=AgentSettings())]
    )
    report = simulate(request, SchedulerConfig(), seed=3, options=SimOptions(mean_duration_s=90))
    assert report.ok
    assert 45.0 <= report.makespan_s <= 135.0  # the sim's default jitter of 50%


def test_the_demo_backlog_completes_and_reports() -> None:
    report = simulate(DEMO, SchedulerConfig(max_agents=8), seed=0)
    assert report.ok, report.violations
    assert report.tasks == {"done": 30, "failed": 0, "cancelled": 0, "pending": 0, "total": 30}
    assert report.failures == {"agent_failure": 3}  # its three fail_attempts = 1 tasks
    assert report.retries == 3
    assert set(report.tokens) == {"haiku", "opus", "sonnet"}
    assert 0 < report.utilisation < 1
    data = report.to_json()
    assert data["ok"] is True and data["simulated"] is True
    assert msgspec.json.decode(msgspec.json.encode(data))["makespan_s"] == report.makespan_s


def test_a_refused_backlog_is_refused_as_by_tc_submit() -> None:
    request = backlog([task("a", "b"), task("b", "a")])
    with pytest.raises(BacklogError) as refused:
        simulate(request, SchedulerConfig(), seed=0)
    assert "dependency cycle" in str(refused.value.problems)


def test_hangs_get_a_timeout_only_when_they_can_happen() -> None:
    request = backlog([task("a"), task("b", timeout_s=5.0)])
    plain = Simulator(request, SchedulerConfig(), seed=0)
    assert [t.timeout_s for t in plain.request.tasks] == [None, 5.0]
    hanging = Simulator(request, SchedulerConfig(), seed=0, faults=Faults(agent_hang=0.5))
    assert [t.timeout_s for t in hanging.request.tasks] == [100.0, 5.0]


# -- faults --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("faults", "kind"),
    [
        (Faults(agent_crash=0.5), "agent_crash"),
        (Faults(agent_hang=0.3), "agent_hang"),
        (Faults(orchestrator_crash=0.2), "orchestrator_crash"),
        (Faults(store_failure=0.2), "store_failure"),
        (Faults(slow_disk=0.5), "slow_commit"),
    ],
)
def test_each_fault_kind_happens_and_the_backlog_still_completes(faults: Faults, kind: str) -> None:
    reports = [
        simulate(DEMO, SchedulerConfig(max_agents=8), seed=s, faults=faults) for s in range(5)
    ]
    for report in reports:
        assert report.ok, (report.seed, report.violations)
        assert report.tasks["total"] == 30
        assert report.tasks["done"] + report.tasks["failed"] + report.tasks["pending"] == 30
    injected = sum(r.faults[kind] for r in reports)
    assert injected > 0
    others = {k for k in FAULT_KINDS if k != kind}
    assert all(r.faults[k] == 0 for r in reports for k in others)
    failures = Counter[str]()
    for r in reports:
        failures.update(r.failures)
    if kind == "agent_crash":
        assert failures["agent_crash"] > 0
    if kind == "agent_hang":
        assert failures["timeout"] > 0
    if kind in ("orchestrator_crash", "store_failure"):
        assert sum(r.recoveries for r in reports) == injected
        # Supervisors survive the crashes: their agents are adopted or ended while down,
        # and only an attempt whose agent never started is interrupted.
        assert sum(r.adopted + r.finished_while_down for r in reports) > 0
        assert sum(r.lost for r in reports) == 0
        assert failures["interrupted"] == sum(r.unstarted for r in reports)
    if kind == "slow_commit":
        slow = max(r.max_batch for r in reports)
        assert slow > max(
            simulate(DEMO, SchedulerConfig(max_agents=8), seed=s).max_batch for s in range(5)
        )


def test_recovery_from_a_snapshot_equals_a_full_replay() -> None:
    options = SimOptions(snapshot_every_s=2.0, keep_snapshots=1000)
    runs = [
        Simulator(DEMO, SchedulerConfig(max_agents=4), seed=s, faults=ALL_FAULTS, options=options)
        for s in range(10)
    ]
    reports = [sim.run() for sim in runs]
    assert all(r.ok for r in reports), [r.violations for r in reports]
    assert sum(r.from_snapshot for r in reports) > 0
    checked = 0
    for sim in runs:
        full = fold(sim.journal)
        assert canonical(full) == canonical(sim.replica)
        for payload in sim.snapshots:
            data = snapshot.decode(payload)
            restored = snapshot.restore(data)
            for event in sim.journal[data.seq :]:
                apply(restored, event)
            assert canonical(restored) == canonical(full)
            checked += 1
    assert checked > 20


# -- the checks bite ---------------------------------------------------------------------
def test_a_scheduler_that_stalls_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def stalled(state: State, now: float, config: SchedulerConfig) -> Decision:
        decision = decide(state, now, config)
        if state.attempts:  # after the first dispatch, never dispatch again
            kept = [c for c in decision.commands if not isinstance(c, Dispatch)]
            return Decision(commands=kept, next_wakeup=decision.next_wakeup)
        return decision

    monkeypatch.setattr(simulator_module, "decide", stalled)
    report = simulate(DEMO, SchedulerConfig(), seed=0)
    assert not report.ok
    assert "no progress: task" in report.violations[0]


def test_a_scheduler_that_ignores_locks_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def greedy(state: State, now: float, config: SchedulerConfig) -> Decision:
        decision = decide(state, now, config)
        ready = [t for t, r in state.tasks.items() if r.state == "ready"]
        taken = {c.task_id for c in decision.commands if isinstance(c, Dispatch)}
        extra = [
            Dispatch(
                task_id=t,
                attempt_id=AttemptId(f"{t}#{len(state.tasks[t].attempts) + 1}"),
                attempt_no=len(state.tasks[t].attempts) + 1,
                backend="sim",
                model=None,
                resources=state.tasks[t].spec.resources,
                deadline=None,
            )
            for t in ready
            if t not in taken
        ]
        return Decision(commands=[*decision.commands, *extra], next_wakeup=decision.next_wakeup)

    monkeypatch.setattr(simulator_module, "decide", greedy)
    report = simulate(DEMO, SchedulerConfig(max_agents=30), seed=0)
    assert not report.ok
    assert "lock 'db:schema' is double-held" in report.violations[0]


def test_a_recovery_that_loses_events_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real_restore = snapshot.restore

    def lossy(data: Any) -> State:
        state = real_restore(data)
        state.seq += 1  # skips the first event of the tail
        return state

    monkeypatch.setattr(snapshot, "restore", lossy)
    reports = [
        simulate(DEMO, SchedulerConfig(), seed=s, faults=Faults(orchestrator_crash=0.2))
        for s in range(5)
    ]
    bad = [r for r in reports if r.violations]
    assert bad
    assert any("recovery from snapshot + tail differs" in v for r in bad for v in r.violations)


def test_a_recovery_that_reruns_an_agent_that_finished_while_down_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The flaw issue 15 fixed: exit records ignored, so an agent that succeeded while no
    orchestrator ran is journaled interrupted and its task runs again."""
    real_find = Simulator._find_leftover

    def ignoring_exit_records(self: Simulator, attempt: AttemptRecord) -> Leftover | None:
        found = real_find(self, attempt)
        return None if found is not None and found.finished else found

    monkeypatch.setattr(Simulator, "_find_leftover", ignoring_exit_records)
    reports = [
        simulate(DEMO, SchedulerConfig(max_agents=8), seed=s, faults=Faults(orchestrator_crash=0.2))
        for s in range(10)
    ]
    violations = [v for r in reports for v in r.violations]
    assert any("ended succeeded, but the journal records it interrupted" in v for v in violations)
    assert any("its task ran again" in v for v in violations)


# -- the CI property: >= 500 seeds, all fault kinds on -------------------------------------
def random_backlog(seed: int, directory: Path) -> tuple[Path, SchedulerConfig, SimOptions]:
    """A random DAG backlog as a TOML file (so a failure replays with ``tc simulate``)."""
    rng = random.Random(seed)
    lines: list[str] = []
    projects = []
    for i in range(rng.randint(1, 3)):
        pid = f"p{i}"
        projects.append(pid)
        # "." is the file's own directory: it exists and is no git repository, so its
        # tasks lock the project in place; the others do not exist: simulated worktrees.
        path = "." if i == 2 else f"projects/{pid}"
        lines += ["[[projects]]", f'id = "{pid}"', f'path = "{path}"']
        lines.append(f'agent = "{rng.choice(["sim", "sim", "claude"])}"')
        lines.append(f"max_attempts = {rng.randint(1, 3)}")
        if rng.random() < 0.3:
            lines.append(f"max_concurrent = {rng.randint(1, 3)}")
        if rng.random() < 0.3:
            lines.append(f'on_interrupt = "{rng.choice(["restart", "resume", "fail"])}"')
        if rng.random() < 0.7:
            lines.append(
                f"sim = {{ duration = {rng.choice([0.0, 0.5, 2.0, 5.0])},"
                f" jitter = {rng.choice([0.0, 0.5])}, failure_rate = {rng.choice([0.0, 0.2])} }}"
            )
        lines.append("")
    for i in range(rng.randint(1, 25)):
        deps = sorted({f"t{rng.randrange(i)}" for _ in range(rng.randint(0, 2))} if i else set())
        pool = ["db", "cache", "net", "api"]
        resources = [
            r + (":shared" if rng.random() < 0.4 else "")
            for r in rng.sample(pool, rng.choice([0, 0, 1, 2]))
        ]
        lines += [
            "[[tasks]]",
            f'id = "t{i}"',
            f'project = "{rng.choice(projects)}"',
            'prompt = "do it"',
            f'priority = "P{rng.randint(0, 3)}"',
            f"depends_on = {deps!r}".replace("'", '"'),
            f"resources = {resources!r}".replace("'", '"'),
            f"retry_backoff = {rng.choice([0.5, 1.0, 5.0])}",
        ]
        if rng.random() < 0.5:
            lines.append(f'model = "{rng.choice(["opus", "sonnet", "haiku"])}"')
        if rng.random() < 0.2:
            lines.append(f"timeout = {rng.choice([1.0, 3.0, 30.0])}")
        if rng.random() < 0.2:
            lines.append("sim = { fail_attempts = 1 }")
        lines.append("")
    path = directory / f"dag-{seed}.toml"
    path.write_text("\n".join(lines))
    per_model = {m: rng.randint(1, 2) for m in rng.sample(["opus", "sonnet", "default"], 1)}
    config = SchedulerConfig(
        max_agents=rng.randint(1, 8),
        per_project=rng.choice([None, None, 2]),
        per_model=per_model if rng.random() < 0.4 else {},
    )
    return path, config, SimOptions(mean_duration_s=3.0)


def check(report: SimReport, command: str) -> str | None:
    if report.ok:
        return None
    return f"seed {report.seed} broke an invariant: {report.violations[:3]}\n  replay: {command}"


@pytest.mark.slow
def test_hundreds_of_seeds_with_every_fault_on_keep_every_invariant(tmp_path: Path) -> None:
    started = time.perf_counter()
    failures: list[str] = []
    seen: Counter[str] = Counter()
    recoveries = Counter[str]()
    demo_seeds = range(1000)
    for seed in demo_seeds:
        config = SchedulerConfig(max_agents=1 + seed % 12, per_project=[None, 3][seed % 5 == 0])
        report = simulate(DEMO, config, seed=seed, faults=ALL_FAULTS)
        seen.update(report.faults)
        recoveries.update(
            snapshot=report.from_snapshot,
            replay=report.full_replay,
            adopted=report.adopted,
            finished_while_down=report.finished_while_down,
            lost=report.lost,
        )
        command = replay_command(None, seed=seed, config=config, faults=ALL_FAULTS)
        failures += filter(None, [check(report, command)])
    dag_seeds = range(10_000, 11_000)
    for seed in dag_seeds:
        path, config, options = random_backlog(seed, tmp_path)
        request = load_backlog(path)
        report = simulate(request, config, seed=seed, faults=ALL_FAULTS, options=options)
        seen.update(report.faults)
        command = replay_command(
            str(path), seed=seed, config=config, faults=ALL_FAULTS, options=options
        )
        failures += filter(None, [check(report, command)])
    elapsed = time.perf_counter() - started
    assert not failures, "\n".join(failures[:10])
    assert all(seen[kind] > 0 for kind in (*FAULT_KINDS, "supervisor_lost")), seen
    assert all(n > 0 for n in recoveries.values()) and len(recoveries) == 5, recoveries
    print(
        f"{len(demo_seeds) + len(dag_seeds)} seeds in {elapsed:.1f}s; faults {dict(seen)};"
        f" recoveries {dict(recoveries)}"
    )


def test_a_failing_seed_names_the_command_that_replays_it() -> None:
    config = SchedulerConfig(max_agents=3, per_model={"opus": 1})
    report = msgspec.structs.replace(
        simulate(DEMO, config, seed=42, faults=ALL_FAULTS), violations=["at seq 1: made up"]
    )
    message = check(report, replay_command(None, seed=42, config=config, faults=ALL_FAULTS))
    assert message is not None
    assert "replay: tc simulate --seed 42 --agents 3 --per-model opus=1 --faults" in message
    only_crashes = Faults(orchestrator_crash=0.25)
    assert replay_command("b.toml", seed=1, config=config, faults=only_crashes).endswith(
        "--crash-rate 0.25"
    )


def test_the_journal_is_shaped_like_the_runtimes() -> None:
    """Submission first, then one orchestrator start and stop around the work; commands
    journaled as the runtime journals them; agents report workspace and session."""
    sim = Simulator(DEMO, SchedulerConfig(), seed=0)
    assert sim.run().ok
    kinds = [type(e).__name__ for e in sim.journal]
    assert kinds[:2] == ["BacklogSubmitted", "OrchestratorStarted"]
    assert kinds[-1] == "OrchestratorStopped"
    dispatched = [e for e in sim.journal if isinstance(e, AttemptDispatched)]
    assert all(e.log_path == f"/simulated/logs/{e.task_id}/{e.attempt_no}.log" for e in dispatched)
    assert {e.attempt_id for e in dispatched} == set(sim.replica.attempts)
    for attempt in sim.replica.attempts.values():
        assert attempt.outcome in (Outcome.SUCCEEDED, Outcome.FAILED)
        assert attempt.simulated and attempt.session_id and attempt.workdir
