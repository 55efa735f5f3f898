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
from trafficcontrol.errors import ConfigError


class RunSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_agents: int = 10
    """Agents running at once, over all projects."""
    per_project: int | None = None
    """Default limit of agents per project (a project's own max_concurrent wins)."""
    per_model: dict[str, int] = msgspec.field(default_factory=dict)
    """Limit of agents per model name, e.g. {"claude-opus-4-1" = 2}."""
    starvation_after_s: float = 3600.0
    """A task ready this long goes before higher priorities."""
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


class ClaudeSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cli_path: str | None = None
    """The Claude Code CLI to run; default: the one bundled with claude-agent-sdk, else PATH."""


class SimConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    seed: int = 0


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    run: RunSettings = msgspec.field(default_factory=RunSettings)
    claude: ClaudeSettings = msgspec.field(default_factory=ClaudeSettings)
    sim: SimConfig = msgspec.field(default_factory=SimConfig)
    capacity: CapacityConfig = msgspec.field(default_factory=CapacityConfig)
    """The plan usage is metered against: windows, limits, weights (see README, Capacity)."""
    routing: RoutingPolicy = msgspec.field(default_factory=RoutingPolicy)
    """Which model each attempt runs on (see README, Model routing)."""
    resilience: ResilienceConfig = msgspec.field(default_factory=ResilienceConfig)
    """Retries, circuit breakers and extra failure rules (see README, Failures)."""

    def scheduler(self) -> SchedulerConfig:
        return SchedulerConfig(
            max_agents=self.run.max_agents,
            per_model=dict(self.run.per_model),
            per_project=self.run.per_project,
            starvation_after_s=self.run.starvation_after_s,
            routing=self.routing,
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
