"""The agent pool: one named asyncio task per running attempt.

Design note. The pool owns every agent task and nothing else does; an agent task
never touches the state or the journal, it reports through the inbox. Stopping an
attempt is asyncio cancellation of its task, with the reason remembered here so the
attempt's end is journaled as cancelled, timed out, interrupted or — stopped as hung
(``runtime.watchdog``) — failed with the idle time as evidence (class transient: it is
retried); the adapter turns the cancellation into SIGTERM → grace → SIGKILL of its
process group. Whatever happens inside an adapter, exactly one ``AttemptFinished``
leaves each task.

Session rotation: an attempt stopped with ``StopReason.ROTATE`` ends with a handoff
(``runtime.rotation``); a later stop for another reason cuts the handoff short. Its
task's next attempt gets the rotated attempt's worktree and a fresh session whose
prompt (``runtime.prompts``) carries the summary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import msgspec

from trafficcontrol.domain.decide import (
    ChangeBreaker,
    Command,
    CorrectLimit,
    DeferTask,
    Dispatch,
    StopAttempt,
    WakeTask,
    Warn,
)
from trafficcontrol.domain.events import (
    AttemptDispatched,
    AttemptFinished,
    AttemptStopRequested,
    BreakerChanged,
    CapacityWarned,
    LimitCorrected,
    TaskDeferred,
    TaskWoken,
    WorkspacePrepared,
)
from trafficcontrol.domain.failures import DEFAULT_RULES, FailureRule, classify
from trafficcontrol.domain.interrupts import continues, settings_of
from trafficcontrol.domain.model import (
    AttemptId,
    FailureEvidence,
    Outcome,
    StopReason,
    base_backend,
)
from trafficcontrol.domain.records import AttemptRecord
from trafficcontrol.domain.rotation import RotationConfig, with_handoff
from trafficcontrol.domain.state import State
from trafficcontrol.domain.workflows import StepSpec
from trafficcontrol.errors import TrafficControlError
from trafficcontrol.ports import (
    AdoptingBackend,
    AgentBackend,
    AgentRequest,
    AgentResult,
    Clock,
    Leftover,
    LongLivedBackend,
    PreparesOwnWorkspace,
    Workspace,
    Workspaces,
)
from trafficcontrol.runtime.handoff import check_output
from trafficcontrol.runtime.inbox import Inbox
from trafficcontrol.runtime.prompts import attempt_prompt, step_of
from trafficcontrol.runtime.reporter import InboxReporter
from trafficcontrol.runtime.rotation import Rotator
from trafficcontrol.runtime.stats import LoopStats

log = logging.getLogger(__name__)

_STOPPED_OUTCOME = {
    StopReason.CANCELLED: Outcome.CANCELLED,
    StopReason.TIMEOUT: Outcome.TIMED_OUT,
    StopReason.SHUTDOWN: Outcome.INTERRUPTED,
    StopReason.ROLLBACK: Outcome.INTERRUPTED,
    StopReason.STORE_OUTAGE: Outcome.INTERRUPTED,
    StopReason.HUNG: Outcome.FAILED,
    StopReason.ROTATE: Outcome.INTERRUPTED,
}


def classified(event: AttemptFinished, rules: Sequence[FailureRule] = ()) -> AttemptFinished:
    """``event`` with its failure class from the table (user rules first); as it is."""
    if event.outcome is not Outcome.FAILED or event.failure_class is not None:
        return event
    verdict = classify(event.failure, (*rules, *DEFAULT_RULES))
    return msgspec.structs.replace(
        event, failure_class=verdict.failure_class, failure_rule=verdict.rule
    )


def dispatched_event(command: Dispatch, now: float, logs_root: str) -> AttemptDispatched:
    """The event that journals a dispatch; the log file is ``<logs>/<task>/<n>.log``
    (``.jsonl`` for claude). A plain string: pathlib costs more than it helps here."""
    suffix = ".jsonl" if base_backend(command.backend) == "claude" else ".log"
    return AttemptDispatched(
        at=now,
        attempt_id=command.attempt_id,
        task_id=command.task_id,
        attempt_no=command.attempt_no,
        backend=command.backend,
        model=command.model,
        resources=command.resources,
        deadline=command.deadline,
        log_path=f"{logs_root}/{command.task_id}/{command.attempt_no}{suffix}",
        resume_of=command.resume_of,
        expected_units=command.expected_units,
        route=command.route,
        step=command.step,
    )


def redispatched(attempt: AttemptRecord) -> AttemptDispatched:
    """The dispatch an attempt was started with, rebuilt from its record (an adopted
    attempt is run on as if this orchestrator had dispatched it)."""
    return AttemptDispatched(
        at=attempt.started_at,
        attempt_id=attempt.id,
        task_id=attempt.task_id,
        attempt_no=attempt.no,
        backend=attempt.backend,
        model=attempt.model,
        resources=attempt.resources,
        deadline=attempt.deadline,
        log_path=attempt.log_path,
        resume_of=attempt.resume_of,
        expected_units=attempt.expected_units,
        route=attempt.route,
        step=attempt.step,
    )


IntentEvent = (
    AttemptDispatched
    | BreakerChanged
    | AttemptStopRequested
    | TaskWoken
    | TaskDeferred
    | LimitCorrected
    | CapacityWarned
)


def command_event(command: Command, now: float, logs_root: str) -> IntentEvent:
    """The event the shell journals before acting on one of ``decide``'s commands."""
    match command:
        case Dispatch():
            return dispatched_event(command, now, logs_root)
        case StopAttempt():
            return AttemptStopRequested(
                at=now, attempt_id=command.attempt_id, reason=command.reason
            )
        case WakeTask():
            return TaskWoken(at=now, task_id=command.task_id)
        case DeferTask():
            return TaskDeferred(
                at=now, task_id=command.task_id, until=command.until, reason=command.reason
            )
        case CorrectLimit():
            return LimitCorrected(at=now, correction=command.correction)
        case Warn():
            return CapacityWarned(at=now, warning=command.warning)
        case ChangeBreaker():
            return BreakerChanged(
                at=now, key=command.key, state=command.state, reason=command.reason
            )


class AgentPool:
    def __init__(
        self,
        *,
        backends: Mapping[str, AgentBackend],
        workspaces: Workspaces,
        clock: Clock,
        logs_dir: Path,
        state: State,
        record_latency: bool = False,
        rotation: RotationConfig | None = None,
    ) -> None:
        self.inbox = Inbox()
        self._rotator = Rotator(backends=backends, clock=clock, config=rotation or RotationConfig())
        self._backends = backends
        self._workspaces = workspaces
        self._clock = clock
        self._logs_root = str(logs_dir)
        self.state = state
        self._tasks: dict[AttemptId, asyncio.Task[None]] = {}
        self._stop_reasons: dict[AttemptId, StopReason] = {}
        self._idle: dict[AttemptId, float] = {}
        """Seconds without output of the attempts stopped as hung."""
        self._rotating: set[AttemptId] = set()
        """Attempts stopped for a session rotation (their end carries a handoff)."""
        self._detached: set[AttemptId] = set()
        """Attempts let go to run on (``detach_all``): they end without a journaled end."""
        self.latencies: list[float] | None = [] if record_latency else None
        """Seconds from "task ready" to "agent started", when recording."""
        self.stats: LoopStats | None = None
        """Where dispatch latency is counted (the orchestrator's ``LoopStats``)."""
        self.may_act: Callable[[], bool] = lambda: True
        """Asked right before an agent is started: False once the orchestrator's lease
        is no longer trusted (``runtime.leadership``)."""

    def command_event(self, command: Command, now: float) -> IntentEvent:
        return command_event(command, now, self._logs_root)

    def start(self, event: AttemptDispatched) -> None:
        ready_since = self.state.tasks[event.task_id].ready_since
        task = asyncio.create_task(self._run(event, ready_since), name=f"agent:{event.attempt_id}")
        self._tasks[event.attempt_id] = task
        task.add_done_callback(self._forget)

    def adopt(self, attempt: AttemptRecord, leftover: Leftover) -> None:
        """Follow an attempt a previous orchestrator started, whose supervisor outlived
        it (``runtime.recovery``), to its end; a stop it had asked for is carried out."""
        event = redispatched(attempt)
        task = asyncio.create_task(
            self._run(event, None, leftover=leftover), name=f"agent:{attempt.id}"
        )
        self._tasks[attempt.id] = task
        task.add_done_callback(self._forget)
        if attempt.stop_reason is not None:
            # After the task's first step: a task cancelled before it ever ran would
            # never reach its handlers, and no end would be journaled.
            asyncio.get_running_loop().call_soon(self.stop, attempt.id, attempt.stop_reason)

    def detach_all(self) -> list[AttemptId]:
        """Stop following the attempts whose agents can outlive us, leaving them running
        (``tc run --leave-agents-running``): no end is journaled for them; the next
        orchestrator adopts them. Returns them; the others are left to the caller."""
        detached: list[AttemptId] = []
        for attempt_id, task in list(self._tasks.items()):
            attempt = self.state.attempts.get(attempt_id)
            backend = self._backends.get(attempt.backend) if attempt is not None else None
            if attempt is None or not isinstance(backend, AdoptingBackend):
                continue
            backend.detach(Path(attempt.log_path))
            self._detached.add(attempt_id)
            task.cancel()
            detached.append(attempt_id)
        return detached

    def _forget(self, task: asyncio.Task[None]) -> None:
        attempt_id = AttemptId(task.get_name().removeprefix("agent:"))
        self._tasks.pop(attempt_id, None)
        self._stop_reasons.pop(attempt_id, None)
        self._idle.pop(attempt_id, None)
        self._rotating.discard(attempt_id)
        self._detached.discard(attempt_id)

    def stop(
        self, attempt_id: AttemptId, reason: StopReason, *, idle_s: float | None = None
    ) -> None:
        """Stop the attempt's agent; ``idle_s``: how long it was silent (reason hung).
        A stop for another reason cuts a rotation's handoff short (module notes)."""
        task = self._tasks.get(attempt_id)
        if task is None:
            return
        current = self._stop_reasons.get(attempt_id)
        if current is None or (current is StopReason.ROTATE and reason is not current):
            self._stop_reasons[attempt_id] = reason
            if reason is StopReason.ROTATE:
                self._rotating.add(attempt_id)
            if idle_s is not None:
                self._idle[attempt_id] = idle_s
            task.cancel()

    def running(self) -> int:
        return len(self._tasks)

    def started(self, attempt_id: AttemptId) -> bool:
        """Its agent task runs and is not being stopped."""
        return attempt_id in self._tasks and attempt_id not in self._stop_reasons

    async def wait_for(self, attempt_ids: list[AttemptId]) -> None:
        tasks = [self._tasks[a] for a in attempt_ids if a in self._tasks]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_all(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def cancel_all(self) -> None:
        for attempt_id in list(self._tasks):
            self.stop(attempt_id, StopReason.SHUTDOWN)
        await self.wait_all()

    # -- one attempt ----------------------------------------------------------------
    async def _run(
        self, event: AttemptDispatched, ready_since: float | None, leftover: Leftover | None = None
    ) -> None:
        attempt_id = event.attempt_id
        reporter = InboxReporter(self.inbox, self._clock, attempt_id)
        request: AgentRequest | None = None
        try:
            if leftover is None:
                request, step = await self._prepare(event)
                result_event = await self._attempt(event, request, step, reporter, ready_since)
            else:
                result_event = await self._adopted(event, leftover, reporter)
        except asyncio.CancelledError:
            if attempt_id in self._detached:
                return  # let go: it runs on, and ends in a later orchestrator's journal
            if attempt_id in self._rotating:
                result_event = await self._rotator.rotated(
                    event,
                    self.state.attempts[attempt_id],
                    request,
                    reporter,
                    cut=self._stop_reasons.get(attempt_id) is not StopReason.ROTATE,
                )
            else:
                result_event = self._stopped(event)
        except TrafficControlError as exc:
            result_event = AttemptFinished(
                at=self._clock.now(),
                attempt_id=attempt_id,
                outcome=Outcome.FAILED,
                error=exc.message,
                failure=FailureEvidence(exception=type(exc).__name__, message=exc.message[:300]),
            )
        except Exception as exc:  # an adapter bug must end the attempt, not the orchestrator
            log.exception("agent_adapter_crashed attempt=%s", attempt_id)
            result_event = AttemptFinished(
                at=self._clock.now(),
                attempt_id=attempt_id,
                outcome=Outcome.FAILED,
                error=f"agent adapter crashed: {exc!r}",
                failure=FailureEvidence(exception=type(exc).__name__, message=str(exc)[:300]),
            )
        self.inbox.put(classified(result_event, self.state.resilience.config.rules))

    def _long_lived(self) -> list[LongLivedBackend]:
        unique = {id(b): b for b in self._backends.values() if isinstance(b, LongLivedBackend)}
        return list(unique.values())

    async def warm(self) -> None:
        """Start what the backends the backlog uses keep between attempts
        (``LongLivedBackend``)."""
        state = self.state
        used = {p.agent for p in state.projects.values()}
        used |= {r.spec.agent for r in state.tasks.values() if r.spec.agent is not None}
        warmed: set[int] = set()
        for name in sorted(n for n in used if n is not None):
            backend = self._backends.get(name)
            if isinstance(backend, LongLivedBackend) and id(backend) not in warmed:
                warmed.add(id(backend))
                await backend.warm()

    async def aclose(self) -> None:
        """Close what the backends keep between attempts, once each."""
        for backend in self._long_lived():
            await backend.aclose()

    def _stopped(self, event: AttemptDispatched) -> AttemptFinished:
        attempt_id = event.attempt_id
        reason = (
            self._stop_reasons.get(attempt_id)
            or self.state.attempts[attempt_id].stop_reason
            or StopReason.SHUTDOWN
        )
        outcome = _STOPPED_OUTCOME[reason]
        if reason is StopReason.HUNG:
            idle = self._idle.get(attempt_id, 0.0)
            error = f"hung: no output for {idle:.1f}s; its process group was killed"
            return AttemptFinished(
                at=self._clock.now(),
                attempt_id=attempt_id,
                outcome=outcome,
                error=error,
                failure=FailureEvidence(idle_s=idle, message=error),
            )
        error = {
            Outcome.TIMED_OUT: f"timed out (deadline {event.deadline})",
            Outcome.CANCELLED: "cancelled",
            Outcome.INTERRUPTED: f"interrupted ({reason})",
        }[outcome]
        return AttemptFinished(
            at=self._clock.now(), attempt_id=attempt_id, outcome=outcome, error=error
        )

    async def _prepare(self, event: AttemptDispatched) -> tuple[AgentRequest, StepSpec | None]:
        """The attempt's workspace and its fully resolved request."""
        state = self.state
        spec = state.tasks[event.task_id].spec
        project = state.projects[spec.project]
        resumed = state.attempts[event.resume_of] if event.resume_of else None
        rotated = continues(state, event.attempt_id)
        carried = resumed or rotated
        if carried is not None and carried.workdir is not None:
            # Resuming or continuing: the earlier attempt's worktree holds the work done.
            workspace = Workspace(
                path=Path(carried.workdir), branch=carried.branch, base_commit=carried.base_commit
            )
        elif project.is_git and not isinstance(
            self._backends.get(event.backend), PreparesOwnWorkspace
        ):
            started = self._clock.monotonic()
            workspace = await asyncio.to_thread(
                self._workspaces.prepare, project, spec.id, event.attempt_no
            )
            if self.stats is not None:
                self.stats.spans.observe("workspace", started, self._clock.monotonic())
        else:
            workspace = Workspace(path=Path(project.path))
        self.inbox.put(
            WorkspacePrepared(
                at=self._clock.now(),
                attempt_id=event.attempt_id,
                path=str(workspace.path),
                branch=workspace.branch,
                base_commit=workspace.base_commit,
            )
        )
        settings = settings_of(state, spec.id)
        resume_session_id = None
        if resumed is not None:
            if event.backend == "command" and settings.resume_command:
                settings = msgspec.structs.replace(settings, command=settings.resume_command)
            resume_session_id = resumed.session_id
        step = step_of(state, spec.id, event.step)
        prompt = attempt_prompt(state, spec.id, step, resumed=resumed is not None)
        if step is not None and step.tools is not None:
            settings = msgspec.structs.replace(settings, allowed_tools=list(step.tools))
        if rotated is not None:
            summary = await self._rotator.handoff_of(rotated)
            if summary:
                prompt = with_handoff(prompt, summary)
        request = AgentRequest(
            attempt_id=event.attempt_id,
            task_id=spec.id,
            project_id=project.id,
            attempt_no=event.attempt_no,
            title=spec.title,
            prompt=prompt,
            workdir=workspace.path,
            log_path=Path(event.log_path),
            model=event.model,
            settings=settings,
            resume_session_id=resume_session_id,
            output_schema=step.output_schema if step is not None else None,
        )
        return request, step

    async def _attempt(
        self,
        event: AttemptDispatched,
        request: AgentRequest,
        step: StepSpec | None,
        reporter: InboxReporter,
        ready_since: float | None,
    ) -> AttemptFinished:
        backend = self._backends[event.backend]
        if ready_since is not None:
            latency = self._clock.now() - ready_since
            if self.latencies is not None:
                self.latencies.append(latency)
            if self.stats is not None:
                self.stats.dispatch_latency_seconds.observe(max(0.0, latency))
        if not self.may_act():
            # The lease went while the attempt was being prepared (the process was stopped,
            # say): the next leader accounts for this attempt; starting it now could run its
            # task beside the next leader's retry.
            return AttemptFinished(
                at=self._clock.now(),
                attempt_id=event.attempt_id,
                outcome=Outcome.INTERRUPTED,
                error="not started: this orchestrator lost its lease",
            )
        result = await backend.run(request, reporter)
        return self._finished(event, result, step)

    async def _adopted(
        self, event: AttemptDispatched, leftover: Leftover, reporter: InboxReporter
    ) -> AttemptFinished:
        backend = self._backends[event.backend]
        assert isinstance(backend, AdoptingBackend), "only supervised attempts are adopted"
        after = self.state.attempts[event.attempt_id].reports
        result = await backend.adopt(leftover, reporter, after_report=after)
        return self._finished(event, result, step_of(self.state, event.task_id, event.step))

    def _finished(
        self, event: AttemptDispatched, result: AgentResult, step: StepSpec | None
    ) -> AttemptFinished:
        if result.stopped:  # stopped on a request (ours, or a predecessor's): its outcome
            return self._stopped(event)
        return AttemptFinished(
            at=self._clock.now(),
            attempt_id=event.attempt_id,
            outcome=result.outcome,
            exit_code=result.exit_code,
            error=result.error,
            usage=result.usage,
            session_id=result.session_id,
            simulated=result.simulated,
            limit_hit=result.limit_hit,
            failure=result.failure,
            step_outcome=(
                check_output(result.text, step.output_schema)
                if step is not None and result.outcome is Outcome.SUCCEEDED
                else None
            ),
            agent_started_at=result.agent_started_at,
            first_output_at=result.first_output_at,
            exited_at=result.exited_at,
        )
