"""The composition root: the one place that picks concrete adapters and wires them.

The CLI reads the environment and settings, then asks this module for what it
needs; nothing below reads ``os.environ``.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec

from trafficcontrol import __version__
from trafficcontrol.adapters.agents.anthropic_api import ApiBackend
from trafficcontrol.adapters.agents.command import CommandBackend
from trafficcontrol.adapters.agents.launcher import SupervisorLauncher
from trafficcontrol.adapters.agents.process_group import kill_leftover_group, kill_marked
from trafficcontrol.adapters.agents.remote import RemoteBackend
from trafficcontrol.adapters.agents.sim import SimBackend
from trafficcontrol.adapters.agents.supervised import supervised
from trafficcontrol.adapters.stores import recovery
from trafficcontrol.adapters.stores.run_lock import RunLock
from trafficcontrol.adapters.stores.snapshot_files import SnapshotStore
from trafficcontrol.adapters.stores.sqlite import Durability, SqliteJournal
from trafficcontrol.adapters.stores.urls import mask_url
from trafficcontrol.adapters.system_clock import SystemClock
from trafficcontrol.adapters.workflow_files import load_workflows
from trafficcontrol.adapters.workspaces.git import GitWorkspaces
from trafficcontrol.domain import snapshot
from trafficcontrol.domain.events import AnyEvent, RolledBack
from trafficcontrol.domain.requests import (
    AnyRequest,
    HandoffRequest,
    RollbackRequest,
    SampleRequest,
    SnapshotRequest,
    SubmitRequest,
    plan,
)
from trafficcontrol.domain.rollback import describe_rollback, plan_rollback
from trafficcontrol.domain.state import State
from trafficcontrol.domain.workflows import WorkflowSpec
from trafficcontrol.errors import BacklogError, ConfigError, StoreError, TrafficControlError
from trafficcontrol.ports import (
    AgentBackend,
    Clock,
    Fence,
    Journal,
    Leases,
    RequestResult,
    WorkQueue,
)
from trafficcontrol.runtime.lead import Lead
from trafficcontrol.runtime.leadership import boottime
from trafficcontrol.runtime.member import SHARD, Member
from trafficcontrol.runtime.orchestrator import Orchestrator
from trafficcontrol.runtime.recovery import interrupt_leftovers
from trafficcontrol.runtime.snapshotter import Snapshotter
from trafficcontrol.runtime.stats import LoopStats
from trafficcontrol.runtime.worker import Worker
from trafficcontrol.settings import Settings, load_settings

CLI_LEASE_TTL_S = 60.0
"""A CLI write without an orchestrator holds the lease this long at most (it releases
it when done; a CLI killed mid-write blocks an orchestrator's start no longer)."""
SUPERVISOR_PRELOAD = {
    "command": ("trafficcontrol.adapters.agents.command",),
    "claude": ("trafficcontrol.adapters.agents.claude_sdk", "claude_agent_sdk"),
}
"""What each backend's supervisors import: its launcher imports it once, while idle,
when the backlog uses the backend (claude_agent_sdk alone takes 0.6 s)."""


@dataclass(frozen=True)
class Home:
    """Where one orchestrator keeps its state (``./.trafficcontrol`` by default)."""

    root: Path

    @property
    def journal(self) -> Path:
        return self.root / "journal.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def worktrees(self) -> Path:
        return self.root / "worktrees"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    def exists(self) -> bool:
        return self.journal.exists()


STORE_ENV = "TC_STORE"
"""The store URL every command honours (``--store`` sets it)."""


def store_kind(url: str) -> str:
    """``sqlite`` or ``postgresql``; raises ``ConfigError`` naming anything else."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    raise ConfigError(
        f"store {mask_url(url)!r}: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
    )


def sqlite_path(url: str) -> Path:
    """``sqlite:///abs/path`` (or ``sqlite://relative``) as a path."""
    rest = url.split("://", 1)[1]
    if not rest:
        raise ConfigError(f"store {url!r}: no file after sqlite://")
    return Path(rest).expanduser()


def open_journal(
    url: str, *, durability: Durability = "process", busy_timeout_s: float = 30.0
) -> Journal:
    """The journal at ``url`` (one factory for every backend, DESIGN.md)."""
    if store_kind(url) == "sqlite":
        return SqliteJournal(sqlite_path(url), durability=durability, busy_timeout_s=busy_timeout_s)
    from trafficcontrol.adapters.stores.postgres import PostgresJournal

    return PostgresJournal(url, durability=durability, busy_timeout_s=busy_timeout_s)


class App:
    """Builds and hands out the parts for one state home."""

    def __init__(
        self,
        home: Home,
        *,
        environ: Mapping[str, str],
        settings: Settings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.home = home
        self.environ = environ
        self.settings = settings if settings is not None else load_settings(home.config)
        self.clock: Clock = clock or SystemClock()
        self._journal: Journal | None = None
        self._leases: Leases | None = None
        self._work: WorkQueue | None = None
        self._write_fence: Fence | None = None
        """The lease a write made here without an orchestrator holds (PostgreSQL)."""
        self.last_recovery: recovery.Recovered | None = None
        self.last_notes: list[str] = []

    # -- storage ----------------------------------------------------------------------
    @property
    def store_url(self) -> str:
        """Where the journal lives: ``--store``/``TC_STORE``, else ``[run] store``, else
        the home's own SQLite file."""
        return (
            self.environ.get(STORE_ENV)
            or self.settings.run.store
            or f"sqlite:///{self.home.journal}"
        )

    @property
    def on_sqlite(self) -> bool:
        return store_kind(self.store_url) == "sqlite"

    def journal(self) -> Journal:
        if self._journal is None:
            self._journal = open_journal(
                self.store_url,
                durability=self.settings.run.durability,
                busy_timeout_s=self.settings.run.store_busy_timeout_s,
            )
        return self._journal

    def has_state(self) -> bool:
        """Something was ever journaled here (a SQLite home's file, or any event). Writes
        nothing: a database without our schema is only looked at, not migrated."""
        if self.on_sqlite:
            return sqlite_path(self.store_url).exists()
        if self._journal is None:
            from trafficcontrol.adapters.stores.pg_schema import schema_status

            current, _latest = schema_status(self.store_url)
            if current == 0:
                return False
        return self.journal().last_seq() > 0

    def leases(self) -> Leases:
        """The shared store's leases (PostgreSQL only: SQLite has its run lock)."""
        if self.on_sqlite:
            raise ConfigError("leases need a PostgreSQL store (SQLite: one orchestrator per file)")
        if self._leases is None:
            self.journal()  # creates or upgrades the schema the leases live in
            from trafficcontrol.adapters.stores.pg_leases import PgLeases

            self._leases = PgLeases(
                self.store_url, busy_timeout_s=min(5.0, self.settings.run.store_busy_timeout_s)
            )
        return self._leases

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._leases is not None:
            self._leases.close()
            self._leases = None
        if self._work is not None:
            self._work.close()
            self._work = None

    def snapshot_files(self) -> SnapshotStore:
        return SnapshotStore(
            self.home.snapshots,
            keep_last=self.settings.run.snapshot_keep,
            supported_schemas=[snapshot.SCHEMA],
        )

    def read_state(self) -> State:
        """The state as the journal has it now (safe while ``tc run`` works elsewhere)."""
        return recovery.recover(self.journal(), self.snapshot_files(), repair=False).state

    def recover(self) -> recovery.Recovered:
        """The state for an orchestrator about to run, with every repair recovery makes.
        The caller holds the run lock."""
        notes: list[str] = []
        journal = self.journal()
        if self.on_sqlite:  # the file's own repairs; a database server does its own
            path = sqlite_path(self.store_url)
            notes += recovery.check_wal(path, self.home.quarantine)
            notes += recovery.check_integrity(
                path, self.home.quarantine, clean=journal.last_run_clean()
            )
        elif journal.last_run_clean() is False:
            notes.append(f"{mask_url(self.store_url)}: last run did not stop cleanly")
        return recovery.recover(journal, self.snapshot_files(), repair=True, notes=notes)

    def run_lock(self) -> RunLock:
        return RunLock(self.home.lock)

    def orchestrator_running(self) -> bool:
        if self.on_sqlite:
            return self.run_lock().held_by_other()
        return any(info.live for info in self.leases().leases())

    @contextmanager
    def exclusive(self) -> Iterator[bool]:
        """Hold the store for a write made here, when no orchestrator works on it (True):
        the home's run lock on SQLite, the lease on PostgreSQL (its writes fenced by it)."""
        if self.on_sqlite:
            lock = self.run_lock()
            held = lock.try_acquire()
            try:
                yield held
            finally:
                lock.release()
            return
        self.home.root.mkdir(parents=True, exist_ok=True)  # as the run lock makes it on SQLite
        leases = self.leases()
        holder = f"tc-cli:{socket.gethostname()}:{os.getpid()}"
        grant = leases.acquire(SHARD, holder, CLI_LEASE_TTL_S)
        if grant is None:
            yield False
            return
        self._write_fence = grant.fence
        try:
            yield True
        finally:
            self._write_fence = None
            leases.release(grant)

    def member(self, *, on_role: Callable[[str, str], None]) -> Member:
        """``tc run`` on a shared store: standby until it holds the lease, then leader."""
        cluster = self.settings.cluster
        stats = LoopStats()  # one for every orchestrator the member makes (the dashboard's)

        def make() -> Orchestrator:
            orchestrator, notes = self.start(stats=stats)
            self.last_notes = notes
            return orchestrator

        return Member(
            make=make,
            journal=self.journal(),
            leases=self.leases(),
            clock=self.clock,
            ttl_s=cluster.lease_ttl_s,
            poll_s=cluster.standby_poll_s,
            version=__version__,
            on_role=on_role,
            lease_clock=boottime,
        )

    # -- requests ------------------------------------------------------------------------
    def request(self, request: AnyRequest, *, wait_s: float = 60.0) -> RequestResult:
        """Apply a request: straight to the journal when no orchestrator runs, else
        through its inbox, waiting for its answer."""
        if isinstance(request, SubmitRequest):
            try:
                request = self.with_workflows(request)
            except TrafficControlError as exc:
                return RequestResult(ok=False, message=exc.message, details=[exc.message])
        with self.exclusive() as held:
            if held:
                try:
                    return self._apply_request(request)
                except TrafficControlError as exc:
                    problems = getattr(exc, "problems", [exc.message])
                    return RequestResult(ok=False, message=exc.message, details=problems)
        journal = self.journal()
        request_id = journal.post_request(str(request.__struct_config__.tag), _encode(request))
        deadline = time.monotonic() + wait_s
        delay = 0.02
        while time.monotonic() < deadline:
            result = journal.request_result(request_id)
            if result is not None:
                return result
            time.sleep(delay)  # waiting on another process: nothing to await
            delay = min(delay * 2, 0.25)
        raise StoreError(
            f"the running orchestrator did not answer request {request_id} within {wait_s:.0f}s"
        )

    def workflows(self) -> dict[str, WorkflowSpec]:
        """The bundled workflow templates and the user's (``<home>/workflows/*.toml``)."""
        return load_workflows(self.home.root / "workflows")

    def with_workflows(self, request: SubmitRequest) -> SubmitRequest:
        """``request`` carrying the definitions of the workflows its tasks name."""
        names = {t.workflow for t in request.tasks if t.workflow is not None}
        if not names:
            return request
        known = self.workflows()
        unknown = sorted(names - known.keys())
        if unknown:
            raise BacklogError(
                f"{request.source}: unknown workflow {', '.join(map(repr, unknown))}"
                f" (known: {', '.join(sorted(known))})",
                [f"unknown workflow {name!r}" for name in unknown],
            )
        return msgspec.structs.replace(request, workflows=[known[n] for n in sorted(names)])

    def _apply_request(self, request: AnyRequest) -> RequestResult:
        """A request served with no orchestrator running (the caller holds the lock)."""
        match request:
            case SnapshotRequest():
                state = self.recover().state
                record = self.snapshot_files().write(
                    snapshot.encode(state),
                    schema=snapshot.SCHEMA,
                    seq=state.seq,
                    instance=f"tc-cli:{os.getpid()}",
                    now=self.clock.now(),
                )
                message = f"snapshot {record.version} written (seq {record.seq}): {record.path}"
                return RequestResult(ok=True, message=message)
            case RollbackRequest():
                return self._rollback_offline(request)
            case SampleRequest():
                return RequestResult(
                    ok=False, message="no tc run works on this home: there is nothing to sample"
                )
            case HandoffRequest():
                return RequestResult(
                    ok=False, message="no tc run leads on this store: there is nothing to hand off"
                )
            case _:
                event = plan(self.read_state(), request, self.clock.now())
                if event is None:
                    return RequestResult(ok=True, message="no change")
                self.journal().append([event], self._write_fence)
                return RequestResult(ok=True, message="accepted")

    def _rollback_offline(self, request: RollbackRequest) -> RequestResult:
        state = self.recover().state
        _meta, payload = self.snapshot_files().read(request.version)
        try:
            data = snapshot.decode(payload)
        except snapshot.SnapshotSchemaError as exc:
            return RequestResult(ok=False, message=f"snapshot {request.version}: {exc}")
        details = describe_rollback(plan_rollback(state, data, request.version))
        if request.dry_run:
            return RequestResult(ok=True, message="dry run: nothing changed", details=details)
        now = self.clock.now()
        events: list[AnyEvent] = list(
            interrupt_leftovers(
                state, _kill_leftover(self.settings.run.grace_s), now, self._kill_marked
            )
        )
        events.append(RolledBack(at=now, version=request.version, snapshot=data))
        self.journal().append(events, self._write_fence)
        return RequestResult(
            ok=True, message=f"rolled back to snapshot {request.version}", details=details
        )

    # -- running --------------------------------------------------------------------------
    def backends(self) -> dict[str, AgentBackend]:
        """Every backend a leader may use: this machine's, and on a shared store the same
        names with ``@workers`` (run by ``tc worker`` elsewhere)."""
        backends = self.backends_here()
        if not self.on_sqlite:  # a shared store: "<name>@workers" runs on tc worker machines
            cluster = self.settings.cluster
            for name in ("command", "claude", "sim", "api"):
                remote = RemoteBackend(
                    name,
                    self.work_queue(),
                    self.clock,
                    poll_s=cluster.worker_poll_s,
                    lost_after_s=cluster.worker_lost_after_s,
                )
                backends[remote.name] = remote
        return backends

    def backends_here(self, *, supervise: bool | None = None) -> dict[str, AgentBackend]:
        """The backends that run agents on this machine (``supervise``: under
        supervisors; default ``[run] supervise_agents``)."""
        grace = self.settings.run.grace_s
        if supervise is None:
            supervise = self.settings.run.supervise_agents
        backends: dict[str, AgentBackend] = {
            "sim": SimBackend(clock=self.clock, seed=self.settings.sim.seed),
            "command": CommandBackend(environ=self.environ, grace_s=grace),
        }
        backends["claude"] = _claude_backend(self)
        if supervise:
            # One warm launcher forks every supervisor (adapters.agents.launcher).
            launcher = SupervisorLauncher() if self.settings.run.fork_supervisors else None
            for name in ("command", "claude"):
                backends[name] = supervised(
                    backends[name],
                    environ=self.environ,
                    grace_s=grace,
                    cli_path=self.settings.claude.cli_path,
                    launcher=launcher,
                    preload=SUPERVISOR_PRELOAD[name],
                )
        backends["api"] = ApiBackend(environ=self.environ, clock=self.clock)
        return backends

    def work_queue(self) -> WorkQueue:
        """Attempts queued for workers (PostgreSQL only)."""
        if self.on_sqlite:
            raise ConfigError(
                "workers need a PostgreSQL store (tc worker --store postgresql://...)"
            )
        if self._work is None:
            self.journal()  # creates or upgrades the schema the queue lives in
            from trafficcontrol.adapters.stores.pg_work import PgWorkQueue

            self._work = PgWorkQueue(self.store_url)
        return self._work

    def worker(self, *, host_id: str, checkouts: Mapping[str, Path], max_agents: int) -> Worker:
        """``tc worker``: this machine's agents for the attempts a leader queues."""
        # The agents are its own children: a worker that restarts kills what it left.
        backends = self.backends_here(supervise=False)
        return Worker(
            queue=self.work_queue(),
            backends=backends,
            workspaces=GitWorkspaces(self.home.worktrees),
            checkouts=checkouts,
            logs_dir=self.home.logs,
            host_id=host_id,
            max_agents=max_agents,
            clock=self.clock,
            kill_marked=self._kill_marked,
            version=__version__,
            poll_s=self.settings.cluster.worker_poll_s,
        )

    def orchestrator(
        self, *, record_latency: bool = False, stats: LoopStats | None = None
    ) -> Orchestrator:
        instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        run = self.settings.run
        backends = self.backends()
        return Orchestrator(
            journal=self.journal(),
            backends=backends,
            workspaces=GitWorkspaces(self.home.worktrees),
            clock=self.clock,
            scheduler=msgspec.structs.replace(
                self.settings.scheduler(), lead_splits=self.settings.lead.model is not None
            ),
            logs_dir=self.home.logs,
            instance=instance,
            kill_leftover=_kill_leftover(self.settings.run.grace_s),
            kill_marked=self._kill_marked,
            request_poll_s=self.settings.run.request_poll_s,
            record_latency=record_latency,
            snapshotter=self._snapshotter(instance),
            capacity=self.settings.capacity,
            resilience=self.settings.resilience,
            lead=self._lead(backends),
            store_buffer_events=run.store_buffer_events,
            store_retry_max_s=run.store_retry_max_s,
            store_shutdown_wait_s=run.store_shutdown_wait_s,
            hung_after_s=run.hung_after_s or None,
            stats=stats,
        )

    def _lead(self, backends: Mapping[str, AgentBackend]) -> Lead | None:
        settings = self.settings.lead
        if settings.model is None:
            return None
        backend = backends.get(settings.backend)
        if backend is None:
            raise ConfigError(
                f"lead.backend {settings.backend!r} is not a backend"
                f" (one of {', '.join(sorted(backends))})"
            )
        return Lead(settings, backend, self.clock, self.home.logs)

    def _kill_marked(self, markers: Collection[str]) -> set[str]:
        return kill_marked(markers, self.settings.run.grace_s)

    def _snapshotter(self, instance: str) -> Snapshotter | None:
        interval = self.settings.run.snapshot_interval_s
        if interval <= 0:
            return None
        return Snapshotter(
            self.snapshot_files(), clock=self.clock, interval_s=interval, instance=instance
        )

    def _profiled(self, orchestrator: Orchestrator) -> Orchestrator:
        """The ``[profile]`` settings applied to the orchestrator's spans and slow watch."""
        settings = self.settings.profile
        spans = orchestrator.stats.spans
        spans.enabled = settings.spans
        spans.slow_after_s.update(settings.slow_after_s)
        orchestrator.slow.quiet_s = settings.quiet_s
        return orchestrator

    def start(
        self, *, record_latency: bool = False, stats: LoopStats | None = None
    ) -> tuple[Orchestrator, list[str]]:
        """An orchestrator with its recovered state, and what recovery found.
        The caller holds the run lock (or will hold the lease before it runs)."""
        recovered = self.recover()
        self.last_recovery = recovered
        orchestrator = self._profiled(self.orchestrator(record_latency=record_latency, stats=stats))
        orchestrator.recover(recovered.state)
        return orchestrator, recovered.notes


def _claude_backend(app: App) -> AgentBackend:
    from trafficcontrol.adapters.agents.claude_sdk import ClaudeBackend

    return ClaudeBackend(
        environ=app.environ,
        cli_path=app.settings.claude.cli_path,
        grace_s=app.settings.run.grace_s,
    )


def _kill_leftover(grace_s: float) -> Callable[[int, int, float], bool]:
    def kill(pid: int, pgid: int, create_time: float) -> bool:
        return kill_leftover_group(pid, pgid, create_time, grace_s)

    return kill


_request_encoder = msgspec.json.Encoder()


def _encode(request: AnyRequest) -> bytes:
    return _request_encoder.encode(request)
