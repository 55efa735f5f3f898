"""The agent pool: one named asyncio task per running attempt.

Design note. The pool owns every agent task and nothing else does; an agent task
never touches the state or the journal, it reports through the inbox. Stopping an
attempt is asyncio cancellation of its task, with the reason remembered here so the
attempt's end is journaled as cancelled, timed out, interrupted or — stopped as hung
(``runtime.watchdog``) — failed with the idle time as evidence (class transient: it is
retried); the adapter turns the cancellation into SIGTERM → grace → SIGKILL of its
process group. Whatever happens inside an adapter, exactly one ``AttemptFinished``
leaves each task.

Session rotation (``domain.rotation``). An attempt stopped with ``StopReason.ROTATE``
is, once its agent is gone, asked for a handoff: the backend (a ``SessionHandoff``)
resumes the session for one turn without tools, bounded by ``handoff_timeout_s``; when
that gives nothing the backend extracts one from the attempt's log. The attempt then
ends interrupted with the summary in ``AttemptFinished.handoff``. A second stop while
the handoff runs (shutdown, cancel) cuts it short: the log's extract is used. The next
attempt of the task (``interrupts.continues``) gets the rotated attempt's worktree and
a fresh session whose prompt carries the summary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
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
    AgentProcessStarted,
    AgentSessionStarted,
    AttemptDispatched,
    AttemptFinished,
    AttemptStopRequested,
    BreakerChanged,
    CapacityWarned,
    LimitCorrected,
    RateLimitObserved,
    TaskDeferred,
    TaskWoken,
    TurnUsageReported,
    WorkspacePrepared,
)
from trafficcontrol.domain.failures import DEFAULT_RULES, FailureClass, FailureRule, classify
from trafficcontrol.domain.interrupts import continues, settings_of
from trafficcontrol.domain.model import (
    AttemptId,
    FailureEvidence,
    Outcome,
    StopReason,
    TaskId,
    Usage,
)
from trafficcontrol.domain.records import AttemptRecord
from trafficcontrol.domain.rotation import (
    HANDOFF_PROMPT,
    RotationConfig,
    rotation_error,
    with_handoff,
)
from trafficcontrol.domain.state import State
from trafficcontrol.domain.workflows import StepSpec, first_prompt
from trafficcontrol.errors import TrafficControlError
from trafficcontrol.ports import (
    AgentBackend,
    AgentRequest,
    Clock,
    SessionHandoff,
    Workspace,
    Workspaces,
)
from trafficcontrol.runtime.handoff import check_output
from trafficcontrol.runtime.inbox import Inbox

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


class _Reporter:
    __slots__ = ("_attempt_id", "_clock", "_inbox", "session_id")

    def __init__(self, inbox: Inbox, clock: Clock, attempt_id: AttemptId) -> None:
        self._inbox = inbox
        self._clock = clock
        self._attempt_id = attempt_id
        self.session_id: str | None = None
        """The agent's session, once it said (a rotation resumes it for the handoff)."""

    def process_started(self, pid: int, pgid: int, create_time: float) -> None:
        self._inbox.put(
            AgentProcessStarted(
                at=self._clock.now(),
                attempt_id=self._attempt_id,
                pid=pid,
                pgid=pgid,
                create_time=create_time,
            )
        )

    def rate_limit(
        self, window: str, status: str, utilization: float | None, resets_at: float | None
    ) -> None:
        self._inbox.put(
            RateLimitObserved(
                at=self._clock.now(),
                attempt_id=self._attempt_id,
                window=window,
                status=status,
                utilization=utilization,
                resets_at=resets_at,
            )
        )

    def turn_usage(self, model: str | None, usage: Usage) -> None:
        self._inbox.put(
            TurnUsageReported(
                at=self._clock.now(), attempt_id=self._attempt_id, model=model, usage=usage
            )
        )

    def session_started(self, session_id: str) -> None:
        self.session_id = session_id
        self._inbox.put(
            AgentSessionStarted(
                at=self._clock.now(), attempt_id=self._attempt_id, session_id=session_id
            )
        )


def step_of(state: State, task_id: TaskId, step: str | None) -> StepSpec | None:
    run = state.tasks[task_id].workflow_run
    if step is None or run is None:
        return None
    return state.workflows[run.workflow].step(step)


def with_feedback(state: State, task_id: TaskId) -> str:
    """The task's prompt, plus what went wrong last time when the work itself failed
    (class task): the next attempt should not repeat it."""
    record = state.tasks[task_id]
    prompt = record.spec.prompt
    if record.feedback:
        prompt = f"{prompt}\n\nBefore this attempt, the lead noted: {record.feedback}"
    previous = [state.attempts[a] for a in record.attempts[:-1]]
    if not previous:
        return prompt
    last = previous[-1]
    if last.outcome is not Outcome.FAILED or last.failure_class is not FailureClass.TASK:
        return prompt
    error = (last.error or "it did not succeed")[:2000]
    return (
        f"{prompt}\n\nA previous attempt at this task (attempt {last.no}) failed: {error}\n"
        "Take that into account."
    )


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
    suffix = ".jsonl" if command.backend == "claude" else ".log"
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
        self._rotation = rotation or RotationConfig()
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
        self.latencies: list[float] | None = [] if record_latency else None
        """Seconds from "task ready" to "agent started", when recording."""

    def command_event(self, command: Command, now: float) -> IntentEvent:
        return command_event(command, now, self._logs_root)

    def start(self, event: AttemptDispatched) -> None:
        ready_since = self.state.tasks[event.task_id].ready_since
        task = asyncio.create_task(self._run(event, ready_since), name=f"agent:{event.attempt_id}")
        self._tasks[event.attempt_id] = task
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        attempt_id = AttemptId(task.get_name().removeprefix("agent:"))
        self._tasks.pop(attempt_id, None)
        self._stop_reasons.pop(attempt_id, None)
        self._idle.pop(attempt_id, None)
        self._rotating.discard(attempt_id)

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
    async def _run(self, event: AttemptDispatched, ready_since: float | None) -> None:
        attempt_id = event.attempt_id
        reporter = _Reporter(self.inbox, self._clock, attempt_id)
        request: AgentRequest | None = None
        try:
            request, step = await self._prepare(event)
            result_event = await self._attempt(event, request, step, reporter, ready_since)
        except asyncio.CancelledError:
            if attempt_id in self._rotating:
                result_event = await self._rotated(event, request, reporter)
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

    def _stopped(self, event: AttemptDispatched) -> AttemptFinished:
        attempt_id = event.attempt_id
        reason = self._stop_reasons.get(attempt_id, StopReason.SHUTDOWN)
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

    async def _rotated(
        self, event: AttemptDispatched, request: AgentRequest | None, reporter: _Reporter
    ) -> AttemptFinished:
        """The end of an attempt stopped for rotation, with its handoff (module notes)."""
        _uncancel()  # the stop is handled here: what follows must be able to wait
        attempt_id = event.attempt_id
        attempt = self.state.attempts[attempt_id]
        tokens, window = attempt.context_tokens, self._rotation.window_for(attempt.model)
        backend = self._backends[event.backend]
        summary: str | None = None
        if isinstance(backend, SessionHandoff):
            session_id = reporter.session_id
            cut = self._stop_reasons.get(attempt_id) is not StopReason.ROTATE
            if request is not None and session_id is not None and not cut:
                summary = await self._ask_handoff(backend, request, session_id, reporter)
            if summary is None:
                try:
                    summary = await asyncio.to_thread(
                        backend.handoff_from_log, Path(event.log_path)
                    )
                except asyncio.CancelledError:
                    _uncancel()
        log.info(
            "session_rotated attempt=%s context_tokens=%d window=%d handoff_chars=%d",
            attempt_id,
            tokens,
            window,
            len(summary or ""),
        )
        return AttemptFinished(
            at=self._clock.now(),
            attempt_id=attempt_id,
            outcome=Outcome.INTERRUPTED,
            error=rotation_error(tokens, window),
            session_id=reporter.session_id,
            handoff=summary,
        )

    async def _ask_handoff(
        self, backend: SessionHandoff, request: AgentRequest, session_id: str, reporter: _Reporter
    ) -> str | None:
        """The stopped session's own handoff; None when it gives none in time."""
        timeout = self._rotation.handoff_timeout_s
        try:
            return await asyncio.wait_for(
                backend.handoff(request, session_id, HANDOFF_PROMPT, reporter), timeout
            )
        except asyncio.CancelledError:  # stopped again (shutdown, cancel): no more waiting
            _uncancel()
            reason = "stopped"
        except TimeoutError:
            reason = f"no answer within {timeout:g}s"
        except TrafficControlError as exc:
            reason = exc.message
        except Exception as exc:  # an adapter bug must not lose the attempt's end
            log.exception("handoff_crashed attempt=%s", request.attempt_id)
            reason = repr(exc)
        log.warning("handoff_missing attempt=%s reason=%s", request.attempt_id, reason)
        return None

    async def _handoff_of(self, rotated: AttemptRecord) -> str | None:
        """The rotated attempt's journaled handoff, else one extracted from its log (the
        orchestrator died before it could journal one)."""
        if rotated.handoff:
            return rotated.handoff
        backend = self._backends.get(rotated.backend)
        if not isinstance(backend, SessionHandoff):
            return None
        return await asyncio.to_thread(backend.handoff_from_log, Path(rotated.log_path))

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
        elif project.is_git:
            workspace = await asyncio.to_thread(
                self._workspaces.prepare, project, spec.id, event.attempt_no
            )
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
        prompt = spec.prompt if resumed is not None else with_feedback(state, spec.id)
        if step is not None:
            run = state.tasks[spec.id].workflow_run
            assert run is not None
            prompt = first_prompt(state.workflows[run.workflow], run, spec.title, spec.prompt, step)
            if step.tools is not None:
                settings = msgspec.structs.replace(settings, allowed_tools=list(step.tools))
        if rotated is not None:
            summary = await self._handoff_of(rotated)
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
        reporter: _Reporter,
        ready_since: float | None,
    ) -> AttemptFinished:
        backend = self._backends[event.backend]
        if self.latencies is not None and ready_since is not None:
            self.latencies.append(self._clock.now() - ready_since)
        result = await backend.run(request, reporter)
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
        )


def _uncancel() -> None:
    """Forget the cancellations this task has received (it handled them)."""
    task = asyncio.current_task()
    while task is not None and task.cancelling():
        task.uncancel()
