"""The ports: everything outside the core, as small Protocols.

The runtime talks to the world only through these; ``bootstrap.py`` picks the
concrete adapters, tests pass fakes from ``trafficcontrol.testing``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from trafficcontrol.domain.model import (
    AgentSettings,
    AttemptId,
    FailureEvidence,
    LimitHit,
    Outcome,
    ProjectId,
    ProjectSpec,
    TaskId,
    Usage,
)

if TYPE_CHECKING:  # the journal's types only: a supervisor imports this module, and fast
    from trafficcontrol.domain.events import AnyEvent


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock, stamped on events)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, for measuring durations."""
        ...

    async def sleep(self, seconds: float) -> None: ...


# -- agents -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AgentRequest:
    """One attempt, fully resolved: the adapter needs nothing else."""

    attempt_id: AttemptId
    task_id: TaskId
    project_id: ProjectId
    attempt_no: int
    title: str
    prompt: str
    workdir: Path
    """Where the agent works: the attempt's git worktree, or the project directory."""
    log_path: Path
    """Per-attempt log file the adapter streams to (created by the adapter)."""
    model: str | None
    settings: AgentSettings
    resume_session_id: str | None = None
    """Continue this agent session instead of starting a new one (claude backend)."""
    output_schema: dict[str, Any] | None = None
    """A workflow step's output schema: the answer must end with a JSON object like it."""


@dataclass(frozen=True, slots=True)
class AgentResult:
    outcome: Outcome
    """SUCCEEDED or FAILED; cancellation and timeout are the runtime's to record."""
    exit_code: int | None = None
    error: str | None = None
    usage: Usage | None = None
    session_id: str | None = None
    simulated: bool = False
    limit_hit: LimitHit | None = None
    """Set when the attempt ended because the provider refused on a limit (class limit)."""
    failure: FailureEvidence | None = None
    """What the adapter saw when the attempt failed (classified by ``domain.failures``)."""
    text: str | None = None
    """The agent's final answer (a workflow step's output is read from it)."""
    stopped: bool = False
    """The agent did not end by itself: it was stopped on request (its supervisor was
    told to stop). The runtime records the outcome of the stop it asked for."""
    agent_started_at: float | None = None
    """Epoch seconds: the agent's process was created (None: not measured)."""
    first_output_at: float | None = None
    """Epoch seconds: the agent's first output (a line, a stream message)."""
    exited_at: float | None = None
    """Epoch seconds: the agent's process ended."""


class AttemptReporter(Protocol):
    """How a running adapter tells the orchestrator what it learned. Never blocks.

    ``report_no`` is set by whoever relays an attempt supervisor's report file: the
    report's line there, journaled so that an orchestrator adopting the attempt after a
    restart reads the file on from the first report not yet journaled."""

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
    ) -> None:
        """The provider's own account of a limit window (Claude Code's rate-limit events:
        five_hour, seven_day, seven_day_opus, seven_day_sonnet, overage, ...)."""
        ...

    def turn_usage(self, model: str | None, usage: Usage, *, report_no: int | None = None) -> None:
        """Usage of one model turn as the provider reported it, while the attempt runs
        (the capacity ledger counts it live; the attempt's end still reports the total).
        Claude Code reports a turn's input and cache tokens as it starts; its output
        tokens are only final in the attempt's result, so a turn's may be partial."""
        ...


class AgentBackend(Protocol):
    """One kind of agent (claude, command, sim)."""

    name: str

    def check(self) -> None:
        """Raise ``ConfigError`` when this backend cannot run here (missing CLI,
        credentials, ...). Called at ``tc run`` start for every backend in use."""
        ...

    async def run(self, request: AgentRequest, reporter: AttemptReporter) -> AgentResult:
        """Run the attempt to its end.

        Cancellation is the asyncio kind: when the runtime cancels the task running
        this coroutine (cancel, timeout, shutdown), the adapter stops its agent —
        SIGTERM to the process group, a grace period, SIGKILL, reap — and re-raises
        ``CancelledError``. Unknown agent output is logged and skipped, never fatal.
        """
        ...


@dataclass(frozen=True, slots=True)
class Leftover:
    """An attempt's supervisor that outlived the orchestrator which started it: still
    running, or gone after writing the attempt's end (its exit record)."""

    log_path: Path
    pid: int | None
    """The supervisor's pid while it runs (None: it has finished)."""
    create_time: float | None
    finished: bool
    """Its exit record is written: adopting it only reads the end."""


@runtime_checkable
class LongLivedBackend(Protocol):
    """A backend holding something that outlives one attempt (a warm launcher): the
    runtime warms it up once at start, before the first dispatch, and closes it once at
    shutdown. Attempts still running are not affected by either."""

    async def warm(self) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class AdoptingBackend(Protocol):
    """A backend whose attempts run under a supervisor that survives the orchestrator,
    so that a restarted orchestrator can adopt them instead of running them again."""

    def find(self, log_path: Path, pid: int | None, create_time: float | None) -> Leftover | None:
        """The supervisor of the attempt logging to ``log_path`` (``pid`` and
        ``create_time`` as journaled, if they were), when it runs or has written the
        attempt's end; None when it is gone without one. Blocking (reads files, looks
        at processes); raises ``AgentError`` naming a malformed file."""
        ...

    async def adopt(
        self, leftover: Leftover, reporter: AttemptReporter, *, after_report: int
    ) -> AgentResult:
        """Follow the attempt to its end as ``run`` would: its reports from line
        ``after_report + 1`` on, then its result. Cancellation stops it, as in ``run``."""
        ...

    def detach(self, log_path: Path) -> None:
        """Let the attempt logging to ``log_path`` run on: the next cancellation of its
        ``run``/``adopt`` only stops following it (a handoff to a later orchestrator)."""
        ...


@runtime_checkable
class SessionHandoff(Protocol):
    """A backend whose sessions can be rotated (``domain.rotation``): a stopped session
    can be asked for a handoff summary, and one can be made from an attempt's log."""

    async def handoff(
        self, request: AgentRequest, session_id: str, prompt: str, reporter: AttemptReporter
    ) -> str | None:
        """Resume ``session_id`` (the stopped attempt ``request`` ran) for one turn with
        ``prompt`` and no tools; its answer, or None when it gave none. Cancellable like
        ``run``; the turn's usage is reported like any turn's."""
        ...

    def handoff_from_log(self, log_path: Path) -> str | None:
        """A handoff extracted from an attempt's log (its last messages, files written);
        None when the log has nothing to offer. Blocking: reads the file."""
        ...


@runtime_checkable
class PreparesOwnWorkspace(Protocol):
    """A backend whose agents run elsewhere and make their own workspace there: the
    runtime makes none (``request.workdir`` is then the project's path, for reference)."""

    prepares_workspace: bool


# -- workspaces ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Workspace:
    path: Path
    branch: str | None = None
    base_commit: str | None = None


@dataclass(frozen=True, slots=True)
class WorkspaceStatus:
    path: Path
    branch: str
    project_id: ProjectId
    exists: bool
    dirty: bool
    """Uncommitted changes in the worktree."""
    merged: bool
    """The branch has no commits beyond what the project's HEAD already contains."""


class Workspaces(Protocol):
    """Git worktrees for attempts. Blocking calls: the runtime runs them in a thread."""

    def prepare(self, project: ProjectSpec, task_id: TaskId, attempt_no: int) -> Workspace:
        """A fresh worktree on branch ``tc/<task>/<n>`` for a git project; the project
        directory itself otherwise."""
        ...

    def inspect(self, project: ProjectSpec, path: Path, branch: str) -> WorkspaceStatus: ...

    def remove(self, project: ProjectSpec, path: Path, branch: str) -> None:
        """Remove the worktree and its branch. Callers decide whether that is safe."""
        ...


# -- journal ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Request:
    """A mutation asked for by another process while an orchestrator runs."""

    id: int
    kind: str
    body: bytes


@dataclass(frozen=True, slots=True)
class RequestResult:
    ok: bool
    message: str
    details: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Fence:
    """Who may write: the holder of a shard's lease at one epoch (``Leases``). A store
    with leases refuses, in the writing transaction itself, a write whose fence is not
    the shard's current, unexpired lease."""

    shard: str
    holder: str
    epoch: int


class Journal(Protocol):
    """Append-only event log plus an inbox of requests. Blocking calls, one writer."""

    def append(self, events: Sequence[AnyEvent], fence: Fence | None = None) -> int:
        """Append in one transaction; returns the last sequence number. Durable on return.

        A store with leases (``Leases``) raises ``FencedError`` when ``fence`` is not the
        current lease, and when ``fence`` is None while any lease is held; a store
        without leases (SQLite: one orchestrator per file, the run lock) ignores it."""
        ...

    def read(self, after: int = 0) -> Iterator[tuple[int, AnyEvent]]:
        """Events with a sequence number greater than ``after``, in order."""
        ...

    def last_seq(self) -> int: ...

    def last_run_clean(self) -> bool | None:
        """Whether the last orchestrator journaled its clean stop (None: none ever ran)."""
        ...

    def post_request(self, kind: str, body: bytes) -> int: ...

    def take_requests(self, fence: Fence | None = None) -> list[Request]:
        """Requests not yet taken, oldest first; each is returned once. With leases, a
        stale ``fence`` takes nothing (they are left for the lease's holder)."""
        ...

    def finish_request(self, request_id: int, result: RequestResult) -> None: ...

    def request_result(self, request_id: int) -> RequestResult | None: ...

    def close(self) -> None: ...


@runtime_checkable
class RequestNotifier(Protocol):
    """A journal that can say when a request is posted (PostgreSQL's LISTEN/NOTIFY), so
    the loop takes it at once instead of at its next poll. ``wake`` is called from
    another thread; the returned function stops listening."""

    def on_request(self, wake: Callable[[], None]) -> Callable[[], None]: ...


@runtime_checkable
class AppendNotifier(Protocol):
    """A journal that can say when events were appended or a lease released (PostgreSQL's
    LISTEN/NOTIFY), so a standby folds them at once instead of at its next poll."""

    def on_append(self, wake: Callable[[], None]) -> Callable[[], None]: ...


# -- leases (several instances on one store) ---------------------------------------------
@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A lease as its holder got it. Times are the store's clock (epoch seconds): the
    holder measures its own deadline from when it asked, on its monotonic clock."""

    shard: str
    holder: str
    epoch: int
    ttl_s: float
    expires_at: float
    store_now: float

    @property
    def fence(self) -> Fence:
        return Fence(self.shard, self.holder, self.epoch)


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A shard's lease as anyone can read it."""

    shard: str
    holder: str
    epoch: int
    expires_at: float
    store_now: float
    acquired_at: float

    @property
    def live(self) -> bool:
        return self.expires_at > self.store_now


@dataclass(frozen=True, slots=True)
class InstanceBeat:
    """What an instance says of itself at each heartbeat (``tc cluster``)."""

    instance: str
    host: str
    pid: int
    role: str
    """leader, standby, cli."""
    version: str
    seq: int
    """The last journal event its state has folded."""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    beat: InstanceBeat
    started_at: float
    seen_at: float
    store_now: float


@runtime_checkable
class Leases(Protocol):
    """Leases per shard with fencing epochs, decided by the store's clock. Blocking
    calls, on a connection of their own (renewal never waits behind a journal read).

    ``acquire`` succeeds when the shard's lease is free, released, expired — or held by
    a session the store knows is gone (its holder died: no need to wait for expiry); it
    always starts a new epoch, one more than any before on that shard."""

    def acquire(self, shard: str, holder: str, ttl_s: float) -> LeaseGrant | None:
        """The lease at a new epoch; None when another holds it."""
        ...

    def renew(self, grant: LeaseGrant) -> LeaseGrant | None:
        """The lease extended by its TTL from now; None when it is lost (expired, or
        taken at a newer epoch). Never revives an expired lease."""
        ...

    def release(self, grant: LeaseGrant) -> None:
        """Give the lease up now (a handoff): the next ``acquire`` needs no wait."""
        ...

    def leases(self) -> list[LeaseInfo]: ...

    def beat(self, beat: InstanceBeat) -> None:
        """Record (or refresh) an instance's heartbeat."""
        ...

    def forget(self, instance: str) -> None:
        """Remove an instance's heartbeat (it stopped)."""
        ...

    def instances(self) -> list[InstanceInfo]: ...

    def close(self) -> None: ...


# -- workers on other machines (a shared store) -------------------------------------------
@dataclass(frozen=True, slots=True)
class WorkReport:
    """One thing a worker's agent reported while it ran (``AttemptReporter``'s calls)."""

    kind: str
    """session, rate_limit or turn."""
    session_id: str | None = None
    window: str | None = None
    status: str | None = None
    utilization: float | None = None
    resets_at: float | None = None
    model: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class WorkProgress:
    """An attempt queued for workers, as the leader follows it."""

    reports: list[tuple[int, WorkReport]]
    """Reports after the one asked from, numbered 1, 2, ... per attempt."""
    state: str
    """queued, running or done."""
    worker: str | None
    silent_s: float | None
    """Seconds since its worker was last heard of about it (store clock; None: queued)."""
    result: AgentResult | None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    host_id: str
    projects: list[str]
    max_agents: int
    running: int
    version: str
    seen_s_ago: float


@runtime_checkable
class WorkQueue(Protocol):
    """Attempts the leader hands to workers on other machines, and what they report.
    Blocking calls; the store's clock decides who is silent."""

    # the leader's side
    def put(self, request: AgentRequest, backend: str, epoch: int) -> None:
        """Queue an attempt for a worker running ``backend`` (idempotent by attempt)."""
        ...

    def progress(self, attempt_id: str, after: int) -> WorkProgress | None:
        """None: no such attempt was ever queued."""
        ...

    def ask_stop(self, attempt_id: str, reason: str) -> None: ...

    def give_up(self, attempt_id: str, result: AgentResult, silent_s: float) -> AgentResult | None:
        """End an attempt whose worker has been silent ``silent_s`` (or that no worker
        claimed) with ``result``; the worker's own result if it finished first; None
        when it is neither done nor silent that long."""
        ...

    def find(self, log_path: str) -> tuple[str, str] | None:
        """(attempt id, state) of the attempt queued with ``log_path`` (None: never)."""
        ...

    def workers(self) -> list[WorkerInfo]: ...

    # the worker's side
    def register(
        self, host_id: str, projects: list[str], max_agents: int, version: str
    ) -> None: ...

    def claim(
        self, host_id: str, projects: list[str], backends: list[str], n: int
    ) -> list[tuple[str, AgentRequest]]:
        """Up to ``n`` queued attempts of ``projects`` for ``backends``, each claimed by one
        worker only (``FOR UPDATE SKIP LOCKED``): (backend, request)."""
        ...

    def report(self, attempt_id: str, n: int, report: WorkReport) -> None: ...

    def beat(self, host_id: str, attempt_ids: list[str]) -> dict[str, str]:
        """Heartbeat of the worker and its attempts; the stops asked for them."""
        ...

    def finish(self, host_id: str, attempt_id: str, result: AgentResult) -> bool:
        """False: the leader gave up on it first (the result is dropped)."""
        ...

    def mine(self, host_id: str) -> list[AgentRequest]:
        """Attempts this worker had claimed and not finished (a restart's leftovers)."""
        ...

    def close(self) -> None: ...


# -- snapshots ---------------------------------------------------------------------------
class SnapshotRecord(Protocol):
    @property
    def version(self) -> int: ...

    @property
    def seq(self) -> int: ...

    @property
    def path(self) -> Path: ...


class SnapshotFiles(Protocol):
    """Where snapshots are kept. Blocking calls: the runtime runs them in a thread."""

    def write(
        self, payload: bytes, *, schema: int, seq: int, instance: str, now: float
    ) -> SnapshotRecord:
        """Write atomically (temp file, fsync, rename, fsync the directory), then apply
        retention."""
        ...

    def read(self, version: int) -> tuple[SnapshotRecord, bytes]:
        """The validated payload of one snapshot; raises ``StoreError`` naming the file."""
        ...
