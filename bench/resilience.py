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

Numbers are reported, not asserted (``tests/test_resilience_sim.py`` asserts them).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

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
    AgentSettings,
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


def backlog(n: int, *, hard_every: int = 0, duration_s: float = 120.0) -> SubmitRequest:
    tasks = [
        TaskSpec(
            id=TaskId(f"t{i:04}"),
            project=ProjectId("p"),
            title=f"task {i}",
            prompt=f"simulated task {i}",
            difficulty=Difficulty.HARD if hard_every and i % hard_every == 0 else None,
            retry_backoff_s=5.0,
            settings=AgentSettings(sim=SimSettings(duration_s=duration_s, jitter=0.5, seed=i)),
        )
        for i in range(n)
    ]
    project = ProjectSpec(id=ProjectId("p"), path="/virtual/p", is_git=True, agent="sim")
    return SubmitRequest(source="bench", projects=[project], tasks=tasks)


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = {
        "seed": args.seed,
        "transient": transient_report(args.seed, args.tasks, args.rate),
        "outage": outage_report(args.seed, args.tasks // 2),
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    for name in ("transient", "outage"):
        section = report[name]
        assert isinstance(section, dict)
        print(name)
        for key, value in section.items():
            print(f"  {key:36} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
