"""The reporter an agent adapter talks through: each callback becomes an inbox event.

Design note. Adapters must never block (``ports.AttemptReporter``), so every callback
only puts an event in the loop's inbox, stamped with the clock and the attempt. The
reporter also remembers the agent's session id, which a session rotation
(``runtime.rotation``) resumes for the handoff. It is its own module because both the
pool and the rotation hold one, and neither should import the other for it.
"""

from __future__ import annotations

from trafficcontrol.domain.events import (
    AgentProcessStarted,
    AgentSessionStarted,
    RateLimitObserved,
    TurnUsageReported,
)
from trafficcontrol.domain.model import AttemptId, Usage
from trafficcontrol.ports import Clock
from trafficcontrol.runtime.inbox import Inbox


class InboxReporter:
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
        self,
        window: str,
        status: str,
        utilization: float | None,
        resets_at: float | None,
        *,
        report_no: int | None = None,
    ) -> None:
        self._inbox.put(
            RateLimitObserved(
                at=self._clock.now(),
                attempt_id=self._attempt_id,
                window=window,
                status=status,
                utilization=utilization,
                resets_at=resets_at,
                report_no=report_no,
            )
        )

    def turn_usage(self, model: str | None, usage: Usage, *, report_no: int | None = None) -> None:
        self._inbox.put(
            TurnUsageReported(
                at=self._clock.now(),
                attempt_id=self._attempt_id,
                model=model,
                usage=usage,
                report_no=report_no,
            )
        )

    def session_started(self, session_id: str, *, report_no: int | None = None) -> None:
        self.session_id = session_id
        self._inbox.put(
            AgentSessionStarted(
                at=self._clock.now(),
                attempt_id=self._attempt_id,
                session_id=session_id,
                report_no=report_no,
            )
        )
