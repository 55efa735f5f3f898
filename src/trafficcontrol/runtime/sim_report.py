"""The report of one simulated run, computed from its journal's fold."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec

from trafficcontrol.domain.events import AnyEvent, TaskWoken
from trafficcontrol.domain.model import Outcome, TaskState
from trafficcontrol.domain.state import State, model_key
from trafficcontrol.runtime.sim_faults import AGENT_CRASH_ERROR

FAILURE_KINDS = {
    Outcome.FAILED: "agent_failure",
    Outcome.TIMED_OUT: "timeout",
    Outcome.INTERRUPTED: "interrupted",
    Outcome.CANCELLED: "cancelled",
}


class SimReport(msgspec.Struct, kw_only=True):
    """Everything a simulated run measured. All agents and usage are simulated."""

    seed: int
    source: str
    max_agents: int
    settled: bool
    """The run ended with nothing left to do (not cut off by a violation or a bound)."""
    makespan_s: float
    """Virtual seconds from the submission to the orchestrator's last event."""
    busy_agent_s: float
    """Agent-seconds spent running attempts (killed agents count until their death)."""
    utilisation: float
    """busy_agent_s / (max_agents * makespan_s)."""
    tasks: dict[str, int]
    """Tasks by final state, and "total"."""
    attempts: int
    outcomes: dict[str, int]
    failures: dict[str, int]
    """Ended attempts that did not succeed, by kind: agent_failure (the task's simulated
    failure), agent_crash, timeout (hangs end here), interrupted (an orchestrator crash
    lost the attempt's supervisor, or came before its agent started)."""
    retries: int
    """Attempts started again after a back-off (``task_woken`` events)."""
    faults: dict[str, int]
    """Faults injected, by kind."""
    recoveries: int
    """Crashes recovered from."""
    from_snapshot: int
    full_replay: int
    adopted: int
    """Attempts whose agent outlived a crash and ran on: adopted by the recovery
    (``AttemptAdopted``) and followed to their end."""
    finished_while_down: int
    """Attempts whose agent ended while no orchestrator ran: adopted as finished, their
    real end journaled from the exit record."""
    lost: int
    """Attempts whose supervisor died with the orchestrator: journaled interrupted."""
    unstarted: int
    """Attempts journaled as dispatched whose agent a crash kept from starting:
    journaled interrupted."""
    events: int
    commits: int
    max_batch: int
    tokens: dict[str, dict[str, float]]
    """Simulated usage by model: input, output, cache_read tokens and cost_usd."""
    violations: list[str]
    simulated: bool = True

    @property
    def ok(self) -> bool:
        return self.settled and not self.violations

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        data["ok"] = self.ok
        return data


def build_report(
    state: State,
    journal: list[AnyEvent],
    *,
    seed: int,
    source: str,
    max_agents: int,
    settled: bool,
    busy_agent_s: float,
    faults: dict[str, int],
    recoveries: tuple[int, int],
    leftovers: dict[str, int],
    commits: int,
    max_batch: int,
    violations: list[str],
) -> SimReport:
    makespan = journal[-1].at - journal[0].at if journal else 0.0
    tasks = {str(s): n for s, n in sorted(state.counts.items()) if n}
    tasks["total"] = len(state.tasks)
    for name in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED, TaskState.PENDING):
        tasks.setdefault(str(name), 0)
    outcomes: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    tokens: dict[str, dict[str, float]] = {}
    for attempt in state.attempts.values():
        if attempt.outcome is not None:
            outcomes[str(attempt.outcome)] += 1
            if attempt.outcome is not Outcome.SUCCEEDED:
                kind = FAILURE_KINDS[attempt.outcome]
                if attempt.error == AGENT_CRASH_ERROR:
                    kind = "agent_crash"
                failures[kind] += 1
        if attempt.usage is not None:
            usage = attempt.usage
            row = tokens.setdefault(
                model_key(attempt.model),
                {"input": 0, "output": 0, "cache_read": 0, "cost_usd": 0.0},
            )
            row["input"] += usage.input_tokens
            row["output"] += usage.output_tokens
            row["cache_read"] += usage.cache_read_tokens
            row["cost_usd"] += usage.cost_usd or 0.0
    from_snapshot, full_replay = recoveries
    return SimReport(
        seed=seed,
        source=source,
        max_agents=max_agents,
        settled=settled,
        makespan_s=makespan,
        busy_agent_s=busy_agent_s,
        utilisation=busy_agent_s / (max_agents * makespan) if makespan > 0 else 0.0,
        tasks=tasks,
        attempts=len(state.attempts),
        outcomes=dict(sorted(outcomes.items())),
        failures=dict(sorted(failures.items())),
        retries=sum(1 for e in journal if isinstance(e, TaskWoken)),
        faults=faults,
        recoveries=from_snapshot + full_replay,
        from_snapshot=from_snapshot,
        full_replay=full_replay,
        adopted=leftovers["adopted"],
        finished_while_down=leftovers["finished_while_down"],
        lost=leftovers["lost"],
        unstarted=leftovers["unstarted"],
        events=len(journal),
        commits=commits,
        max_batch=max_batch,
        tokens=dict(sorted(tokens.items())),
        violations=violations,
    )
