"""Workflow and context benchmark: the lead's context, step prompt sizes, workflow share.

Run: ``./scripts/bench workflows`` (or ``python -m bench.workflows [--seed N] [--json]``).

A fixed simulated backlog of multi-step tasks (the bundled workflows and one custom
workflow) and some single-step tasks runs through the deterministic simulator. Then:

1. **Lead context**: the lead agent's conversation is fed, in journal order, what a lead
   sees — every task spec, every step result (with its handoff), every failure and the
   decision on it — through ``ContextBudget`` with the default thresholds (compress at
   40%, delegate at 45%, warn at 50%, cap at 60%) in a 200,000-token window. Reported:
   peak and mean utilisation, compressions, delegations (analysis asked while past the
   delegate threshold), warnings.
2. **First prompts**: for every step attempt after the first step, the tokens of the
   prompt ``first_prompt`` builds (role, task, declared handoff fields) against a
   whole-transcript handoff (role, task, and every earlier step's conversation — its
   input and output tokens as the simulated agents report them).
3. **Workflow share**: multi-step tasks that run a standard (bundled) workflow.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence

from bench.backlogs import pick, sim_backlog, sim_task
from trafficcontrol.adapters.workflow_files import bundled_workflows, parse_workflow
from trafficcontrol.domain.context import Category, ContextBudget, Estimator, Warned
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import (
    AttemptDispatched,
    AttemptFinished,
    BacklogSubmitted,
)
from trafficcontrol.domain.model import (
    SimSettings,
    TaskState,
)
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.domain.state import State, apply
from trafficcontrol.domain.workflows import first_prompt
from trafficcontrol.runtime.sim_faults import SimOptions
from trafficcontrol.runtime.simulator import Simulator

LEAD_WINDOW = 200_000
CUSTOM = """
name = "migrate"
description = "A team's own: inventory, then migrate."
[[steps]]
name = "inventory"
role = "List every call site of the old API. Change nothing."
handoff = ["sites"]
next = "migrate"
[steps.output_schema]
type = "object"
required = ["sites"]
properties.sites = { type = "array", items = { type = "string" } }
[[steps]]
name = "migrate"
role = "Move every listed call site to the new API."
inputs = ["inventory.sites"]
handoff = ["done"]
[steps.output_schema]
type = "object"
required = ["done"]
properties.done = { type = "boolean" }
"""


def backlog(n: int, seed: int) -> SubmitRequest:
    rng = random.Random(seed)
    bundled = bundled_workflows()
    custom = parse_workflow(CUSTOM, "bench custom workflow")
    choices = (
        ("analyze-implement-verify", 0.45),
        ("implement-verify", 0.2),
        ("investigate", 0.05),
        ("migrate", 0.1),
        (None, 0.2),
    )
    tasks = []
    for i in range(n):
        chosen = pick(rng.random(), choices, None)
        words = " ".join(f"detail{rng.randrange(10**4)}" for _ in range(rng.randrange(20, 80)))
        sim = SimSettings(
            duration_s=600.0, tokens_in=20_000, reject_rate=0.15, failure_rate=0.05, seed=i
        )
        prompt = f"Change component {i}: {words}."
        tasks.append(sim_task(i, prompt, sim, workflow=chosen, max_attempts=3))
    return sim_backlog(tasks, workflows=[*bundled.values(), custom])


def lead_report(sim: Simulator) -> dict[str, object]:
    budget = ContextBudget(LEAD_WINDOW, estimator=Estimator())
    budget.add(
        "system",
        Category.SYSTEM,
        "You are the lead of a team of coding agents. " * 40,
        compressible=False,
    )
    samples: list[float] = []
    delegated = warnings = analyses = 0
    state = State()
    for event in sim.journal:
        apply(state, event)
        actions = []
        if isinstance(event, BacklogSubmitted):
            for spec in event.tasks:
                text = f"{spec.id} [{spec.workflow or 'single'}] {spec.title}: {spec.prompt}"
                actions += budget.add(f"spec:{spec.id}", Category.TASK_SPECS, text)
                samples.append(budget.utilisation())
        elif isinstance(event, AttemptFinished):
            attempt = state.attempts[event.attempt_id]
            outcome = event.step_outcome
            handoff = json.dumps(outcome.output) if outcome and outcome.output else ""
            text = f"{attempt.id} {attempt.step or 'task'} {event.outcome} {handoff[:400]}"
            actions += budget.add(f"result:{attempt.id}", Category.RESULTS, text)
            if event.outcome.value == "failed":
                # Triage is analysis: past the delegate threshold it goes to a sub-agent
                # with a fresh context, and only its one-line decision comes back.
                analyses += 1
                if budget.must_delegate():
                    delegated += 1
                    decision = f"triage {attempt.id}: delegated; retry"
                else:
                    decision = f"triage {attempt.id}: retry with the failure as feedback"
                actions += budget.add(f"decision:{attempt.id}", Category.DECISIONS, decision)
            samples.append(budget.utilisation())
        warnings += sum(1 for a in actions if isinstance(a, Warned))
    return {
        "window_tokens": LEAD_WINDOW,
        "peak_utilisation": round(budget.peak, 4),
        "mean_utilisation": round(sum(samples) / len(samples), 4),
        "compressions": budget.compressions,
        "archived_entries": len(budget.archive),
        "analyses": analyses,
        "delegated": delegated,
        "delegation_rate": round(delegated / analyses, 4) if analyses else 0.0,
        "warnings": warnings,
        "refused": budget.refusals,
        "uncompressed_tokens_would_be": sum(e.tokens for e in budget.archive.values())
        + budget.used,
    }


def prompt_report(sim: Simulator) -> dict[str, object]:
    estimator = Estimator()
    state = State()
    ours: list[int] = []
    whole: list[int] = []
    for event in sim.journal:
        if isinstance(event, AttemptDispatched) and event.step is not None:
            record = state.tasks[event.task_id]
            run = record.workflow_run
            assert run is not None
            spec = state.workflows[run.workflow]
            if run.step != spec.first.name:
                step = spec.step(run.step)
                prompt = first_prompt(spec, run, record.spec.title, record.spec.prompt, step)
                ours.append(estimator.estimate(prompt))
                base = estimator.estimate(
                    f"{step.role}\n# Task: {record.spec.title}\n{record.spec.prompt}"
                )
                transcript = 0
                for attempt_id in record.attempts:
                    usage = state.attempts[attempt_id].usage
                    if usage is not None:
                        transcript += usage.input_tokens + usage.output_tokens
                whole.append(base + transcript)
        apply(state, event)
    mean_ours = sum(ours) / len(ours)
    mean_whole = sum(whole) / len(whole)
    return {
        "step_prompts": len(ours),
        "mean_tokens_handoff": round(mean_ours),
        "mean_tokens_whole_transcript": round(mean_whole),
        "reduction": round(1 - mean_ours / mean_whole, 4),
    }


def share_report(sim: Simulator) -> dict[str, object]:
    standard = set(bundled_workflows())
    multi = [r for r in sim.replica.tasks.values() if r.spec.workflow is not None]
    on_standard = sum(1 for r in multi if r.spec.workflow in standard)
    return {
        "tasks": len(sim.replica.tasks),
        "multi_step_tasks": len(multi),
        "on_standard_workflow": on_standard,
        "standard_share": round(on_standard / len(multi), 4) if multi else None,
        "done": sim.replica.counts[TaskState.DONE],
        "failed": sim.replica.counts[TaskState.FAILED],
    }


def run(seed: int, n_tasks: int) -> dict[str, object]:
    sim = Simulator(
        backlog(n_tasks, seed),
        SchedulerConfig(max_agents=10),
        seed=seed,
        options=SimOptions(check_recovery=False, max_events=10**7),
    )
    sim.run()
    return {
        "seed": seed,
        "lead": lead_report(sim),
        "first_prompts": prompt_report(sim),
        "workflows": share_report(sim),
        "violations": sim.violations[:3],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.seed, args.tasks)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    for name, section in report.items():
        if isinstance(section, dict):
            print(name)
            for key, value in section.items():
                print(f"  {key:32} {value}")
        else:
            print(f"{name}: {section}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
