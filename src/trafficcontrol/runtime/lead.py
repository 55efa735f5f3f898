"""The lead agent: one long-lived, deliberately small model conversation for what code
cannot decide. Optional: off unless ``[lead] model`` is configured.

Design note. The orchestrator decides scheduling in code; the lead is consulted for
judgement — today: triaging a task that failed for good (retry with feedback, or leave
it to a human). Its conversation is a ``ContextBudget`` (``domain.context``) fed with
what a lead should know — task specs, results, its own decisions — and kept small by
the budget's thresholds: completed work is compressed into summaries that keep ids,
and past the delegate threshold a question is asked in a *fresh* context holding only
what it needs (the task and its failure), not the lead's whole memory. Each consult is
one call through an agent backend (the ``api`` backend by default), runs as its own
asyncio task (never on the loop's hot path), and is journaled as ``LeadConsulted`` with
its usage, so the lead is metered in the capacity ledger like any agent; its decision
is journaled as the event it leads to (``TaskRetryRequested(by="lead")``).

The estimator behind the budget is calibrated with every consult: the characters sent
against the input tokens the provider reports.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import msgspec

from trafficcontrol.domain.context import Category, ContextBudget, Thresholds
from trafficcontrol.domain.events import (
    AnyEvent,
    AttemptFinished,
    BacklogSubmitted,
    LeadConsulted,
    RolledBack,
    TaskRetryRequested,
    TaskSplit,
)
from trafficcontrol.domain.model import (
    AgentSettings,
    AttemptId,
    Outcome,
    ProjectId,
    TaskId,
    TaskSpec,
    TaskState,
    Usage,
)
from trafficcontrol.domain.records import TaskRecord
from trafficcontrol.domain.requests import SubmitRequest, plan_submit
from trafficcontrol.domain.state import State
from trafficcontrol.domain.workflows import InheritRule
from trafficcontrol.errors import BacklogError
from trafficcontrol.ports import AgentBackend, AgentRequest, Clock
from trafficcontrol.runtime.handoff import check_output

TRIAGE_SCHEMA: dict[str, object] = {
    "type": "object",
    "required": ["action", "feedback"],
    "additionalProperties": False,
    "properties": {
        "action": {"enum": ["retry", "escalate"]},
        "feedback": {"type": "string"},
    },
}
SPLIT_SCHEMA: dict[str, object] = {
    "type": "object",
    "required": ["subtasks"],
    "additionalProperties": False,
    "properties": {
        "subtasks": {
            "type": "array",
            "maxItems": 20,
            "items": {
                "type": "object",
                "required": ["id", "title", "prompt"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,30}$"},
                    "title": {"type": "string"},
                    "prompt": {"type": "string"},
                    "depends_on": {"type": "array", "items": {"type": "string"}},
                },
            },
        }
    },
}
"""An empty list means: do not split, run it as one task."""
_SPLIT_QUESTION = (
    "Split this task into subtasks that agents can do independently where possible, each"
    " small enough for one focused session. Give each an id (lowercase, digits, '-'), a"
    " title, a self-contained prompt, and depends_on (ids of subtasks it needs first). Answer"
    ' {"subtasks": []} if it should not be split.'
)
_SYSTEM = (
    "You lead a team of coding agents. You do not write code. When a task failed, you decide"
    " whether one more attempt with precise feedback can succeed (action retry, with the"
    " feedback the next agent needs) or whether a human must look (action escalate, with"
    " what they should check). Answer with one JSON object."
)


class LeadSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model: str | None = None
    """The lead's model; None: no lead (failed tasks wait for a human)."""
    backend: str = "api"
    window_tokens: int = 200_000
    thresholds: Thresholds = msgspec.field(default_factory=Thresholds)
    max_triage: int = 1
    """Retries the lead may order per task."""

    def __post_init__(self) -> None:
        if self.window_tokens < 1:
            raise ValueError("lead.window_tokens must be at least 1")
        if self.max_triage < 0:
            raise ValueError("lead.max_triage must be >= 0")


class Lead:
    def __init__(
        self, settings: LeadSettings, backend: AgentBackend, clock: Clock, logs_dir: Path
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.clock = clock
        self.logs_dir = logs_dir
        self.budget = ContextBudget(settings.window_tokens, settings.thresholds)
        self.budget.add("system", Category.SYSTEM, _SYSTEM, compressible=False)
        self._ids = itertools.count(1)
        self.in_flight: set[TaskId] = set()
        self._candidates = _Candidates()

    def observe(self, state: State, events: list[AnyEvent]) -> None:
        """Remember what a lead should know about these (already folded) events."""
        for event in events:
            if isinstance(event, BacklogSubmitted):
                for spec in event.tasks:
                    self.budget.add(
                        f"spec:{spec.id}", Category.TASK_SPECS, f"{spec.id}: {spec.title}"
                    )
            elif isinstance(event, AttemptFinished) and event.attempt_id in state.attempts:
                attempt = state.attempts[event.attempt_id]
                line = f"{attempt.id} ({attempt.step or 'task'}): {event.outcome}"
                if event.error:
                    line += f" — {event.error[:200]}"
                self.budget.add(f"result:{attempt.id}", Category.RESULTS, line)

    def note(self, state: State, events: list[AnyEvent]) -> None:
        """Keep the candidates ``wants_split``/``wants_triage`` look at current with
        these folded events (the orchestrator passes every event it folds)."""
        self._candidates.note(state, events)

    def wants_split(self, state: State) -> list[TaskId]:
        """Ready tasks marked ``split`` that the lead has not split yet."""
        candidates = self._candidates
        candidates.refresh(state)
        out = []
        for task_id in candidates.ordered(candidates.split):
            record = state.tasks.get(task_id)
            if record is None or not record.spec.split or record.split_into is not None:
                candidates.split.discard(task_id)  # only a rollback brings it back
            elif record.state is TaskState.READY and task_id not in self.in_flight:
                out.append(task_id)
        return out

    async def split(self, state: State, task_id: TaskId, conventions: str) -> list[AnyEvent]:
        """Ask the lead to split a task; the subtasks' submission and the ``TaskSplit``."""
        record = state.tasks[task_id]
        spec = record.spec
        question = f"Task {spec.id}: {spec.title}\n{spec.prompt[:4000]}\n\n{_SPLIT_QUESTION}"
        result, usage, context, consult = await self._ask(state, task_id, question, SPLIT_SCHEMA)
        outcome = check_output(result, dict(SPLIT_SCHEMA))
        now = self.clock.now()
        children: list[TaskSpec] = []
        problem = outcome.error
        if outcome.output is not None:
            inherited = self._inherited(spec, conventions)
            raw = outcome.output["subtasks"]
            local = {str(item["id"]) for item in raw}
            for item in raw:
                deps = [str(d) for d in item.get("depends_on", [])]
                unknown = [d for d in deps if d not in local]
                if unknown:
                    problem = f"subtask {item['id']}: unknown depends_on {unknown}"
                    break
                children.append(
                    msgspec.structs.replace(
                        spec,
                        id=TaskId(f"{spec.id}.{item['id']}"),
                        title=str(item["title"]),
                        prompt=f"{item['prompt']}\n\n# Context from the parent task\n{inherited}",
                        depends_on=tuple(TaskId(f"{spec.id}.{d}") for d in deps),
                        split=False,
                        parent=spec.id,
                    )
                )
        events: list[AnyEvent] = []
        if problem is None and children:
            try:
                submitted = plan_submit(
                    state,
                    SubmitRequest(source=f"lead split of {spec.id}", projects=[], tasks=children),
                    now,
                )
            except BacklogError as exc:
                problem = "; ".join(exc.problems) or exc.message
                submitted = None
            if submitted is not None:
                events.append(submitted)
        ids = [c.id for c in children] if problem is None else []
        decision = f"split into {len(ids)}: {', '.join(ids)}" if ids else "not split"
        if problem is not None:
            decision = f"not split (invalid answer: {problem[:200]})"
        events.append(TaskSplit(at=now, task_id=task_id, children=ids))
        self.budget.add(f"decision:split:{spec.id}", Category.DECISIONS, f"{spec.id}: {decision}")
        events.insert(0, self._consulted(consult, now, "split", task_id, usage, decision, context))
        return events

    def _inherited(self, spec: TaskSpec, conventions: str) -> str:
        """What a subtask inherits: the parent's task and the project's conventions,
        within the inheritance budget (the parent first; conventions cut to fit)."""
        budget = InheritRule().budget_tokens
        estimate = self.budget.estimator.estimate
        parts = [f"Parent task {spec.id}: {spec.title}\n{spec.prompt}"]
        left = budget - estimate(parts[0])
        if conventions and left > 0:
            chars = int(left * self.budget.estimator.chars_per_token)
            parts.append(f"Project conventions:\n{conventions[:chars]}")
        return "\n\n".join(parts)

    def wants_triage(self, state: State) -> list[TaskId]:
        """Tasks that failed for good on their work (class task) and may get a retry."""
        candidates = self._candidates
        candidates.refresh(state)
        out = []
        for task_id in candidates.ordered(candidates.triage):
            record = state.tasks.get(task_id)
            if record is None or not self._triable(state, record):
                candidates.triage.discard(task_id)  # only a new end or a rollback changes it
            elif task_id not in self.in_flight:
                out.append(task_id)
        return out

    def _triable(self, state: State, record: TaskRecord) -> bool:
        if record.state is not TaskState.FAILED:
            return False
        if record.triaged >= self.settings.max_triage or not record.attempts:
            return False
        last = state.attempts[record.attempts[-1]]
        return last.failure_class is None or last.failure_class.value == "task"

    async def triage(self, state: State, task_id: TaskId) -> list[AnyEvent]:
        """Ask the lead about a failed task; the events its answer leads to."""
        record = state.tasks[task_id]
        spec = record.spec
        failures = [
            f"attempt {a.no} ({a.step or 'task'}): {a.error or a.outcome}"
            for a in (state.attempts[x] for x in record.attempts)
            if a.outcome is not Outcome.SUCCEEDED
        ]
        question = (
            f"Task {spec.id}: {spec.title}\n{spec.prompt[:2000]}\n\nFailed attempts:\n"
            + "\n".join(failures[-5:])
            + "\n\nDecide: retry (with feedback for the next agent) or escalate."
        )
        result, usage, context, consult = await self._ask(state, task_id, question, TRIAGE_SCHEMA)
        outcome = check_output(result, dict(TRIAGE_SCHEMA))
        decision = "no answer"
        events: list[AnyEvent] = []
        now = self.clock.now()
        if outcome.output is not None:
            action = str(outcome.output["action"])
            feedback = str(outcome.output["feedback"])
            decision = f"{action}: {feedback}"[:300]
            if action == "retry":
                events.append(
                    TaskRetryRequested(at=now, task_id=task_id, feedback=feedback, by="lead")
                )
        else:
            decision = f"invalid: {outcome.error}"
        self.budget.add(f"decision:{task_id}:{now}", Category.DECISIONS, f"{spec.id}: {decision}")
        events.insert(0, self._consulted(consult, now, "triage", task_id, usage, decision, context))
        return events

    async def _ask(
        self, state: State, task_id: TaskId, question: str, schema: dict[str, object]
    ) -> tuple[str | None, Usage | None, float, int]:
        """One call: the lead's context (or a fresh one past the delegate threshold) and
        the question; the answer's text, its usage, the context share it was asked from."""
        spec = state.tasks[task_id].spec
        fresh = self.budget.must_delegate()
        utilisation = self.budget.utilisation()
        prompt = question if fresh else self._render() + "\n\n" + question
        consult = next(self._ids)
        request = AgentRequest(
            attempt_id=AttemptId(f"lead:{consult}"),
            task_id=task_id,
            project_id=ProjectId(spec.project),
            attempt_no=consult,
            title=f"lead {spec.id}",
            prompt=prompt,
            workdir=self.logs_dir,
            log_path=self.logs_dir / "lead" / f"{consult}.jsonl",
            model=self.settings.model,
            settings=AgentSettings(system_prompt=_SYSTEM),
            output_schema=dict(schema),
        )
        result = await self.backend.run(request, _Quiet())
        if result.usage is not None and result.usage.input_tokens:
            self.budget.estimator.observe(len(prompt) + len(_SYSTEM), result.usage.input_tokens)
        return result.text, result.usage, utilisation, consult

    def _consulted(
        self,
        consult: int,
        now: float,
        purpose: str,
        task_id: TaskId,
        usage: Usage | None,
        decision: str,
        utilisation: float,
    ) -> LeadConsulted:
        return LeadConsulted(
            at=now,
            consult_id=str(consult),
            purpose=purpose,
            task_id=task_id,
            model=self.settings.model,
            usage=usage,
            decision=decision,
            context_utilisation=utilisation,
        )

    def _render(self) -> str:
        return "\n".join(
            f"[{entry.category.value}] {entry.text}"
            for entry in self.budget.entries.values()
            if entry.category is not Category.SYSTEM  # sent as the system prompt
        )

    def stats(self) -> dict[str, object]:
        return {
            "utilisation": round(self.budget.utilisation(), 4),
            "peak": round(self.budget.peak, 4),
            "by_category": self.budget.by_category(),
            "compressions": self.budget.compressions,
            "estimator_error": self.budget.estimator.error,
            "chars_per_token": round(self.budget.estimator.chars_per_token, 3),
            "decisions": json.dumps(
                [e.text for e in self.budget.entries.values() if e.category is Category.DECISIONS][
                    -3:
                ]
            ),
        }


class _Candidates:
    """The tasks the lead's ``wants_*`` queries look at, kept from the folded events so a
    loop turn costs O(candidates), not O(tasks) (DESIGN.md, "The loop").

    A superset of the answers, pruned as it is read: ``split`` holds the tasks marked
    split and not split yet; ``triage`` the tasks whose attempt ended, until they cannot
    want a triage (a task fails only when its own attempt ends; ``triaged``, its attempts
    and ``split_into`` change back only by a rollback). A rollback, and the first query
    (the state was folded from the journal), rebuild both from every task. ``position``
    is each task's place in ``state.tasks``, so answers come in the order a scan gives.
    """

    def __init__(self) -> None:
        self.stale = True
        self.position: dict[TaskId, int] = {}
        self.split: set[TaskId] = set()
        self.triage: set[TaskId] = set()

    def note(self, state: State, events: list[AnyEvent]) -> None:
        if self.stale:
            return  # the next query rebuilds from the state
        for event in events:
            if isinstance(event, BacklogSubmitted):
                for spec in event.tasks:
                    self.position.setdefault(spec.id, len(self.position))
                    if spec.split:
                        self.split.add(spec.id)
            elif isinstance(event, AttemptFinished):
                attempt = state.attempts.get(event.attempt_id)
                if attempt is not None:
                    self.triage.add(attempt.task_id)
            elif isinstance(event, RolledBack):
                self.stale = True
                return

    def refresh(self, state: State) -> None:
        if not self.stale:
            return
        self.stale = False
        tasks = state.tasks
        self.position = {task_id: i for i, task_id in enumerate(tasks)}
        self.split = {t for t, r in tasks.items() if r.spec.split and r.split_into is None}
        self.triage = {t for t, r in tasks.items() if r.state is TaskState.FAILED}

    def ordered(self, task_ids: set[TaskId]) -> list[TaskId]:
        return sorted(task_ids, key=lambda t: self.position.get(t, len(self.position)))


class _Quiet:
    """The lead's calls report nothing mid-way (its usage arrives with its answer)."""

    def process_started(self, pid: int, pgid: int, create_time: float) -> None: ...

    def session_started(self, session_id: str, *, report_no: int | None = None) -> None: ...

    def rate_limit(
        self,
        window: str,
        status: str,
        utilization: float | None,
        resets_at: float | None,
        *,
        report_no: int | None = None,
    ) -> None: ...

    def turn_usage(
        self, model: str | None, usage: Usage, *, report_no: int | None = None
    ) -> None: ...
