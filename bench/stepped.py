"""A stepped shell: the real agent pool and adapters, driven turn by turn on a manual clock.

The simulator replaces agents by a model; this shell keeps them real (the ``api``
backend, the real ``anthropic`` client, a real HTTP server) and replaces only the
event loop's timing: each ``turn`` runs ``decide``, journals and folds its commands,
runs every dispatched attempt to its end in the real ``AgentPool`` and folds what the
attempts reported. Time moves only when the caller says (``advance``), so waits of
minutes (back-offs, breaker intervals, window resets) cost nothing and no test sleeps.
Used by the learned-limit end-to-end test and ``bench resilience``'s real-provider part.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from trafficcontrol.adapters.workspaces.git import GitWorkspaces
from trafficcontrol.domain.decide import SchedulerConfig, decide
from trafficcontrol.domain.events import AnyEvent, AttemptDispatched
from trafficcontrol.domain.state import State, apply
from trafficcontrol.ports import AgentBackend
from trafficcontrol.runtime.pool import AgentPool, command_event


class ManualClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


class SteppedShell:
    def __init__(
        self,
        events: list[AnyEvent],
        backends: Mapping[str, AgentBackend],
        clock: ManualClock,
        config: SchedulerConfig,
        root: Path,
    ) -> None:
        self.clock = clock
        self.config = config
        self.state = State()
        self.journal: list[AnyEvent] = []
        self._logs = str(root / "logs")
        self.fold(events)
        self.pool = AgentPool(
            backends=backends,
            workspaces=GitWorkspaces(root / "worktrees"),
            clock=clock,
            logs_dir=root / "logs",
            state=self.state,
        )
        self.next_wakeup: float | None = None

    def fold(self, events: list[AnyEvent]) -> None:
        for event in events:
            apply(self.state, event)
        self.journal.extend(events)

    async def turn(self) -> list[AnyEvent]:
        """One loop turn; the events it journaled (commands, then what agents reported)."""
        now = self.clock.now()
        decision = decide(self.state, now, self.config)
        self.next_wakeup = decision.next_wakeup
        events: list[AnyEvent] = [command_event(c, now, self._logs) for c in decision.commands]
        self.fold(events)
        starts = [e for e in events if isinstance(e, AttemptDispatched)]
        for start in starts:
            self.pool.start(start)
        if starts:
            await self.pool.wait_all()
        reported, _ = self.pool.inbox.take()
        self.fold(reported)
        return events + reported

    def advance(self, seconds: float) -> None:
        self.clock.t += seconds

    def idle(self) -> bool:
        """Nothing runs and nothing will become ready by itself."""
        return not self.state.running and self.next_wakeup is None
