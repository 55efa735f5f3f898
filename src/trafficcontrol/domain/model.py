"""Domain values: ids, states, specs and usage.

Timestamps are float seconds since the epoch and durations float seconds (named
``*_s``): the hot path folds tens of thousands of events a second and msgspec
encodes floats without conversion; the edges turn them into datetimes for people.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NewType

import msgspec

TaskId = NewType("TaskId", str)
ProjectId = NewType("ProjectId", str)
AttemptId = NewType("AttemptId", str)

SIMULATED_LABEL = "[simulated]"


class Priority(StrEnum):
    P0 = "P0"
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"

    @property
    def rank(self) -> int:
        """0 is the most urgent."""
        return int(self.value[1])


class TaskState(StrEnum):
    PENDING = "pending"
    """Waiting for dependencies to be done."""
    READY = "ready"
    """Runnable; waits for a free agent slot, its locks and its limits."""
    RUNNING = "running"
    WAITING = "waiting"
    """Backing off until ``retry_at`` after a failed attempt."""
    BLOCKED = "blocked"
    """Needs a human answer."""
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    """The orchestrator stopped (shutdown or crash); the task is re-queued, not failed."""


class StopReason(StrEnum):
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    ROLLBACK = "rollback"
    HUNG = "hung"
    """No output for ``hung_after_s``: the attempt fails (class transient) and is retried."""
    STORE_OUTAGE = "store_outage"
    """The journal was down and its buffer full: the attempt is interrupted, re-queued."""
    ROTATE = "rotate"
    """Its session's context passed the rotation threshold: it is asked for a handoff,
    ends interrupted, and a fresh session continues in its worktree (``domain.rotation``)."""


class Difficulty(StrEnum):
    """How hard a task is, as its author judges it: a routing hint."""

    TRIVIAL = "trivial"
    """Mechanical work (renames, formatting, small edits): the cheapest model will do."""
    NORMAL = "normal"
    HARD = "hard"
    """Design, subtle bugs, large refactors: worth the premium model."""

    @property
    def tier(self) -> int:
        return _DIFFICULTY_TIER[self]


_DIFFICULTY_TIER = {Difficulty.TRIVIAL: 0, Difficulty.NORMAL: 1, Difficulty.HARD: 2}


class OnInterrupt(StrEnum):
    """What happens to an attempt that the orchestrator's stop or death interrupted."""

    RESTART = "restart"
    """A new attempt from scratch (a fresh worktree)."""
    RESUME = "resume"
    """Continue the work: claude resumes the same session in the same worktree; command
    runs ``resume_command`` in the same worktree."""
    FAIL = "fail"
    """The task fails; a human decides."""


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens and cost of one attempt (or a sum of attempts)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: float | None = None
    """None when the backend does not report cost (unknown is not zero)."""

    def __add__(self, other: Usage) -> Usage:
        cost: float | None
        if self.cost_usd is None and other.cost_usd is None:
            cost = None
        else:
            cost = (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_creation_tokens=self.cache_creation_tokens + other.cache_creation_tokens,
            cost_usd=cost,
        )

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_creation_tokens
        )


class LimitHit(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The provider refused because a usage or rate limit was reached (HTTP 429,
    Claude Code's "usage limit reached … resets at …"): evidence for learned limits."""

    window: str | None = None
    """The provider's window type when it says (five_hour, seven_day, seven_day_opus,
    seven_day_sonnet, tokens, requests …); None: not said (the tightest window is assumed)."""
    resets_at: float | None = None
    """When the provider says the limit resets (epoch seconds), from headers or text."""
    retry_after_s: float | None = None
    """The provider's ``retry-after``, when given."""
    status: int | None = None
    """HTTP status, when known (429)."""
    message: str = ""
    """The provider's words, shortened (never a secret: errors carry no credentials)."""


class FailureEvidence(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What an adapter saw when an attempt failed: the input of failure classification
    (``domain.failures``). Fields the adapter did not see stay None."""

    http_status: int | None = None
    """The provider's HTTP status (429, 500, 529 …), when an API call failed."""
    error_type: str | None = None
    """The provider's error type (rate_limit_error, overloaded_error, api_error,
    invalid_request_error, authentication_error …) or Claude Code's error kind."""
    exception: str | None = None
    """Class name of the exception that ended the attempt (APIConnectionError …)."""
    exit_code: int | None = None
    terminal_reason: str | None = None
    """Claude Code's result ``terminal_reason`` / ``subtype`` (api_error, max_turns …)."""
    should_retry: bool | None = None
    """The provider's ``x-should-retry`` header, when it sent one."""
    retry_after_s: float | None = None
    """The provider's ``retry-after``, when it sent one."""
    idle_s: float | None = None
    """The agent produced no output for this long and was stopped as hung."""
    message: str = ""
    """The error text, shortened; matched by output patterns."""


class SimSettings(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How a simulated agent behaves. Everything it produces is labelled simulated."""

    duration_s: float = 2.0
    """Mean duration of one attempt."""
    jitter: float = 0.5
    """Relative spread of the duration (0.5: between 50% and 150% of the mean)."""
    failure_rate: float = 0.0
    """Probability that an attempt fails."""
    fail_attempts: int = 0
    """The first N attempts of the task fail for sure (makes retries in demos predictable)."""
    tokens_in: int = 4000
    """Mean input tokens per attempt; output is a fifth of it, scaled per model."""
    question: str | None = None
    """A question the agent asks a human (shown, not yet routed)."""
    seed: int = 0
    needs: Difficulty | None = None
    """The task's true difficulty: a model below it (haiku < sonnet < opus) fails with
    ``underpowered_failure_rate`` (the routing benchmark's success model)."""
    underpowered_failure_rate: float = 0.7
    reject_rate: float = 0.0
    """Probability that a boolean output field (a verify step's ``passed``) is false."""


class AgentSettings(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Backend settings of a project, overridable per task. Unset fields inherit."""

    command: list[str] | None = None
    """argv template for the ``command`` backend: {prompt} {prompt_file} {workdir} {task_id}
    {attempt_id} {project} {title} {log_file}."""
    env: dict[str, str] | None = None
    """Extra environment for the agent process (never secrets: the journal records it)."""
    permission_mode: str | None = None
    """Claude Code permission mode: default | acceptEdits | plan | bypassPermissions."""
    allowed_tools: list[str] | None = None
    max_turns: int | None = None
    system_prompt: str | None = None
    resume_command: list[str] | None = None
    """argv template that continues an interrupted ``command`` attempt (on_interrupt =
    "resume"); same placeholders as ``command``, run in the interrupted attempt's worktree."""
    sim: SimSettings | None = None

    def over(self, base: AgentSettings | None) -> AgentSettings:
        """These settings, with unset fields taken from ``base``."""
        if base is None:
            return self
        fields = {f: getattr(self, f) for f in self.__struct_fields__}
        for name, value in fields.items():
            if value is None:
                fields[name] = getattr(base, name)
        return AgentSettings(**fields)


class ProjectSpec(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: ProjectId
    path: str
    """Absolute path of the project directory."""
    is_git: bool = False
    """A git work tree: each attempt gets its own worktree and branch."""
    agent: str = "sim"
    """Default backend of its tasks: api | claude | command | sim."""
    model: str | None = None
    max_concurrent: int | None = None
    """At most this many agents at once on this project (None: only the global limit)."""
    lock_in_place: bool = True
    """For a project that is not a git repository: its tasks take an exclusive lock on it."""
    timeout_s: float | None = None
    max_attempts: int = 1
    on_interrupt: OnInterrupt | None = None
    """None: resume for claude (same session), restart for the other backends."""
    settings: AgentSettings = msgspec.field(default_factory=AgentSettings)


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: TaskId
    project: ProjectId
    title: str
    prompt: str
    priority: Priority = Priority.P2
    score: float = 0.0
    """Within one priority, higher scores go first."""
    depends_on: tuple[TaskId, ...] = ()
    resources: tuple[str, ...] = ()
    """``name`` for an exclusive lock, ``name:shared`` for a shared one."""
    agent: str | None = None
    model: str | None = None
    """Pins the model (no routing); None: routed by difficulty and capacity."""
    difficulty: Difficulty | None = None
    """Routing hint: trivial -> haiku, hard -> opus; None: judged from the task's size."""
    workflow: str | None = None
    """Run as this workflow's steps (analyze-implement-verify, …); None: one attempt."""
    split: bool = False
    """Ask the lead agent to split it into subtasks (they enter the DAG; it is done when
    they are). Without a lead it runs as one task."""
    parent: TaskId | None = None
    """The task this one was split from."""
    timeout_s: float | None = None
    max_attempts: int | None = None
    """Attempts before the task fails for good (None: the project's)."""
    on_interrupt: OnInterrupt | None = None
    """None: the project's setting."""
    retry_backoff_s: float = 5.0
    """Wait before attempt n+1 is ``retry_backoff_s * 2**(n-1)``."""
    settings: AgentSettings | None = None


SHARED_SUFFIX = ":shared"


def lock_name(resource: str) -> tuple[str, bool]:
    """Split a resource into (name, shared)."""
    if resource.endswith(SHARED_SUFFIX):
        return resource[: -len(SHARED_SUFFIX)], True
    return resource, False


WORKERS = "@workers"
"""A backend name's suffix for attempts run by ``tc worker`` on another machine
(``claude@workers``): the same agent, run elsewhere; the leader decides as for its own."""


def base_backend(name: str) -> str:
    """``claude@workers`` -> ``claude``: the agent a backend name runs."""
    return name.removesuffix(WORKERS)
