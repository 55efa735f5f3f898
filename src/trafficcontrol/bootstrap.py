"""The composition root: the one place that picks concrete adapters and wires them.

The CLI reads the environment and settings, then asks this module for what it
needs; nothing below reads ``os.environ``.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from trafficcontrol.adapters.agents.command import CommandBackend
from trafficcontrol.adapters.agents.process_group import kill_leftover_group
from trafficcontrol.adapters.agents.sim import SimBackend
from trafficcontrol.adapters.stores.run_lock import RunLock
from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.adapters.system_clock import SystemClock
from trafficcontrol.adapters.workspaces.git import GitWorkspaces
from trafficcontrol.domain.requests import AnyRequest, plan
from trafficcontrol.domain.state import State, apply
from trafficcontrol.errors import StoreError, TrafficControlError
from trafficcontrol.ports import AgentBackend, Clock, RequestResult
from trafficcontrol.runtime.orchestrator import Orchestrator
from trafficcontrol.settings import Settings, load_settings


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
    def config(self) -> Path:
        return self.root / "config.toml"

    def exists(self) -> bool:
        return self.journal.exists()


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
        self._journal: SqliteJournal | None = None

    # -- storage ----------------------------------------------------------------------
    def journal(self) -> SqliteJournal:
        if self._journal is None:
            self._journal = SqliteJournal(
                self.home.journal, durability=self.settings.run.durability
            )
        return self._journal

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def read_state(self) -> State:
        """The state as the journal has it now (safe while ``tc run`` works elsewhere)."""
        state = State()
        for _seq, event in self.journal().read():
            apply(state, event)
        return state

    def run_lock(self) -> RunLock:
        return RunLock(self.home.lock)

    def orchestrator_running(self) -> bool:
        return self.run_lock().held_by_other()

    # -- requests ------------------------------------------------------------------------
    def request(self, request: AnyRequest, *, wait_s: float = 60.0) -> RequestResult:
        """Apply a request: straight to the journal when no orchestrator runs, else
        through its inbox, waiting for its answer."""
        lock = self.run_lock()
        if lock.try_acquire():
            try:
                state = self.read_state()
                try:
                    event = plan(state, request, self.clock.now())
                except TrafficControlError as exc:
                    problems = getattr(exc, "problems", [exc.message])
                    return RequestResult(ok=False, message=exc.message, details=problems)
                if event is None:
                    return RequestResult(ok=True, message="no change")
                self.journal().append([event])
                return RequestResult(ok=True, message="accepted")
            finally:
                lock.release()
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

    # -- running --------------------------------------------------------------------------
    def backends(self) -> dict[str, AgentBackend]:
        grace = self.settings.run.grace_s
        backends: dict[str, AgentBackend] = {
            "sim": SimBackend(clock=self.clock, seed=self.settings.sim.seed),
            "command": CommandBackend(environ=self.environ, grace_s=grace),
        }
        backends["claude"] = _claude_backend(self)
        return backends

    def orchestrator(self, *, record_latency: bool = False) -> Orchestrator:
        return Orchestrator(
            journal=self.journal(),
            backends=self.backends(),
            workspaces=GitWorkspaces(self.home.worktrees),
            clock=self.clock,
            scheduler=self.settings.scheduler(),
            logs_dir=self.home.logs,
            instance=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            kill_leftover=_kill_leftover(self.settings.run.grace_s),
            request_poll_s=self.settings.run.request_poll_s,
            record_latency=record_latency,
        )


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
