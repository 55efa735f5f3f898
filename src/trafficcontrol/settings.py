"""Settings: read once at the edge (``cli``), passed down as typed values.

Sources, later ones win: defaults, ``<home>/config.toml``, command-line flags.
Nothing below ``cli/`` and ``bootstrap.py`` reads the environment or this file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from trafficcontrol.domain.capacity.routing import RoutingPolicy
from trafficcontrol.domain.capacity.tracker import CapacityConfig
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.resilience import ResilienceConfig
from trafficcontrol.domain.rotation import RotationConfig
from trafficcontrol.errors import ConfigError
from trafficcontrol.runtime.lead import LeadSettings


class RunSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_agents: int = 10
    """Agents running at once, over all projects."""
    per_project: int | None = None
    """Default limit of agents per project (a project's own max_concurrent wins)."""
    per_model: dict[str, int] = msgspec.field(default_factory=dict)
    """Limit of agents per model name, e.g. {"claude-opus-4-1" = 2}."""
    starvation_after_s: float = 3600.0
    """A task ready this long goes before higher priorities."""
    store: str | None = None
    """Where the journal lives: ``sqlite:///PATH`` or ``postgresql://USER@HOST:PORT/DB``
    (None: ``<home>/journal.db``). ``--store`` / ``TC_STORE`` win."""
    durability: Literal["process", "power"] = "process"
    """process: survives a crash of tc (SQLite synchronous=NORMAL); power: also power loss."""
    grace_s: float = 5.0
    """Between SIGTERM and SIGKILL when an agent is stopped."""
    request_poll_s: float = 0.2
    """How often a running orchestrator looks for requests from other tc commands."""
    snapshot_interval_s: float = 300.0
    """A snapshot of the state every this many seconds while running (0: never); also
    one at every clean stop."""
    snapshot_keep: int = 12
    """Snapshots kept: the newest N, plus the newest of each day for a week."""
    store_buffer_events: int = 10_000
    """While the journal cannot be written, events are kept in memory up to this many
    (dispatch pauses at the first failure); at the bound the running agents are stopped
    (interrupted, re-queued) so no event is ever dropped (see README, Crash safety)."""
    store_retry_max_s: float = 5.0
    """Longest wait between two tries to write the journal while it is unavailable."""
    store_busy_timeout_s: float = 30.0
    """How long one write waits for a journal lock held elsewhere before it counts as
    a store failure."""
    store_shutdown_wait_s: float = 60.0
    """At shutdown, how long to keep trying to journal buffered events before giving up
    (the next start then recovers from the journal as after a crash)."""
    hung_after_s: float = 1800.0
    """An agent whose log has not grown for this long is hung: its process group is
    killed and the attempt fails as transient (retried). 0: never."""
    supervise_agents: bool = True
    """Run each command and claude agent under a supervisor process that outlives tc
    run: after a crash the restarted tc run adopts it (or records its end) instead of
    running it again. false: agents are tc run's own children and die with it."""
    fork_supervisors: bool = True
    """Fork each supervisor from one warm launcher process (a few ms) instead of
    starting a new interpreter per attempt (about 0.1 s of CPU each; 0.7 s p50 with ten
    starting at once on 2 cores). false: start each directly."""

    def __post_init__(self) -> None:
        if self.store_buffer_events < 1:
            raise ValueError("run.store_buffer_events must be at least 1")
        if min(self.store_retry_max_s, self.store_busy_timeout_s) <= 0:
            raise ValueError("run.store_retry_max_s and run.store_busy_timeout_s must be > 0")
        if min(self.store_shutdown_wait_s, self.hung_after_s) < 0:
            raise ValueError("run.store_shutdown_wait_s and run.hung_after_s must be >= 0")


class ClaudeSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cli_path: str | None = None
    """The Claude Code CLI to run; default: the one bundled with claude-agent-sdk, else PATH."""


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The dashboard, HTTP API and ``/metrics`` served by ``tc run`` (see README, Dashboard)."""

    listen: str | None = None
    """``[HOST:]PORT`` to serve on while ``tc run`` works (None: no server; ``--http``
    wins). HOST defaults to 127.0.0.1."""
    auth: bool = True
    """Require the token (``<home>/http.token``) on every route but ``/healthz``. Off is
    refused on any address but a loopback one."""
    healthy_after_s: float = 10.0
    """``/healthz`` fails once the loop has not turned for this long."""

    def __post_init__(self) -> None:
        if self.healthy_after_s <= 0:
            raise ValueError("http.healthy_after_s must be > 0")


class ProfileSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The always-on operation spans and slow-operation alerts (see README, Profile)."""

    spans: bool = True
    """Time every orchestrator operation (a clock read and a histogram update each)."""
    slow_after_s: dict[str, float] = msgspec.field(default_factory=dict)
    """Per operation, when a span counts as slow (over the defaults in
    ``runtime.stats.SLOW_AFTER_S``: commit 0.25, decide 0.1, fold 0.1, requests 0.5,
    snapshot 2.0, workspace 5.0, http 0.5)."""
    quiet_s: float = 60.0
    """A slow-operation incident is over once this long passes without a slow span."""

    def __post_init__(self) -> None:
        if self.quiet_s <= 0 or any(v <= 0 for v in self.slow_after_s.values()):
            raise ValueError("profile.quiet_s and profile.slow_after_s values must be > 0")


class SimConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    seed: int = 0


class ClusterSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Several ``tc run`` on one PostgreSQL store: one leads, the others stand by."""

    lease_ttl_s: float = 6.0
    """How long the leader's lease lasts unrenewed (renewed every third of it). A leader
    that dies is replaced within ``standby_poll_s`` (the store sees its session end); one
    that hangs or is cut off, within this."""
    standby_poll_s: float = 0.25
    """How often a standby tries the lease and, without LISTEN/NOTIFY, reads the journal."""
    worker_lost_after_s: float = 15.0
    """An attempt whose worker (``tc worker``) has not reported on it for this long is
    given up and retried (the store's clock)."""
    worker_poll_s: float = 0.2
    """How often a worker looks for queued attempts, and the leader for their progress."""

    def __post_init__(self) -> None:
        if not 0.5 <= self.lease_ttl_s <= 3600:
            raise ValueError("cluster.lease_ttl_s must be between 0.5 and 3600")
        if not 0.01 <= self.standby_poll_s <= self.lease_ttl_s:
            raise ValueError("cluster.standby_poll_s must be between 0.01 and lease_ttl_s")
        if not 0.01 <= self.worker_poll_s < self.worker_lost_after_s:
            raise ValueError("cluster.worker_poll_s must be >= 0.01 and < worker_lost_after_s")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    run: RunSettings = msgspec.field(default_factory=RunSettings)
    cluster: ClusterSettings = msgspec.field(default_factory=ClusterSettings)
    claude: ClaudeSettings = msgspec.field(default_factory=ClaudeSettings)
    sim: SimConfig = msgspec.field(default_factory=SimConfig)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    profile: ProfileSettings = msgspec.field(default_factory=ProfileSettings)
    capacity: CapacityConfig = msgspec.field(default_factory=CapacityConfig)
    """The plan usage is metered against: windows, limits, weights (see README, Capacity)."""
    routing: RoutingPolicy = msgspec.field(default_factory=RoutingPolicy)
    """Which model each attempt runs on (see README, Model routing)."""
    resilience: ResilienceConfig = msgspec.field(default_factory=ResilienceConfig)
    """Retries, circuit breakers and extra failure rules (see README, Failures)."""
    lead: LeadSettings = msgspec.field(default_factory=LeadSettings)
    """The optional lead agent (off unless ``model`` is set)."""
    context: RotationConfig = msgspec.field(default_factory=RotationConfig)
    """Workers' context windows and when their sessions rotate (``domain.rotation``)."""

    def scheduler(self) -> SchedulerConfig:
        return SchedulerConfig(
            max_agents=self.run.max_agents,
            per_model=dict(self.run.per_model),
            per_project=self.run.per_project,
            starvation_after_s=self.run.starvation_after_s,
            routing=self.routing,
            rotation=self.context,
        )


def load_settings(path: Path) -> Settings:
    """Settings from a TOML file, or the defaults when it does not exist."""
    if not path.exists():
        return Settings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if settings.run.max_agents < 1:
        raise ConfigError(f"{path}: run.max_agents must be at least 1")
    return settings
