"""Where a backlog's time went, from its journal alone: attempt phases, the critical
path, and the bottlenecks that set the makespan.

Design note. Every phase boundary is a timestamp the journal already holds, so a
finished (or running) backlog can be analysed offline, by anyone, without the process
that ran it:

- ``queue``: ready (``TaskRecord.ready_since``, read from the fold at dispatch) →
  ``AttemptDispatched``;
- ``workspace``: dispatched → ``WorkspacePrepared`` (worktree created);
- ``spawn``: workspace → the agent's own process created (``AttemptFinished.agent_started_at``,
  measured by the adapter; else ``AgentProcessStarted``, the supervisor's);
- ``warmup``: agent created → its first output (``first_output_at``; for Claude Code
  the first message of the stream);
- ``work``: first output → the agent's exit (``exited_at``);
- ``teardown``: exit → ``AttemptFinished`` journaled (unknown, so 0, when the adapter
  does not measure the exit: ``work`` then runs to the journaled end).

``queue``, ``workspace``, ``spawn`` and ``teardown`` are the orchestrator's share of an
attempt's latency; ``warmup`` and ``work`` are the agent's. A missing boundary (an
adapter that does not measure one) folds the phase into the next one that has both
ends. The critical path walks back from the last task to finish: each step to the
dependency that finished last before the task became ready (the one that gated it),
or stops when none gated it. Its time is split by phase, plus ``gap``: a dependency's
end → the dependent's dispatch beyond its queue wait (zero when ready is immediate).
Bottlenecks rank the phases by the seconds they put on the critical path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AgentSessionStarted,
    AnyEvent,
    AttemptDispatched,
    AttemptFinished,
    BacklogSubmitted,
    TurnUsageReported,
    WorkspacePrepared,
)
from trafficcontrol.domain.model import AttemptId, Outcome, TaskId
from trafficcontrol.domain.state import State, apply

PHASES = ("queue", "workspace", "spawn", "warmup", "work", "teardown")
ORCHESTRATION = frozenset({"queue", "workspace", "spawn", "teardown"})
"""The phases the orchestrator's own work (or waiting) makes up."""


@dataclass(slots=True)
class AttemptPhases:
    attempt_id: AttemptId
    task_id: TaskId
    ready_at: float | None
    dispatched_at: float
    workspace_at: float | None = None
    process_at: float | None = None
    agent_started_at: float | None = None
    first_output_at: float | None = None
    first_turn_at: float | None = None
    exited_at: float | None = None
    finished_at: float | None = None
    outcome: Outcome | None = None

    def boundaries(self) -> list[tuple[str, float | None]]:
        """(phase, the time it ends), in order; the queue starts at ``ready_at``."""
        first_output = self.first_output_at or self.first_turn_at
        return [
            ("queue", self.dispatched_at),
            ("workspace", self.workspace_at),
            ("spawn", self.agent_started_at or self.process_at),
            ("warmup", first_output),
            # Without a measured exit the agent's work runs to its journaled end.
            ("work", self.exited_at or self.finished_at),
            ("teardown", self.finished_at if self.exited_at is not None else None),
        ]

    def durations(self) -> dict[str, float]:
        """Seconds per phase; a phase whose end is unknown is folded into the next."""
        out: dict[str, float] = {}
        start = self.ready_at if self.ready_at is not None else self.dispatched_at
        for phase, end in self.boundaries():
            if end is None:
                continue
            out[phase] = max(0.0, end - start)
            start = max(start, end)
        return out

    @property
    def orchestration_s(self) -> float:
        """Ready → the agent's first output, minus the agent's own warm-up: what the
        orchestrator adds before the agent can work (0 when nothing is known)."""
        return sum(v for k, v in self.durations().items() if k in ("queue", "workspace", "spawn"))


@dataclass(frozen=True, slots=True)
class Stat:
    count: int
    total: float
    p50: float
    p99: float
    max: float

    @staticmethod
    def of(values: list[float]) -> Stat:
        if not values:
            return Stat(0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(values)
        return Stat(
            count=len(ordered),
            total=sum(ordered),
            p50=_quantile(ordered, 0.5),
            p99=_quantile(ordered, 0.99),
            max=ordered[-1],
        )


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class PathStep:
    task_id: TaskId
    attempt_id: AttemptId
    gap_s: float
    """A dependency's end → this task's readiness (the orchestrator's fold delay)."""
    phases: dict[str, float]


@dataclass(slots=True)
class Profile:
    attempts: list[AttemptPhases]
    phases: dict[str, Stat]
    makespan_s: float
    started_at: float | None
    ended_at: float | None
    critical_path: list[PathStep] = field(default_factory=list)
    path_by_phase: dict[str, float] = field(default_factory=dict)
    dependency_gaps: Stat = field(default_factory=lambda: Stat.of([]))
    """Dependency done → dependent dispatched, over every edge whose dependent ran."""
    orchestration: Stat = field(default_factory=lambda: Stat.of([]))
    """Per attempt: ready → the agent process created (queue + workspace + spawn)."""
    handoffs: Stat = field(default_factory=lambda: Stat.of([]))
    """Over every dependency edge: the dependency's agent exited → the dependent's agent
    started (teardown, fold, queue, workspace, spawn: all the orchestrator's)."""

    def bottlenecks(self, top: int = 3) -> list[tuple[str, float, float]]:
        """(phase, seconds on the critical path, share of the makespan), largest first."""
        ranked = sorted(self.path_by_phase.items(), key=lambda kv: -kv[1])
        span = self.makespan_s or 1.0
        return [(phase, s, s / span) for phase, s in ranked[:top] if s > 0]

    @property
    def path_orchestration_s(self) -> float:
        return sum(s for p, s in self.path_by_phase.items() if p in ORCHESTRATION | {"gap"})


def profile(events: list[AnyEvent]) -> Profile:
    """The profile of the backlog these events (a whole journal, in order) describe."""
    state = State()
    attempts: dict[AttemptId, AttemptPhases] = {}
    started_at: float | None = None
    for event in events:
        match event:
            case BacklogSubmitted():
                started_at = event.at if started_at is None else started_at
            case AttemptDispatched():
                record = state.tasks.get(event.task_id)
                ready = record.ready_since if record is not None else None
                attempts[event.attempt_id] = AttemptPhases(
                    attempt_id=event.attempt_id,
                    task_id=event.task_id,
                    ready_at=ready,
                    dispatched_at=event.at,
                )
            case WorkspacePrepared():
                _set_once(attempts, event.attempt_id, "workspace_at", event.at)
            case AgentProcessStarted():
                _set_once(attempts, event.attempt_id, "process_at", event.at)
            case AgentSessionStarted():
                _set_once(attempts, event.attempt_id, "first_turn_at", event.at)
            case TurnUsageReported():
                _set_once(attempts, event.attempt_id, "first_turn_at", event.at)
            case AttemptFinished():
                phases = attempts.get(event.attempt_id)
                if phases is not None:
                    phases.finished_at = event.at
                    phases.outcome = event.outcome
                    phases.agent_started_at = event.agent_started_at
                    phases.first_output_at = event.first_output_at
                    phases.exited_at = event.exited_at
        apply(state, event)
    ended = [a.finished_at for a in attempts.values() if a.finished_at is not None]
    ended_at = max(ended) if ended else None
    if started_at is None and attempts:
        started_at = min(a.dispatched_at for a in attempts.values())
    makespan = (ended_at - started_at) if ended_at is not None and started_at is not None else 0.0
    by_phase: dict[str, list[float]] = {p: [] for p in PHASES}
    for attempt in attempts.values():
        for phase, seconds in attempt.durations().items():
            by_phase[phase].append(seconds)
    result = Profile(
        attempts=list(attempts.values()),
        phases={p: Stat.of(v) for p, v in by_phase.items()},
        makespan_s=makespan,
        started_at=started_at,
        ended_at=ended_at,
        orchestration=Stat.of(
            [a.orchestration_s for a in attempts.values() if a.finished_at is not None]
        ),
    )
    _critical_path(state, attempts, result)
    return result


def _set_once(
    attempts: dict[AttemptId, AttemptPhases], attempt_id: AttemptId, name: str, at: float
) -> None:
    phases = attempts.get(attempt_id)
    if phases is not None and getattr(phases, name) is None:
        setattr(phases, name, at)


def _critical_path(state: State, attempts: dict[AttemptId, AttemptPhases], result: Profile) -> None:
    """Walk back from the last task to finish (module notes)."""
    last: dict[TaskId, AttemptPhases] = {}
    for attempt in attempts.values():
        if attempt.finished_at is None:
            continue
        held = last.get(attempt.task_id)
        if held is None or (held.finished_at or 0.0) < attempt.finished_at:
            last[attempt.task_id] = attempt
    by_task: dict[TaskId, list[AttemptPhases]] = {}
    for attempt in attempts.values():
        by_task.setdefault(attempt.task_id, []).append(attempt)
    gaps: list[float] = []
    handoffs: list[float] = []
    for task_id in last:
        record = state.tasks.get(task_id)
        if record is None:
            continue
        for dep in record.spec.depends_on:
            done = last.get(dep)
            if done is not None and done.finished_at is not None:
                first = _first_after(by_task.get(task_id, []), done.finished_at)
                if first is not None:
                    gaps.append(max(0.0, first.dispatched_at - done.finished_at))
                    started = first.agent_started_at or first.process_at
                    ended = done.exited_at or done.finished_at
                    if started is not None:
                        handoffs.append(max(0.0, started - ended))
    result.dependency_gaps = Stat.of(gaps)
    result.handoffs = Stat.of(handoffs)
    if not last:
        return
    current: AttemptPhases | None = max(last.values(), key=lambda a: a.finished_at or 0.0)
    steps: list[PathStep] = []
    seen: set[TaskId] = set()
    while current is not None and current.task_id not in seen:
        seen.add(current.task_id)
        record = state.tasks.get(current.task_id)
        deps = [last[d] for d in record.spec.depends_on if d in last] if record else []
        gating = max(deps, key=lambda a: a.finished_at or 0.0, default=None)
        first = min(by_task[current.task_id], key=lambda a: a.dispatched_at)
        start_of_task = first.ready_at
        gap = 0.0
        if gating is not None and gating.finished_at is not None and start_of_task is not None:
            gap = max(0.0, start_of_task - gating.finished_at)
        phases: dict[str, float] = {}
        for attempt in by_task[current.task_id]:
            for phase, seconds in attempt.durations().items():
                phases[phase] = phases.get(phase, 0.0) + seconds
        steps.append(PathStep(current.task_id, current.attempt_id, gap, phases))
        current = gating
    steps.reverse()
    result.critical_path = steps
    totals: dict[str, float] = {}
    for step in steps:
        for phase, seconds in step.phases.items():
            totals[phase] = totals.get(phase, 0.0) + seconds
        totals["gap"] = totals.get("gap", 0.0) + step.gap_s
    result.path_by_phase = totals


def _first_after(of_task: list[AttemptPhases], at: float) -> AttemptPhases | None:
    later = [a for a in of_task if a.dispatched_at >= at]
    return min(later, key=lambda a: a.dispatched_at, default=None)


@dataclass(frozen=True, slots=True)
class Recommendation:
    text: str
    figure: float
    """The measured value (seconds) that triggered it."""
    key: str
    """The configuration key to change."""


SLOW_SPAWN_S = 0.5
SLOW_QUEUE_S = 1.0
SLOW_WORKSPACE_S = 1.0
SLOW_TEARDOWN_S = 0.5


SLOW_COMMIT_P99_S = 0.04
SLOW_DECIDE_P99_S = 0.05
SLOW_SNAPSHOT_P99_S = 0.5

Operations = Mapping[str, Mapping[str, float | int | None]]
"""Per operation span (``runtime.stats.Spans.summary``): count, total_s, p50_s, p99_s."""


def recommend(
    result: Profile, *, max_agents: int, cores: int, operations: Operations | None = None
) -> list[Recommendation]:
    """What to change, each from the figure that shows it is worth it (module notes)."""
    out: list[Recommendation] = []
    ops = operations or {}
    commit_p99 = _p99(ops, "commit")
    if commit_p99 is not None and commit_p99 > SLOW_COMMIT_P99_S:
        out.append(
            Recommendation(
                f"journal commit p99 {commit_p99 * 1000:.0f} ms: the disk is slow; keep"
                ' [run] durability = "process" (power fsyncs every batch) or move the'
                " state home to a faster disk",
                commit_p99,
                "run.durability",
            )
        )
    decide_p99 = _p99(ops, "decide")
    if decide_p99 is not None and decide_p99 > SLOW_DECIDE_P99_S:
        out.append(
            Recommendation(
                f"scheduling (decide) p99 {decide_p99 * 1000:.0f} ms: split the backlog"
                " across state homes, or lower [run] max_agents",
                decide_p99,
                "run.max_agents",
            )
        )
    snapshot_p99 = _p99(ops, "snapshot")
    if snapshot_p99 is not None and snapshot_p99 > SLOW_SNAPSHOT_P99_S:
        out.append(
            Recommendation(
                f"encoding a snapshot holds the loop {snapshot_p99:.2f} s p99: raise"
                " [run] snapshot_interval_s",
                snapshot_p99,
                "run.snapshot_interval_s",
            )
        )
    phases = result.phases
    spawn, queue = phases["spawn"], phases["queue"]
    workspace, teardown = phases["workspace"], phases["teardown"]
    if spawn.count and spawn.p50 > SLOW_SPAWN_S:
        out.append(
            Recommendation(
                f"agents take {spawn.p50:.2f} s p50 from their workspace to their process"
                f" with up to {max_agents} starting at once on {cores} cores: lower"
                " [run] max_agents, and keep [run] fork_supervisors = true",
                spawn.p50,
                "run.max_agents",
            )
        )
    if queue.count and queue.p50 > SLOW_QUEUE_S and result.path_by_phase.get("queue", 0) > 0:
        out.append(
            Recommendation(
                f"tasks wait {queue.p50:.2f} s p50 for an agent slot ({max_agents} agents):"
                " raise [run] max_agents if the plan's capacity allows",
                queue.p50,
                "run.max_agents",
            )
        )
    if workspace.count and workspace.p50 > SLOW_WORKSPACE_S:
        out.append(
            Recommendation(
                f"agents wait {workspace.p50:.2f} s p50 for their worktree: set"
                " lock_in_place = true on projects whose tasks need no branch of their own",
                workspace.p50,
                "projects.lock_in_place",
            )
        )
    if teardown.count and teardown.p50 > SLOW_TEARDOWN_S:
        out.append(
            Recommendation(
                f"an attempt takes {teardown.p50:.2f} s p50 from its agent's exit to its"
                " end being journaled: agents leave processes behind that wait out"
                " [run] grace_s; lower it, or make the agents exit cleanly",
                teardown.p50,
                "run.grace_s",
            )
        )
    return out


def _p99(ops: Operations, name: str) -> float | None:
    figures = ops.get(name)
    value = figures.get("p99_s") if figures is not None else None
    return float(value) if value is not None else None
