"""The loop's watchdogs: the journal's health (outages) and hung agents.

Design note. Both watch a dependency the orchestrator cannot decide about from the
journal alone, so they live in the shell; the orchestrator asks them and acts.

``StoreWatch`` keeps the store's side of an outage: since when, how many writes
failed, the last error, when to try again (exponential backoff from
``FIRST_RETRY_S`` up to ``retry_max_s``; one process retrying needs no jitter). The
buffer of events itself is ``runtime.store_buffer``'s, which folds them. A store
outage cannot be journaled while it lasts, so the watch hands the buffer one
``StoreOutage`` summary to journal with the buffered events when the store is back.

``HungWatch`` treats an attempt as hung when its log file (every adapter streams to
``AttemptDispatched.log_path``) has not grown for ``hung_after_s``. It looks every
``min(hung_after_s / 4, 5 s)``: one ``stat`` per running attempt, cheap enough for
the loop. The growth is seen at that granularity, so an attempt is judged hung
between ``hung_after_s`` and ``hung_after_s`` + one interval after its last output,
and the idle time it reports is never below ``hung_after_s``. Rejected alternative:
journaling log growth as events so ``decide`` could judge hung-ness purely — a
stream of observations per running attempt in the journal for a rare failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

import msgspec

from trafficcontrol.domain.events import StoreOutage
from trafficcontrol.domain.model import AttemptId

FIRST_RETRY_S = 0.05
"""Wait before the first retry of a failed journal write."""


class StoreStatus(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    """The journal cannot be written: events are buffered, dispatch is paused."""


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """The degraded modes of a running orchestrator (``Orchestrator.health()``)."""

    store: StoreStatus
    store_since: float | None
    """Start of the current store outage (epoch seconds); None while the store is ok."""
    store_errors: int
    """Failed journal writes in the current outage."""
    store_last_error: str | None
    store_outages: int
    """Store outages since this orchestrator started (each journaled as ``StoreOutage``)."""
    buffered_events: int
    """Events folded in memory but not yet in the journal."""
    buffer_bound: int
    dispatch_paused: bool
    """No new work starts (the store is down: nothing may be acted on unjournaled)."""
    agents_stopped: bool
    """The buffer reached its bound and the running agents were stopped."""
    hung_after_s: float | None
    """Silence after which an agent is hung (None: never)."""
    hung_killed: int
    """Attempts stopped as hung since this orchestrator started."""


class StoreWatch:
    """The store's health as the loop sees it: ok, or an outage and its retry schedule."""

    def __init__(self, *, bound: int, retry_max_s: float) -> None:
        self.bound = bound
        self.retry_max_s = retry_max_s
        self.since: float | None = None
        """Start of the current outage (wall clock); None: the store is ok."""
        self.errors = 0
        self.last_error: str | None = None
        self.outages = 0
        self.shed = False
        """The buffer reached its bound during this outage and the agents were stopped."""
        self._delay = 0.0
        self._next_try = 0.0

    @property
    def ok(self) -> bool:
        return self.since is None

    def failed(self, message: str, now: float, monotonic: float) -> bool:
        """Count a failed write; True when it starts an outage."""
        first = self.since is None
        if first:
            self.since = now
            self.outages += 1
            self._delay = FIRST_RETRY_S
        else:
            self._delay = min(self._delay * 2, self.retry_max_s)
        self.errors += 1
        self.last_error = message
        self._next_try = monotonic + min(self._delay, self.retry_max_s)
        return first

    def due(self, monotonic: float) -> bool:
        """Whether to try writing now (always, while the store is ok)."""
        return self.since is None or monotonic >= self._next_try

    def retry_in(self, monotonic: float) -> float | None:
        """Seconds until the next try (None: the store is ok)."""
        return None if self.since is None else max(0.0, self._next_try - monotonic)

    def summary(self, now: float, buffered: int) -> StoreOutage:
        """The event that journals the outage, ending ``now`` (only during one)."""
        assert self.since is not None, "no outage to summarise"
        return StoreOutage(
            at=now,
            started_at=self.since,
            buffered=buffered,
            errors=self.errors,
            last_error=self.last_error or "",
        )

    def recovered(self) -> None:
        self.since = None
        self.errors = 0
        self.last_error = None
        self.shed = False


class HungWatch:
    """Which running attempts have written nothing to their log for ``hung_after_s``."""

    def __init__(self, hung_after_s: float | None) -> None:
        self.hung_after_s = hung_after_s
        self.killed = 0
        self._seen: dict[AttemptId, tuple[int, float]] = {}
        """attempt -> (log size, monotonic time it was first seen at that size)."""
        self._next_check = float("-inf")

    @property
    def interval(self) -> float:
        return min((self.hung_after_s or 0.0) / 4, 5.0)

    def due(self, monotonic: float) -> bool:
        return self.hung_after_s is not None and monotonic >= self._next_check

    def next_check(self) -> float | None:
        """Monotonic time of the next look (None: off, or nothing to watch)."""
        if self.hung_after_s is None or not self._seen:
            return None
        return self._next_check

    def check(
        self, logs: Mapping[AttemptId, str], monotonic: float
    ) -> list[tuple[AttemptId, float]]:
        """The attempts of ``logs`` (attempt -> log path; the running agents not being
        stopped) that are hung now, with their idle seconds. Forgets the others."""
        limit = self.hung_after_s
        if limit is None or not self.due(monotonic):
            return []
        self._next_check = monotonic + self.interval
        seen = self._seen
        for gone in [a for a in seen if a not in logs]:
            del seen[gone]
        hung: list[tuple[AttemptId, float]] = []
        for attempt_id, path in logs.items():
            size = _size(path)
            previous = seen.get(attempt_id)
            if previous is None or previous[0] != size:
                seen[attempt_id] = (size, monotonic)
                continue
            idle = monotonic - previous[1]
            if idle >= limit:
                hung.append((attempt_id, idle))
                del seen[attempt_id]
        return hung


def _size(path: str) -> int:
    """The log's size; -1 while it does not exist (the adapter has not opened it yet)."""
    try:
        return Path(path).stat().st_size
    except OSError:
        return -1
