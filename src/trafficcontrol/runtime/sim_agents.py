"""The simulator's agents: what each attempt does, and the pool that runs them.

Design note. An attempt's own behaviour (duration, sim failure, tokens, session id)
comes from a generator keyed by (run seed, task sim seed, attempt id), drawn in the
same order as ``adapters.agents.sim.SimBackend``: with no faults, ``tc simulate
--seed N`` plays each attempt as ``tc run`` with sim seed N does, and an attempt
behaves the same whatever the faults change around it. The faults (crash, hang)
come from the run's single generator. ``SimAgents`` mirrors ``runtime.pool``: a
stopped agent ends with the stop's outcome, whatever it was doing (a second stop
changes nothing), and exactly one end leaves each agent.

Every agent runs under a supervisor (``adapters.agents.supervised``) that outlives the
orchestrator. ``SupervisorFiles`` is what it leaves on disk: the agent's reports
(session, turns) numbered from 1 as its report file numbers them, and its exit record
once it ended. A crashed orchestrator hears nothing more, but its agents run on and
keep writing; a recovering one reads the files (``files``, ``running``). Only a
supervisor that died with the orchestrator (``Faults.supervisor_lost``) leaves an
attempt with no exit record and no agent.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from typing import Any

import msgspec

# The sim adapter's price and output tables: the simulator must spend what it spends.
from trafficcontrol.adapters.agents.sim import draw_attempt, simulated_usage
from trafficcontrol.domain.capacity.families import model_family
from trafficcontrol.domain.events import (
    AgentSessionStarted,
    AttemptDispatched,
    AttemptFinished,
    TurnUsageReported,
)
from trafficcontrol.domain.model import (
    AttemptId,
    FailureEvidence,
    Outcome,
    ProjectSpec,
    SimSettings,
    StopReason,
    TaskSpec,
    Usage,
)
from trafficcontrol.domain.requests import SubmitRequest
from trafficcontrol.domain.workflows import StepOutcome
from trafficcontrol.runtime.sim_faults import AGENT_CRASH_ERROR, Faults

_STOPPED = {
    StopReason.TIMEOUT: (Outcome.TIMED_OUT, "timed out"),
    StopReason.CANCELLED: (Outcome.CANCELLED, "cancelled"),
    StopReason.SHUTDOWN: (Outcome.INTERRUPTED, "interrupted by orchestrator shutdown"),
}


@dataclasses.dataclass(slots=True)
class AgentPlan:
    """What one simulated attempt will do, decided when its agent starts."""

    duration_s: float | None
    """When the agent ends by itself, after its start; None: it hangs."""
    outcome: Outcome
    exit_code: int | None
    error: str | None
    usage: Usage | None
    session_id: str
    crashed: bool = False
    hung: bool = False
    failure: FailureEvidence | None = None
    transient: bool = False
    step_outcome: StepOutcome | None = None


def plan_attempt(
    sim: SimSettings,
    *,
    seed: int,
    attempt_id: AttemptId,
    attempt_no: int,
    model: str | None,
    faults: Faults,
    rng: random.Random,
) -> AgentPlan:
    # The same key and the same order of draws as SimBackend.run.
    draw = draw_attempt(seed, sim, attempt_id, attempt_no, model)
    duration, fails, family = draw.duration_s, draw.fails, draw.family
    tokens_in = draw.usage.input_tokens
    plan = AgentPlan(
        duration_s=duration,
        outcome=Outcome.FAILED if fails else Outcome.SUCCEEDED,
        exit_code=1 if fails else 0,
        error="simulated failure" if fails else None,
        usage=draw.usage,
        session_id=draw.session_id,
    )
    # Drawn only when on, so a run without faults never touches the run's generator.
    if faults.agent_hang > 0 and rng.random() < faults.agent_hang:
        plan.duration_s = None
        plan.hung = True
    elif faults.transient > 0 and rng.random() < faults.transient:
        fail_transient(plan)
    elif faults.agent_crash > 0 and rng.random() < faults.agent_crash:
        share = rng.random()
        plan.duration_s = duration * share
        plan.outcome, plan.exit_code, plan.error = Outcome.FAILED, -9, AGENT_CRASH_ERROR
        plan.usage = simulated_usage(family, int(tokens_in * share))
        plan.crashed = True
    return plan


TRANSIENT_FAIL_S = 1.0
"""How soon an attempt that meets a provider error fails (its first API call)."""


def fail_transient(plan: AgentPlan) -> None:
    """The attempt's first API call is refused as overloaded: it fails at once."""
    plan.duration_s = min(plan.duration_s or TRANSIENT_FAIL_S, TRANSIENT_FAIL_S)
    plan.outcome, plan.exit_code = Outcome.FAILED, 1
    plan.error = "simulated provider error: 529 overloaded"
    plan.failure = FailureEvidence(
        http_status=529, error_type="overloaded_error", message="simulated overload"
    )
    plan.usage = None
    plan.transient = True


def sim_settings(
    spec: TaskSpec, project: ProjectSpec | None, backend: str, mean_duration_s: float
) -> SimSettings:
    """How the task's agent is simulated: its own sim settings, else the defaults
    of the sim adapter (sim backend) or ``mean_duration_s`` (claude, command)."""
    base = project.settings if project is not None else None
    settings = spec.settings.over(base) if spec.settings is not None else base
    if settings is not None and settings.sim is not None:
        return settings.sim
    if backend == "sim":
        return SimSettings()
    return SimSettings(duration_s=mean_duration_s)


def with_hang_timeouts(
    request: SubmitRequest, *, factor: float, mean_duration_s: float, default_backend: str
) -> SubmitRequest:
    """Every task without a timeout gets ``factor`` times its mean duration (at least
    1 s), so a hung agent ends."""
    projects = {p.id: p for p in request.projects}
    tasks = []
    for spec in request.tasks:
        project = projects.get(spec.project)
        if spec.timeout_s is None and (project is None or project.timeout_s is None):
            backend = spec.agent or (project.agent if project else None) or default_backend
            mean = sim_settings(spec, project, backend, mean_duration_s).duration_s
            spec = msgspec.structs.replace(spec, timeout_s=max(1.0, factor * mean))
        tasks.append(spec)
    return msgspec.structs.replace(request, tasks=tasks)


Report = AgentSessionStarted | TurnUsageReported
"""A line of a supervisor's report file (``report_no`` is its line number)."""


@dataclasses.dataclass(slots=True)
class SupervisorFiles:
    """What one attempt's supervisor has written; it outlives the orchestrator."""

    reports: list[Report]
    """The agent's reports in order; ``reports[i].report_no == i + 1``."""
    exit: AttemptFinished | None = None
    """The exit record: the agent's end, written when it ended (unclassified)."""
    turns: int = 0
    """Turns the agent reported: what the journal must count, each once."""
    lost: bool = False
    """The supervisor died with an orchestrator: no exit record will come."""

    def unread(self, journaled: int) -> list[Report]:
        """The reports after the first ``journaled`` (``AttemptRecord.reports``)."""
        return self.reports[journaled:]


@dataclasses.dataclass(slots=True)
class _Agent:
    started_at: float
    plan: AgentPlan
    token: int
    """Matches this agent's live entry in the heap of ends (lazy deletion)."""
    stopping: bool = False


class SimAgents:
    """The running simulated agents, in virtual time."""

    def __init__(self, *, seed: int, faults: Faults, rng: random.Random, stop_s: float) -> None:
        self._seed = seed
        self._faults = faults
        self._rng = rng
        self._stop_s = stop_s
        self._agents: dict[AttemptId, _Agent] = {}
        self._ends: list[tuple[float, int, AttemptId]] = []
        self._tokens = itertools.count()
        self.busy_s = 0.0
        """Agent-seconds spent so far by agents that ended or were killed."""
        self.hangs = 0
        self.crashes = 0
        self.transients = 0
        self._turns: list[tuple[float, int, AttemptId, str | None]] = []
        """First model turns still to report (the provider answered: breaker probes)."""
        self.files: dict[AttemptId, SupervisorFiles] = {}
        """Every started attempt's supervisor files, kept for recoveries and checks."""

    def start(
        self,
        event: AttemptDispatched,
        sim: SimSettings,
        now: float,
        *,
        first_turn_s: float | None = None,
    ) -> AgentPlan:
        plan = plan_attempt(
            sim,
            seed=self._seed,
            attempt_id=event.attempt_id,
            attempt_no=event.attempt_no,
            model=event.model,
            faults=self._faults,
            rng=self._rng,
        )
        family = model_family(event.model)
        if not plan.transient and any(o.covers(now, family) for o in self._faults.outages):
            fail_transient(plan)
        self.hangs += plan.hung
        self.crashes += plan.crashed
        self.transients += plan.transient
        agent = _Agent(now, plan, next(self._tokens))
        self._agents[event.attempt_id] = agent
        session = AgentSessionStarted(
            at=now, attempt_id=event.attempt_id, session_id=plan.session_id, report_no=1
        )
        self.files[event.attempt_id] = SupervisorFiles(reports=[session])
        if plan.duration_s is not None:
            heapq.heappush(self._ends, (now + plan.duration_s, agent.token, event.attempt_id))
        if first_turn_s is not None and not plan.transient:
            turn_at = now + min(first_turn_s, plan.duration_s or first_turn_s)
            heapq.heappush(self._turns, (turn_at, agent.token, event.attempt_id, event.model))
        return plan

    def running(self, attempt_id: AttemptId) -> bool:
        """Its agent runs (under a live supervisor): a recovery adopts it."""
        return attempt_id in self._agents

    def live(self) -> list[AttemptId]:
        return list(self._agents)

    def stop(self, attempt_id: AttemptId, reason: StopReason, now: float) -> None:
        """As ``AgentPool.stop``: the agent ends with the stop's outcome after a grace.
        A second stop (an adopting orchestrator honouring a journaled one) changes
        nothing: the supervisor is already stopping it."""
        agent = self._agents.get(attempt_id)
        if agent is None or agent.stopping:
            return  # it already ended (its event is on the way), never started, or stops
        agent.stopping = True
        outcome, error = _STOPPED[reason]
        agent.plan = dataclasses.replace(
            agent.plan, outcome=outcome, exit_code=None, error=error, usage=None
        )
        agent.token = next(self._tokens)
        heapq.heappush(self._ends, (now + self._stop_s, agent.token, attempt_id))

    def next_end(self) -> float | None:
        ends = self._ends
        while ends and not self._live(ends[0]):
            heapq.heappop(ends)
        turns = self._turns
        while turns and not self._live(turns[0][:3]):
            heapq.heappop(turns)
        times = [q[0][0] for q in (ends, turns) if q]
        return min(times) if times else None

    def ended(self, now: float) -> list[AttemptFinished | TurnUsageReported]:
        """The ends (and first turns) due by ``now``, in time order, as agents report them."""
        out: list[AttemptFinished | TurnUsageReported] = []
        while self._turns and self._turns[0][0] <= now:
            turn = heapq.heappop(self._turns)
            if self._live(turn[:3]):
                files = self.files[turn[2]]
                report = TurnUsageReported(
                    at=turn[0],
                    attempt_id=turn[2],
                    model=turn[3],
                    usage=Usage(),
                    report_no=len(files.reports) + 1,
                )
                files.reports.append(report)
                files.turns += 1
                out.append(report)
        while self._ends and self._ends[0][0] <= now:
            entry = heapq.heappop(self._ends)
            if not self._live(entry):
                continue
            at, _token, attempt_id = entry
            agent = self._agents.pop(attempt_id)
            self.busy_s += at - agent.started_at
            plan = agent.plan
            end = AttemptFinished(
                at=at,
                attempt_id=attempt_id,
                outcome=plan.outcome,
                exit_code=plan.exit_code,
                error=plan.error,
                usage=plan.usage,
                session_id=plan.session_id,
                simulated=True,
                failure=plan.failure,
                step_outcome=plan.step_outcome if plan.outcome is Outcome.SUCCEEDED else None,
            )
            self.files[attempt_id].exit = end
            out.append(end)
        out.sort(key=lambda e: e.at)
        return out

    def orchestrator_died(self, now: float) -> int:
        """The orchestrator crashed at ``now``; returns how many supervisors died with it.

        What the agents reported by then stays in their files only (the inbox that
        would have received it is gone). Each agent runs on under its supervisor,
        unless that died too (``Faults.supervisor_lost``, drawn per agent only when
        on): the agent is gone, and its files get no exit record."""
        self.ended(now)
        rate = self._faults.supervisor_lost
        if rate <= 0:
            return 0
        lost = [attempt_id for attempt_id in self._agents if self._rng.random() < rate]
        for attempt_id in lost:
            agent = self._agents.pop(attempt_id)  # its heap entries are dead now
            self.busy_s += now - agent.started_at
            self.files[attempt_id].lost = True
        return len(lost)

    def _live(self, entry: tuple[float, int, AttemptId] | tuple[Any, ...]) -> bool:
        agent = self._agents.get(entry[2])
        return agent is not None and agent.token == entry[1]
