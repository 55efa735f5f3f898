"""Small fakes of the ports."""

from __future__ import annotations

from dataclasses import dataclass, field

from trafficcontrol.domain.model import Usage


@dataclass
class RecordingReporter:
    """An ``AttemptReporter`` that remembers what it was told."""

    processes: list[tuple[int, int, float]] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    turns: list[tuple[str | None, Usage]] = field(default_factory=list)
    rate_limits: list[tuple[str, str, float | None, float | None]] = field(default_factory=list)

    def process_started(self, pid: int, pgid: int, create_time: float) -> None:
        self.processes.append((pid, pgid, create_time))

    def session_started(self, session_id: str, *, report_no: int | None = None) -> None:
        self.sessions.append(session_id)

    def rate_limit(
        self,
        window: str,
        status: str,
        utilization: float | None,
        resets_at: float | None,
        *,
        report_no: int | None = None,
    ) -> None:
        self.rate_limits.append((window, status, utilization, resets_at))

    def turn_usage(self, model: str | None, usage: Usage, *, report_no: int | None = None) -> None:
        self.turns.append((model, usage))
