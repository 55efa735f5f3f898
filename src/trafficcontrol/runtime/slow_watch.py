"""Slow operations become incidents: journaled once when one begins and once when it
is over, however many slow spans it lasts.

Design note. ``Spans`` tells us of every span past its threshold, synchronously and
from wherever the operation ran (inside a commit, say), so nothing is journaled there:
the watch only notes it, and the loop turns what it noted into events at the start of
its next turn (``events``). An incident is open from its first slow span until
``quiet_s`` pass without another; then ``SlowOperationCleared`` carries how many slow
spans it had and the worst one. A restarted orchestrator closes the incidents its
predecessor left open (the fold of ``OrchestratorStarted``).
"""

from __future__ import annotations

from dataclasses import dataclass

from trafficcontrol.domain.events import AnyEvent, SlowOperation, SlowOperationCleared
from trafficcontrol.runtime.stats import SlowSpan, Spans


@dataclass(slots=True)
class _Incident:
    first_s: float
    spans: int
    worst_s: float
    last_at: float
    journaled: bool = False


class SlowWatch:
    """Slow spans → incident events (module notes)."""

    def __init__(self, spans: Spans, *, quiet_s: float = 60.0) -> None:
        self._spans = spans
        self.quiet_s = quiet_s
        self._open: dict[str, _Incident] = {}
        spans.slow_listeners.append(self._noted)

    def _noted(self, span: SlowSpan) -> None:
        incident = self._open.get(span.name)
        if incident is None:
            self._open[span.name] = _Incident(span.seconds, 1, span.seconds, span.at)
        else:
            incident.spans += 1
            incident.worst_s = max(incident.worst_s, span.seconds)
            incident.last_at = span.at

    def events(self, now: float, monotonic: float) -> list[AnyEvent]:
        """What to journal now: incidents begun and incidents over since the last call."""
        out: list[AnyEvent] = []
        for name, incident in list(self._open.items()):
            if not incident.journaled:
                incident.journaled = True
                out.append(
                    SlowOperation(
                        at=now,
                        operation=name,
                        seconds=incident.first_s,
                        threshold_s=self._spans.slow_after_s.get(name, 0.0),
                    )
                )
            elif monotonic - incident.last_at >= self.quiet_s:
                del self._open[name]
                out.append(
                    SlowOperationCleared(
                        at=now,
                        operation=name,
                        slow_spans=incident.spans,
                        worst_s=incident.worst_s,
                    )
                )
        return out

    @property
    def open(self) -> list[str]:
        """The operations with an incident open now."""
        return sorted(self._open)
