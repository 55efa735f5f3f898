"""Capacity benchmark: a simulated week on a Max-style plan, and routing against always-Opus.

Run: ``./scripts/bench capacity`` (or ``python -m bench.capacity [--seed N] [--json]``).

Two runs of the deterministic simulator (real ``decide``/``apply``, virtual time):

1. **Week**: a mixed backlog larger than a week of the plan allows, 7 virtual days on a
   Max-style plan (5-hour session and weekly limits for all models, a weekly Opus
   limit, at most 2 Opus agents). The provider's true limits are the configured ones:
   a window instance whose usage ends above its limit is a limit hit the provider would
   have refused — the plan says none may happen. Utilisation is measured per window
   instance that closed while work was queued: used / what the limits allowed it (a
   session instance may not use more than the weekly window had left).
2. **Routing**: the same fixed backlog run to completion twice without limits, once
   routed (hint, size, escalation after failure) and once with every task pinned to
   Opus; reports Opus tokens and the share of tasks done.

The simulated success model: a task has a true difficulty; a model below it fails 70%
of attempts, a model at or above it 5%; hints are given for some tasks only (the rest
must be found by escalation). Numbers are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.backlogs import pick, sim_backlog, sim_task
from trafficcontrol.domain.capacity.families import ModelFamily, model_family
from trafficcontrol.domain.capacity.plans import FamilyPlan, SharedLimits, SubscriptionPlan
from trafficcontrol.domain.capacity.tracker import CapacityConfig
from trafficcontrol.domain.capacity.windows import WEEK_S, WeeklyReset
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import AttemptDispatched, AttemptFinished, TaskDeferred
from trafficcontrol.domain.model import (
    Difficulty,
    SimSettings,
    TaskState,
)
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.runtime.sim_faults import SimOptions
from trafficcontrol.runtime.simulator import Simulator

SESSION_LIMIT = 6_000_000.0
WEEKLY_LIMIT = 60_000_000.0
OPUS_WEEKLY_LIMIT = 15_000_000.0
MARGIN = 0.03
DAY_S = 86_400.0
TOKENS_IN = {Difficulty.TRIVIAL: 20_000, Difficulty.NORMAL: 40_000, Difficulty.HARD: 60_000}
MIX = ((Difficulty.TRIVIAL, 0.3), (Difficulty.NORMAL, 0.5), (Difficulty.HARD, 0.2))
HINTED = 0.6
"""Share of tasks whose author gave a difficulty hint."""


def max_plan() -> CapacityConfig:
    return CapacityConfig(
        plan=SubscriptionPlan(
            all_models=SharedLimits(session_units=SESSION_LIMIT, weekly_units=WEEKLY_LIMIT),
            families={
                ModelFamily.OPUS: FamilyPlan(weekly_units=OPUS_WEEKLY_LIMIT, max_concurrent=2)
            },
            # Thursday 00:00 UTC: virtual time 0 (the epoch) starts a weekly window.
            weekly_reset=WeeklyReset(weekday=3, hour=0, timezone="UTC"),
            safety_margin=MARGIN,
        )
    )


def backlog(n: int, seed: int, *, model: str | None = None) -> SubmitRequest:
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        needs = pick(rng.random(), MIX, Difficulty.NORMAL)
        hint = needs if rng.random() < HINTED else None
        sim = SimSettings(
            duration_s=1200.0,
            jitter=0.5,
            failure_rate=0.05,
            tokens_in=TOKENS_IN[needs],
            needs=needs,
            seed=i,
        )
        prompt = f"simulated task {i} ({needs.value})"
        tasks.append(
            sim_task(i, prompt, sim, difficulty=hint, max_attempts=3, retry_backoff_s=60.0)
        )
    return sim_backlog(tasks, model=model)


@dataclass
class Instance:
    start: float
    end: float
    used: float = 0.0
    allowed: float = 0.0


def _usage_series(sim: Simulator, plan: SubscriptionPlan) -> list[tuple[float, ModelFamily, float]]:
    models = {}
    out = []
    for event in sim.journal:
        if isinstance(event, AttemptFinished) and event.usage is not None:
            model = models.get(event.attempt_id)
            if model is None:
                model = sim.replica.attempts[event.attempt_id].model
                models[event.attempt_id] = model
            family = model_family(model)
            out.append((event.at, family, plan.units(family, event.usage)))
    return out


def week_report(seed: int, n_tasks: int, max_agents: int) -> dict[str, object]:
    config = max_plan()
    plan = config.plan
    options = SimOptions(
        capacity=config, until_s=WEEK_S + 6 * 3600.0, check_recovery=False, max_events=10**7
    )
    started = time.perf_counter()
    sim = Simulator(
        backlog(n_tasks, seed), SchedulerConfig(max_agents=max_agents), seed=seed, options=options
    )
    sim.run()
    wall = time.perf_counter() - started
    series = _usage_series(sim, plan)
    # Session instances, as the ledger opens them: at the first usage after the last ended.
    sessions: list[Instance] = []
    weekly_used = 0.0
    opus_weekly = 0.0
    for at, family, units in series:
        if at >= WEEK_S:
            break
        if not sessions or at >= sessions[-1].end:
            allowed = min(SESSION_LIMIT, WEEKLY_LIMIT - weekly_used)
            sessions.append(Instance(at, at + plan.session_length_s, allowed=allowed))
        sessions[-1].used += units
        weekly_used += units
        if family is ModelFamily.OPUS:
            opus_weekly += units
    end = min(sim.now, WEEK_S)
    resumed = [
        e.at - WEEK_S for e in sim.journal if isinstance(e, AttemptDispatched) and e.at >= WEEK_S
    ]
    hits = sum(1 for s in sessions if s.used > SESSION_LIMIT)
    hits += int(weekly_used > WEEKLY_LIMIT) + int(opus_weekly > OPUS_WEEKLY_LIMIT)
    # A session the weekly window cut short is the weekly window's to account for.
    closed = [s for s in sessions if s.end <= end and s.allowed >= SESSION_LIMIT]
    utilisation = [s.used / s.allowed for s in closed]
    state = sim.replica
    queued = state.counts[TaskState.READY] + state.counts[TaskState.WAITING]
    deferred = sum(1 for e in sim.journal if isinstance(e, TaskDeferred))
    return {
        "virtual_days": round(sim.now / DAY_S, 2),
        "wall_s": round(wall, 2),
        "tasks": n_tasks,
        "done": state.counts[TaskState.DONE],
        "failed": state.counts[TaskState.FAILED],
        "queued_at_end": queued,
        "limit_hits": hits,
        "session_windows_closed": len(closed),
        "session_windows_cut_by_weekly": sum(1 for s in sessions if s.allowed < SESSION_LIMIT),
        "session_utilisation_min": round(min(utilisation), 4) if utilisation else None,
        "session_utilisation_mean": round(sum(utilisation) / len(utilisation), 4)
        if utilisation
        else None,
        "weekly_used_share": round(weekly_used / WEEKLY_LIMIT, 4),
        "opus_weekly_used_share": round(opus_weekly / OPUS_WEEKLY_LIMIT, 4),
        "deferrals_for_capacity": deferred,
        "dispatch_after_weekly_reset_s": round(resumed[0], 1) if resumed else None,
        "violations": sim.violations[:3],
    }


def routing_report(seed: int, n_tasks: int, max_agents: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, model in (("routed", None), ("always_opus", "opus")):
        options = SimOptions(check_recovery=False, max_events=10**7)
        sim = Simulator(
            backlog(n_tasks, seed, model=model),
            SchedulerConfig(max_agents=max_agents),
            seed=seed,
            options=options,
        )
        sim.run()
        state = sim.replica
        tokens = {f.value: 0 for f in ModelFamily}
        for attempt in state.attempts.values():
            if attempt.usage is not None:
                tokens[model_family(attempt.model).value] += attempt.usage.total_tokens
        out[name] = {
            "done": state.counts[TaskState.DONE],
            "failed": state.counts[TaskState.FAILED],
            "success_rate": round(state.counts[TaskState.DONE] / n_tasks, 4),
            "attempts": len(state.attempts),
            "tokens_by_family": tokens,
        }
    routed, opus = out["routed"], out["always_opus"]
    assert isinstance(routed, dict) and isinstance(opus, dict)
    saved = 1 - routed["tokens_by_family"]["opus"] / opus["tokens_by_family"]["opus"]
    out["opus_tokens_saved"] = round(saved, 4)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=1500)
    parser.add_argument("--routing-tasks", type=int, default=400)
    parser.add_argument("--max-agents", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = {
        "seed": args.seed,
        "week": week_report(args.seed, args.tasks, args.max_agents),
        "routing": routing_report(args.seed, args.routing_tasks, args.max_agents),
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    week = report["week"]
    routing = report["routing"]
    assert isinstance(week, dict) and isinstance(routing, dict)
    print(f"simulated week (seed {args.seed}, {week['tasks']} tasks, Max-style plan)")
    for key, value in week.items():
        print(f"  {key:28} {value}")
    print(f"routing vs always-opus ({args.routing_tasks} tasks, run to completion)")
    for key, value in routing.items():
        print(f"  {key:28} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
