"""Resilience benchmark: transient failures, a provider outage, breakers, recovery.

Run: ``./scripts/bench resilience`` (or ``python -m bench.resilience [--seed N] [--json]``).

In the deterministic simulator (real ``decide``/``apply`` and failure table, virtual
time, simulated agents whose first model turn is reported 2 s after they start):

1. **Transient**: 30% of attempts fail at once with a 529 (overloaded) error. Reports
   the attempts that failed transiently, the share of the tasks they hit that still
   finished without a human, tasks that failed for good, and the breakers' behaviour.
2. **Outage**: the provider is down for Opus from t=600 s to t=900 s (every Opus
   attempt that starts meanwhile fails at once); hard tasks must run on Opus, the others
   on Sonnet. Reports the Opus attempts admitted while its breaker was open (must be 0)
   and per half-open interval (at most 1), whether Sonnet work went on meanwhile, and
   how long after the outage ended the first Opus attempt ran that the provider
   answered.

Then the same two against the real parts (``--real``; on by default): the ``api``
backend and the real ``anthropic`` client against ``tests/provider`` (the protocol
server), driven by ``bench.stepped`` on a manual clock:

3. **Transient (real)**: before each request, with probability 30%, the server is told
   to answer 529 or 500. Reports attempts, requests the server saw (one per attempt:
   nothing retries below the orchestrator), and the share of hit tasks that finished.
4. **Outage (real)**: every Opus request fails with 529 for 300 s of manual clock.
   Reports Opus requests while the breaker was open (0), per half-open interval (<= 1),
   Sonnet requests meanwhile, and the seconds from the outage's end to the first Opus
   answer.

Numbers are reported, not asserted (``tests/test_resilience_sim.py`` asserts the
simulated ones, ``tests/test_provider_faults.py`` the real failure paths).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.backlogs import sim_backlog, sim_task
from trafficcontrol.domain.breakers import BreakerState
from trafficcontrol.domain.capacity.families import model_family
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import (
    AttemptDispatched,
    AttemptFinished,
    BreakerChanged,
    TurnUsageReported,
)
from trafficcontrol.domain.failures import FailureClass
from trafficcontrol.domain.model import (
    Difficulty,
    ProjectId,
    ProjectSpec,
    SimSettings,
    TaskId,
    TaskSpec,
    TaskState,
)
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.runtime.sim_faults import Faults, Outage, SimOptions
from trafficcontrol.runtime.simulator import Simulator

OUTAGE = (600.0, 900.0)
REAL_OUTAGE = (30.0, 330.0)
"""The real runs are shorter (one agent, 5 s of manual clock per attempt): the same 300 s."""


def backlog(n: int, *, hard_every: int = 0, duration_s: float = 120.0) -> SubmitRequest:
    tasks = [
        sim_task(
            i,
            f"simulated task {i}",
            SimSettings(duration_s=duration_s, jitter=0.5, seed=i),
            difficulty=Difficulty.HARD if hard_every and i % hard_every == 0 else None,
            retry_backoff_s=5.0,
        )
        for i in range(n)
    ]
    return sim_backlog(tasks)


def transient_report(seed: int, n_tasks: int, rate: float) -> dict[str, object]:
    sim = Simulator(
        backlog(n_tasks),
        SchedulerConfig(max_agents=10),
        seed=seed,
        faults=Faults(transient=rate),
        options=SimOptions(first_turn_s=2.0, check_recovery=False, max_events=10**7),
    )
    report = sim.run()
    state = sim.replica
    hit: set[str] = set()
    transient_attempts = 0
    for attempt in state.attempts.values():
        if attempt.failure_class is FailureClass.TRANSIENT:
            transient_attempts += 1
            hit.add(attempt.task_id)
    recovered = sum(1 for t in hit if state.tasks[TaskId(t)].state is TaskState.DONE)
    opened = sum(
        1 for e in sim.journal if isinstance(e, BreakerChanged) and e.state is BreakerState.OPEN
    )
    return {
        "tasks": n_tasks,
        "attempts": len(state.attempts),
        "transient_failed_attempts": transient_attempts,
        "transient_share": round(transient_attempts / len(state.attempts), 4),
        "tasks_hit": len(hit),
        "tasks_hit_recovered_share": round(recovered / len(hit), 4) if hit else None,
        "tasks_done": state.counts[TaskState.DONE],
        "tasks_failed": state.counts[TaskState.FAILED],
        "breaker_openings": opened,
        "settled": report.settled,
        "violations": sim.violations[:3],
    }


def outage_report(seed: int, n_tasks: int) -> dict[str, object]:
    start, end = OUTAGE
    sim = Simulator(
        backlog(n_tasks, hard_every=3),
        SchedulerConfig(max_agents=10),
        seed=seed,
        faults=Faults(outages=(Outage(start_s=start, end_s=end, family="opus"),)),
        options=SimOptions(first_turn_s=2.0, check_recovery=False, max_events=10**7),
    )
    report = sim.run()
    state = sim.replica
    key = "sim/opus"
    breaker = BreakerState.CLOSED
    changed_at = 0.0
    while_open = 0
    probes_per_half_open: list[int] = []
    answered: set[str] = set()
    first_answered_after: float | None = None
    sonnet_during = 0
    sonnet_breaker_opened = False
    for event in sim.journal:
        if isinstance(event, BreakerChanged):
            if event.key == key:
                breaker, changed_at = event.state, event.at
                if breaker is BreakerState.HALF_OPEN:
                    probes_per_half_open.append(0)
            elif event.state is BreakerState.OPEN:
                sonnet_breaker_opened = True
        elif isinstance(event, AttemptDispatched):
            family = model_family(event.model).value
            if family == "opus":
                if breaker is BreakerState.OPEN:
                    while_open += 1
                elif breaker is BreakerState.HALF_OPEN:
                    probes_per_half_open[-1] += 1
            elif start <= event.at < end:
                sonnet_during += 1
        elif isinstance(event, TurnUsageReported):
            attempt = state.attempts[event.attempt_id]
            if model_family(attempt.model).value == "opus" and attempt.started_at >= end:
                if first_answered_after is None:
                    first_answered_after = attempt.started_at - end
                answered.add(attempt.id)
    incidents = [i for i in state.resilience.incidents if i.key == key]
    mttr = [i.closed_at - i.opened_at for i in incidents if i.closed_at is not None]
    failed_opus = sum(
        1
        for e in sim.journal
        if isinstance(e, AttemptFinished) and e.failure_class is FailureClass.TRANSIENT
    )
    del changed_at
    return {
        "tasks": n_tasks,
        "outage_s": [start, end],
        "transient_failed_attempts": failed_opus,
        "opus_dispatched_while_open": while_open,
        "half_open_periods": len(probes_per_half_open),
        "max_probes_per_half_open": max(probes_per_half_open, default=0),
        "sonnet_dispatched_during_outage": sonnet_during,
        "sonnet_breaker_opened": sonnet_breaker_opened,
        "first_opus_answered_after_outage_s": first_answered_after,
        "incidents": len(incidents),
        "mttr_s": [round(m, 1) for m in mttr],
        "tasks_done": state.counts[TaskState.DONE],
        "tasks_failed": state.counts[TaskState.FAILED],
        "settled": report.settled,
        "violations": sim.violations[:3],
    }


def _real_backlog(n: int, *, hard_every: int = 0) -> SubmitRequest:
    tasks = [
        TaskSpec(
            id=TaskId(f"r{i:03}"),
            project=ProjectId("p"),
            title=f"real {i}",
            prompt=f"answer {i}",
            difficulty=Difficulty.HARD if hard_every and i % hard_every == 0 else None,
            retry_backoff_s=5.0,
        )
        for i in range(n)
    ]
    project = ProjectSpec(id=ProjectId("p"), path=tempfile.gettempdir(), agent="api")
    return SubmitRequest(source="bench", projects=[project], tasks=tasks)


async def _real_run(
    n_tasks: int,
    seed: int,
    *,
    rate: float = 0.0,
    outage: tuple[float, float] | None = None,
    hard_every: int = 0,
) -> dict[str, object]:
    import random

    from tests.provider.server import TEST_API_KEY, Fault, ProviderServer

    from bench.stepped import ManualClock, SteppedShell
    from trafficcontrol.adapters.agents.anthropic_api import MODEL_ALIASES, ApiBackend
    from trafficcontrol.domain.events import BacklogSubmitted

    rng = random.Random(seed)
    opus_model = MODEL_ALIASES["opus"]
    t0 = 2_000_000_000.0
    with ProviderServer() as provider, tempfile.TemporaryDirectory() as root:
        clock = ManualClock(t0)
        environ = {"ANTHROPIC_BASE_URL": provider.url, "ANTHROPIC_API_KEY": TEST_API_KEY}
        request = _real_backlog(n_tasks, hard_every=hard_every)
        shell = SteppedShell(
            [
                BacklogSubmitted(
                    at=t0, source="bench", projects=request.projects, tasks=request.tasks
                )
            ],
            {"api": ApiBackend(environ=environ, clock=clock)},
            clock,
            SchedulerConfig(max_agents=1),
            Path(root),
        )
        down = False
        breaker = BreakerState.CLOSED
        opus_while_open = 0
        probes: list[int] = []
        sonnet_during = 0
        first_answer_after: float | None = None
        for _ in range(20 * n_tasks):
            now = clock.t - t0
            if outage is not None and not down and outage[0] <= now < outage[1]:
                provider.add_fault(Fault.http(529, times=10**6, model=opus_model))
                down = True
            if outage is not None and down and now >= outage[1]:
                provider.clear_faults()
                down = False
            if rate and rng.random() < rate:
                provider.add_fault(Fault.http(rng.choice([529, 500])))
            events = await shell.turn()
            for event in events:
                if isinstance(event, BreakerChanged) and event.key == "api/opus":
                    breaker = event.state
                    if breaker is BreakerState.HALF_OPEN:
                        probes.append(0)
                elif isinstance(event, AttemptDispatched):
                    if model_family(event.model).value == "opus":
                        if breaker is BreakerState.OPEN:
                            opus_while_open += 1
                        elif breaker is BreakerState.HALF_OPEN and probes:
                            probes[-1] += 1
                    elif outage is not None and outage[0] <= now < outage[1]:
                        sonnet_during += 1
                elif (
                    isinstance(event, TurnUsageReported)
                    and outage is not None
                    and model_family(event.model).value == "opus"
                    and now >= outage[1]
                    and first_answer_after is None
                ):
                    first_answer_after = now - outage[1]
            if any(isinstance(e, AttemptDispatched) for e in events):
                shell.advance(5.0)
            elif not events:
                if shell.idle():
                    break
                wake = shell.next_wakeup
                assert wake is not None
                shell.clock.t = max(wake, clock.t + 0.001)
        state = shell.state
        hit = {
            a.task_id for a in state.attempts.values() if a.failure_class is FailureClass.TRANSIENT
        }
        recovered = sum(1 for t in hit if state.tasks[TaskId(t)].state is TaskState.DONE)
        out: dict[str, object] = {
            "tasks": n_tasks,
            "attempts": len(state.attempts),
            "requests_at_server": len(provider.message_requests),
            "transient_failed_attempts": sum(
                1 for a in state.attempts.values() if a.failure_class is FailureClass.TRANSIENT
            ),
            "tasks_hit_recovered_share": round(recovered / len(hit), 4) if hit else None,
            "tasks_done": state.counts[TaskState.DONE],
            "tasks_failed": state.counts[TaskState.FAILED],
        }
        if outage is not None:
            out.update(
                opus_dispatched_while_open=opus_while_open,
                half_open_periods=len(probes),
                max_probes_per_half_open=max(probes, default=0),
                sonnet_dispatched_during_outage=sonnet_during,
                first_opus_answered_after_outage_s=first_answer_after,
            )
        return out


def real_reports(seed: int, n_tasks: int, rate: float) -> dict[str, object]:
    return {
        "transient_real": asyncio.run(_real_run(n_tasks, seed, rate=rate)),
        "outage_real": asyncio.run(_real_run(n_tasks, seed, outage=REAL_OUTAGE, hard_every=3)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--real-tasks", type=int, default=60)
    parser.add_argument("--no-real", action="store_true", help="skip the real-provider runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report: dict[str, object] = {
        "seed": args.seed,
        "transient": transient_report(args.seed, args.tasks, args.rate),
        "outage": outage_report(args.seed, args.tasks // 2),
    }
    if not args.no_real:
        report.update(real_reports(args.seed, args.real_tasks, args.rate))
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    for name in ("transient", "outage", "transient_real", "outage_real"):
        section = report.get(name)
        if section is None:
            continue
        assert isinstance(section, dict)
        print(name)
        for key, value in section.items():
            print(f"  {key:36} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
