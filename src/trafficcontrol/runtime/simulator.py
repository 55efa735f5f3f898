"""The deterministic simulator: the real ``decide``/``apply`` loop in virtual time.

Design note. A discrete-event simulation of ``runtime.orchestrator`` with simulated
agents, no asyncio and no clock: virtual time jumps to the next agent end or the next
``next_wakeup``. One turn mirrors ``Orchestrator._step``: fold the agent events that
arrived, ``decide``, turn each command into its event exactly as the runtime does
(Dispatch → AttemptDispatched, StopAttempt → AttemptStopRequested, WakeTask →
TaskWoken), commit the batch to an in-memory journal (group commit), then act: start
or stop simulated agents. Recovery mirrors ``Orchestrator.recover`` + ``_start``:
newest snapshot + journal tail, then ``recovery.account_for_leftovers`` with a finder
that reads the supervisors' files (``sim_agents.SupervisorFiles``), as the runtime's
``AdoptingBackend.find`` does. An attempt whose supervisor is gone without an exit
record (lost with the orchestrator, or never started) is journaled ``interrupted``;
every other one is journaled ``AttemptAdopted`` before ``OrchestratorStarted`` and then
followed as ``AgentPool.adopt`` follows it: its reports from the first the journal
lacks (``report_no`` above ``AttemptRecord.reports``: those the crash dropped), then
its end — at once from the exit record when it ended while no orchestrator ran, else
when it ends; a stop the journal asked for is carried out (a second stop is a no-op).
As the pool does, what an adopting orchestrator relays is stamped with its own clock.

Faults (``sim_faults.Faults``): agents that crash or hang, an orchestrator crash at
a commit boundary (before the commit: the batch is lost; after it: its agents never
start; after acting), a failed append (the batch is lost and the orchestrator
crashes), slow commits during which agent events pile up. A crash drops everything
in memory — state, inbox — and only the journal, the snapshots and the agents (under
their supervisors, unless ``supervisor_lost``) survive.

Invariants: every committed event goes through ``InvariantChecker`` with the
journal's own fold (never the orchestrator's memory, which a crash may drop), every
``decide`` through ``check_no_deadlock``, and every recovery is compared with a full
replay; the first violation stops the run. At the end, exactly once: an attempt whose
agent ended has that end journaled (an agent that succeeded is never run again), each
report is journaled once, and every turn an agent reported is counted once. A stray
agent (one running for an attempt the journal ended) is a violation at each recovery.
Everything random comes from ``random.Random(seed)`` (agents: from generators keyed
by the seed, see ``sim_faults``), iteration is over lists and insertion-ordered dicts
only, so a seed replays the same journal. Rejected alternative: driving the real asyncio
``Orchestrator`` with a virtual clock — the event loop's scheduling order is not
ours to fix, and 500 seeds in CI need a loop without asyncio's overhead.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from pathlib import Path

import msgspec

from trafficcontrol.adapters.agents.sim import sample_output
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.decide import (
    SchedulerConfig,
    decide,
)
from trafficcontrol.domain.events import (
    AgentSessionStarted,
    AnyEvent,
    AttemptAdopted,
    AttemptDispatched,
    AttemptFinished,
    AttemptStopRequested,
    CapacityConfigured,
    OrchestratorStarted,
    OrchestratorStopped,
    RateLimitObserved,
    ResilienceConfigured,
    TurnUsageReported,
    WorkspacePrepared,
)
from trafficcontrol.domain.invariants import InvariantChecker, check_no_deadlock
from trafficcontrol.domain.model import AttemptId, Outcome, TaskState
from trafficcontrol.domain.records import AttemptRecord
from trafficcontrol.domain.requests import SubmitRequest, plan_submit
from trafficcontrol.domain.state import State, apply
from trafficcontrol.domain.workflows import StepOutcome
from trafficcontrol.ports import Leftover
from trafficcontrol.runtime.pool import classified, command_event
from trafficcontrol.runtime.prompts import step_of
from trafficcontrol.runtime.recovery import Accounting, account_for_leftovers
from trafficcontrol.runtime.sim_agents import SimAgents, sim_settings, with_hang_timeouts
from trafficcontrol.runtime.sim_faults import CRASH_POINTS, CrashPoint, Faults, SimOptions
from trafficcontrol.runtime.sim_report import SimReport, build_report

LOGS_ROOT = "/simulated/logs"
WORKTREES_ROOT = "/simulated/worktrees"
LEFTOVER_KINDS = ("adopted", "finished_while_down", "lost", "unstarted")
"""How a recovery found the attempts the journal said run (``SimReport`` counts)."""


def _no_marked(_markers: object) -> set[str]:
    """Simulated agents leave no processes behind."""
    return set()


def _no_leftover(_pid: int, _pgid: int, _create_time: float) -> bool:
    return False


class _Crash(Exception):
    """The orchestrator died; only the journal, the snapshots and the agents survive."""


class Simulator:
    """One run; ``run()`` once, then read ``journal``, ``snapshots`` and the report."""

    def __init__(
        self,
        request: SubmitRequest,
        config: SchedulerConfig,
        *,
        seed: int,
        faults: Faults | None = None,
        options: SimOptions | None = None,
    ) -> None:
        self.config = config
        self.seed = seed
        self.faults = faults or Faults()
        self.options = options or SimOptions()
        self.rng = random.Random(seed)
        if self.faults.agent_hang > 0:
            request = with_hang_timeouts(
                request,
                factor=self.options.hang_timeout_factor,
                mean_duration_s=self.options.mean_duration_s,
                default_backend=config.default_backend,
            )
        self.request = request
        self.journal: list[AnyEvent] = []
        self.snapshots: list[bytes] = []
        self.checker = InvariantChecker(config)
        self.replica = State()
        """The fold of the journal: what a recovery must arrive at."""
        self.state: State | None = None
        """The orchestrator's memory; None while it is down."""
        self.now = 0.0
        self._inbox: list[AnyEvent] = []
        self.agents = SimAgents(
            seed=seed, faults=self.faults, rng=self.rng, stop_s=self.options.stop_s
        )
        self._next_wakeup: float | None = None
        self._last_snapshot = 0.0
        self._crash_after_acting = False
        self._starts = 0
        self._commits = 0
        self._max_batch = 0
        self._from_snapshot = 0
        self._full_replay = 0
        self.violations = self.checker.violations
        """Every violation found (the checker's list, shared)."""
        self.crashes: list[str] = []
        """When and why the orchestrator crashed, in order."""
        self.fault_counts = dict.fromkeys(
            ("orchestrator_crash", "store_failure", "slow_commit", "supervisor_lost"), 0
        )
        self._scheduled = sorted(self.faults.crashes, key=lambda c: c.at_s)
        """Scheduled crashes still to come, soonest first."""
        self.leftovers: dict[str, set[AttemptId]] = {kind: set() for kind in LEFTOVER_KINDS}
        """Attempts by how a committed recovery found them (``LEFTOVER_KINDS``)."""
        self._found: dict[str, list[AttemptId]] = {}
        """The recovery batch being committed: counted once it is durable."""

    # -- the run ------------------------------------------------------------------------
    def run(self) -> SimReport:
        submitted = plan_submit(State(), self.request, 0.0)  # BacklogError, as tc submit
        if submitted is not None:
            self._append([submitted])  # tc submit wrote it before any orchestrator ran
        if self.options.capacity is not None:
            self._append([CapacityConfigured(at=0.0, config=self.options.capacity)])
        if self.options.resilience is not None:
            self._append([ResilienceConfigured(at=0.0, config=self.options.resilience)])
        settled = False
        while not self.violations:
            if len(self.journal) > self.options.max_events:
                self.violations.append(
                    f"the run did not settle within {self.options.max_events} events"
                )
                break
            try:
                if self.state is None:
                    self._recover()
                    continue
                rules = self._live().resilience.config.rules
                self._inbox.extend(
                    classified(e, rules) if isinstance(e, AttemptFinished) else e
                    for e in self.agents.ended(self.now)
                )
                acted = self._turn()
                if self._idle():
                    stopped = OrchestratorStopped(at=self.now, instance=self._instance())
                    apply(self.state, stopped)
                    self._commit([stopped])
                    settled = True
                    break
                if acted:
                    # The runtime steps again within its poll interval: what the commands
                    # changed (a woken task is ready now) gets decided at once.
                    continue
            except _Crash:
                continue
            if not self._advance():
                break
            if self.options.until_s is not None and self.now >= self.options.until_s:
                break
        if not self.violations:
            self._check_exactly_once(settled=settled)
        self.checker.finish(self.replica, settled=settled)
        return self.report(settled=settled and not self.violations)

    def report(self, *, settled: bool) -> SimReport:
        return build_report(
            self.replica,
            self.journal,
            seed=self.seed,
            source=self.request.source,
            max_agents=self.config.max_agents,
            settled=settled,
            busy_agent_s=self.agents.busy_s,
            faults={
                "agent_crash": self.agents.crashes,
                "agent_hang": self.agents.hangs,
                **self.fault_counts,
            },
            recoveries=(self._from_snapshot, self._full_replay),
            leftovers={kind: len(ids) for kind, ids in self.leftovers.items()},
            commits=self._commits,
            max_batch=self._max_batch,
            violations=list(self.violations),
        )

    def _turn(self) -> bool:
        """``Orchestrator._step``: fold arrivals, decide, journal both, then act.

        True when ``decide`` issued commands."""
        state = self._live()
        events, self._inbox = self._inbox, []
        for event in events:
            apply(state, event)
        decision = decide(state, self.now, self.config)
        self.violations.extend(check_no_deadlock(state, decision, self.config, self.now))
        self._next_wakeup = decision.next_wakeup
        starts: list[AttemptDispatched] = []
        stops: list[AttemptStopRequested] = []
        for command in decision.commands:
            made: AnyEvent
            made = command_event(command, self.now, LOGS_ROOT)
            if isinstance(made, AttemptDispatched):
                starts.append(made)
            elif isinstance(made, AttemptStopRequested):
                stops.append(made)
            apply(state, made)
            events.append(made)
        self._commit(events)
        for stop in stops:
            self.agents.stop(stop.attempt_id, stop.reason, self.now)
        for start in starts:
            self._start_agent(start)
        if self._crash_after_acting:
            self._crash("orchestrator crash after acting on a batch", "orchestrator_crash")
        return bool(decision.commands)

    def _idle(self) -> bool:
        counts = self._live().counts
        return (
            not self._live().running
            and not counts[TaskState.READY]
            and not counts[TaskState.WAITING]
            and not self._inbox
        )

    def _advance(self) -> bool:
        """Jump to the next agent end or timer; False (a violation) if there is none."""
        times = [t for t in (self._next_wakeup, self.agents.next_end()) if t is not None]
        if not times:
            state = self._live()
            self.violations.append(
                f"at seq {state.seq}: stuck at t={self.now:.3f}s: attempts"
                f" {sorted(state.running)} run, but no agent will end and no timer is set"
            )
            return False
        self.now = max(self.now, min(times))
        return True

    def _start_agent(self, event: AttemptDispatched) -> None:
        """As ``AgentPool._attempt``: the agent reports its workspace and session first."""
        state = self._live()
        spec = state.tasks[event.task_id].spec
        project = state.projects[spec.project]
        sim = sim_settings(spec, project, event.backend, self.options.mean_duration_s)
        plan = self.agents.start(event, sim, self.now, first_turn_s=self.options.first_turn_s)
        step = step_of(state, event.task_id, event.step)
        if step is not None:
            rng = random.Random(zlib.crc32(f"out:{self.seed}:{event.attempt_id}".encode()))
            output = sample_output(step.output_schema, rng, sim.reject_rate)
            plan.step_outcome = StepOutcome(output=output)
        resumed = state.attempts[event.resume_of] if event.resume_of else None
        branch: str | None = None
        if resumed is not None and resumed.workdir is not None:
            workdir, branch = resumed.workdir, resumed.branch
        elif project.is_git:
            workdir = f"{WORKTREES_ROOT}/{project.id}/{spec.id}-{event.attempt_no}"
            branch = f"tc/{spec.id}/{event.attempt_no}"
        else:
            workdir = project.path
        self._inbox.append(
            WorkspacePrepared(at=self.now, attempt_id=event.attempt_id, path=workdir, branch=branch)
        )
        # Its supervisor's first report (the session), relayed as it is written.
        self._inbox.extend(self.agents.files[event.attempt_id].unread(0))

    # -- the journal, crashes and recovery ---------------------------------------------------
    def _commit(self, events: list[AnyEvent]) -> None:
        """Group commit of a folded batch, with its faults. Raises ``_Crash``."""
        self._crash_after_acting = False
        if not events:
            return
        faults, rng = self.faults, self.rng
        may_crash = (
            self.fault_counts["orchestrator_crash"] + self.fault_counts["store_failure"]
            < faults.max_crashes
        )
        if may_crash and faults.store_failure > 0 and rng.random() < faults.store_failure:
            self._crash(f"store write failure: a batch of {len(events)} lost", "store_failure")
        point = self._scheduled_crash()
        if (
            point is None
            and may_crash
            and faults.orchestrator_crash > 0
            and rng.random() < faults.orchestrator_crash
        ):
            point = rng.choice(CRASH_POINTS)
        if point == CRASH_POINTS[0]:
            self._crash(f"orchestrator crash {point}", "orchestrator_crash")
        latency = self.options.commit_s
        if faults.slow_disk > 0 and rng.random() < faults.slow_disk:
            latency += rng.uniform(0.0, faults.slow_disk_s)
            self.fault_counts["slow_commit"] += 1
        # Agents keep running while the disk is busy; their events wait for the next batch.
        self.now += latency
        self._append(events)
        state = self._live()
        if self.now - self._last_snapshot >= self.options.snapshot_every_s:
            self.snapshots.append(snapshot.encode(state))
            del self.snapshots[: -self.options.keep_snapshots]
            self._last_snapshot = self.now
        if point == CRASH_POINTS[1]:
            self._crash(f"orchestrator crash {point}", "orchestrator_crash")
        self._crash_after_acting = point == CRASH_POINTS[2]

    def _scheduled_crash(self) -> CrashPoint | None:
        """The point of a scheduled crash now due (``Faults.crashes``), taking it."""
        if self._scheduled and self._scheduled[0].at_s <= self.now:
            return self._scheduled.pop(0).point
        return None

    def _append(self, events: list[AnyEvent]) -> None:
        """Make ``events`` durable, checking each against the journal so far."""
        for event in events:
            self.journal.append(event)
            if not self.checker.observe(event, self.replica):
                break
        self._commits += 1
        self._max_batch = max(self._max_batch, len(events))
        if self._found and isinstance(events[-1], OrchestratorStarted):
            for kind, ids in self._found.items():  # the recovery batch is durable
                self.leftovers[kind].update(ids)
            self._found = {}

    def _crash(self, reason: str, kind: str) -> None:
        """Lose everything in memory: state, inbox. The agents run on (module notes)."""
        self.fault_counts[kind] += 1
        self.fault_counts["supervisor_lost"] += self.agents.orchestrator_died(self.now)
        self._inbox.clear()
        self.state = None
        self._next_wakeup = None
        self._crash_after_acting = False
        self.now += self.options.restart_s
        self.crashes.append(f"t={self.now:.3f}s seq {len(self.journal)}: {reason}")
        raise _Crash(reason)

    def _recover(self) -> None:
        """``Orchestrator.recover`` from the newest snapshot, then ``_start``."""
        if self.snapshots:
            data = snapshot.decode(self.snapshots[-1])
            state = snapshot.restore(data)
            tail = self.journal[data.seq :]
        else:
            state, tail = State(), self.journal
        for event in tail:
            apply(state, event)
        if self._starts:  # the first start is not a recovery
            if self.snapshots:
                self._from_snapshot += 1
            else:
                self._full_replay += 1
            if self.options.check_recovery:
                self._compare_with_replay(state)
        self._starts += 1
        self.state = state
        # What the agents wrote while no orchestrator ran is in their files only.
        self.agents.ended(self.now)
        # Nothing of a lost agent is left to kill; the others are found by their files.
        accounting = account_for_leftovers(
            state, _no_leftover, self.now, _no_marked, self._find_leftover
        )
        events: list[AnyEvent] = list(accounting.ends)
        events += [
            AttemptAdopted(
                at=self.now, attempt_id=aid, instance=self._instance(), finished=found.finished
            )
            for aid, found in accounting.adopt
        ]
        events.append(
            OrchestratorStarted(
                at=self.now,
                instance=self._instance(),
                pid=self._starts,
                previous_clean=not state.running_orchestrator,
            )
        )
        for event in events:
            apply(state, event)
        self._found = self._kinds(accounting)
        self._commit(events)
        for aid, found in accounting.adopt:
            self._adopt(state.attempts[aid], finished=found.finished)
        self._check_no_stray_agent(state)

    def _find_leftover(self, attempt: AttemptRecord) -> Leftover | None:
        """``AdoptingBackend.find`` on the simulated supervisors: the agent runs, or its
        exit record is written; None when it is gone without one (or never started)."""
        if self.agents.running(attempt.id):
            finished = False
        else:
            files = self.agents.files.get(attempt.id)
            if files is None or files.exit is None:
                return None
            finished = True
        return Leftover(
            log_path=Path(attempt.log_path), pid=None, create_time=None, finished=finished
        )

    def _kinds(self, accounting: Accounting) -> dict[str, list[AttemptId]]:
        """The attempts of a recovery by ``LEFTOVER_KINDS``."""
        found: dict[str, list[AttemptId]] = {kind: [] for kind in LEFTOVER_KINDS}
        for aid, leftover in accounting.adopt:
            found["finished_while_down" if leftover.finished else "adopted"].append(aid)
        for end in accounting.ends:
            found["lost" if end.attempt_id in self.agents.files else "unstarted"].append(
                end.attempt_id
            )
        return found

    def _adopt(self, attempt: AttemptRecord, *, finished: bool) -> None:
        """``AgentPool.adopt``: relay the reports the journal lacks, then the end if the
        agent ended while down; else carry out the stop the journal asked for (the old
        orchestrator may have crashed before acting on it)."""
        files = self.agents.files[attempt.id]
        now = self.now
        self._inbox.extend(
            msgspec.structs.replace(report, at=now) for report in files.unread(attempt.reports)
        )
        if finished:
            assert files.exit is not None, "adopted as finished without an exit record"
            rules = self._live().resilience.config.rules
            self._inbox.append(classified(msgspec.structs.replace(files.exit, at=now), rules))
        elif attempt.stop_reason is not None:
            self.agents.stop(attempt.id, attempt.stop_reason, now)

    def _check_no_stray_agent(self, state: State) -> None:
        """After a recovery, every agent still running belongs to a running attempt:
        one the journal ended would run on beside its task's next attempt."""
        for attempt_id in self.agents.live():
            if attempt_id not in state.running:
                self.violations.append(
                    f"at seq {state.seq}: the agent of attempt {attempt_id} runs on, but the"
                    " journal has ended its attempt: its task may run twice at once"
                )

    def _check_exactly_once(self, *, settled: bool) -> None:
        """Each report journaled once; every ended agent's end journaled as it ended
        (an agent that succeeded is never run again); its turns counted once each; and
        no agent outlives a settled run."""
        if settled and self.agents.live():
            self.violations.append(
                f"at the end: agents still run for attempts {self.agents.live()}"
            )
        turns: Counter[AttemptId] = Counter()
        seen: set[tuple[AttemptId, int]] = set()
        for seq, event in enumerate(self.journal, 1):
            if not isinstance(event, (AgentSessionStarted, TurnUsageReported, RateLimitObserved)):
                continue
            if isinstance(event, TurnUsageReported):
                turns[event.attempt_id] += 1
            if event.report_no is None:
                continue
            key = (event.attempt_id, event.report_no)
            if key in seen:
                self.violations.append(
                    f"at seq {seq}: report {event.report_no} of attempt {event.attempt_id}"
                    " is journaled twice"
                )
            seen.add(key)
        for attempt_id, files in self.agents.files.items():
            self._check_attempt_once(attempt_id, files.exit, files.turns, turns[attempt_id])

    def _check_attempt_once(
        self, attempt_id: AttemptId, end: AttemptFinished | None, reported: int, counted: int
    ) -> None:
        journaled = self.replica.attempts[attempt_id].outcome
        if end is not None and journaled is not None and journaled is not end.outcome:
            rerun = "its task ran again" if end.outcome is Outcome.SUCCEEDED else "lost its end"
            self.violations.append(
                f"at the end: attempt {attempt_id}'s agent ended {end.outcome}, but the"
                f" journal records it {journaled}: {rerun}"
            )
        complete = end is not None and journaled is not None
        if counted > reported or (complete and counted != reported):
            self.violations.append(
                f"at the end: attempt {attempt_id} reported {reported} turns, the journal"
                f" counts {counted}"
            )

    def _compare_with_replay(self, recovered: State) -> None:
        how = "snapshot + tail" if self.snapshots else "replay"
        if snapshot.encode(recovered) != snapshot.encode(self.replica):
            self.violations.append(
                f"at seq {recovered.seq}: recovery from {how} differs from a full replay"
            )
        elif decide(recovered, self.now, self.config) != decide(
            self.replica, self.now, self.config
        ):
            self.violations.append(
                f"at seq {recovered.seq}: recovery from {how} decides differently from a"
                " full replay"
            )

    def _live(self) -> State:
        assert self.state is not None, "the orchestrator is down"
        return self.state

    def _instance(self) -> str:
        return f"sim:{self.seed}:{self._starts}"


def simulate(
    request: SubmitRequest,
    config: SchedulerConfig,
    *,
    seed: int,
    faults: Faults | None = None,
    options: SimOptions | None = None,
) -> SimReport:
    """Run ``request`` in virtual time; raises ``BacklogError`` if it would be refused."""
    return Simulator(request, config, seed=seed, faults=faults, options=options).run()
