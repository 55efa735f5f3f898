"""What a start does about attempts a previous orchestrator left running.

They are accounted for one by one. An attempt whose backend runs it under a
supervisor (``ports.AdoptingBackend``) and whose supervisor outlived the orchestrator
is *adopted*: when its agent has ended meanwhile its real end is journaled from the
exit record; when it still runs it is followed from where the journal left off. Work
that finished is never run again, and nothing runs twice at once, because a live
supervisor is followed, not restarted.

Every other attempt — a backend without supervisors, or a supervisor gone without
an exit record (killed with the orchestrator) — is treated as before: a process group
that outlived its orchestrator (found by the pid, process-group id and start time the
journal recorded) is killed, so is whatever carries the attempt's run marker, and the
attempt is journaled as interrupted, so its task follows its ``on_interrupt`` policy
(resume the same Claude Code session, restart, or fail).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from trafficcontrol.domain.events import AttemptFinished
from trafficcontrol.domain.model import AttemptId, Outcome
from trafficcontrol.domain.records import AttemptRecord
from trafficcontrol.domain.state import State
from trafficcontrol.errors import TrafficControlError
from trafficcontrol.ports import Leftover

log = logging.getLogger(__name__)

LeftoverKiller = Callable[[int, int, float], bool]
MarkedKiller = Callable[[Collection[str]], set[str]]
"""Kills the processes that carry one of the given run markers (attempts' log paths);
returns the markers that had processes."""
LeftoverFinder = Callable[[AttemptRecord], Leftover | None]
"""The supervisor of a running attempt, when it outlived its orchestrator (blocking)."""


def _none_found(_attempt: AttemptRecord) -> Leftover | None:
    return None


@dataclass
class Accounting:
    """What a start does with each attempt the journal says is running."""

    adopt: list[tuple[AttemptId, Leftover]] = field(default_factory=list)
    """Attempts whose supervisor is found: followed to their real end."""
    ends: list[AttemptFinished] = field(default_factory=list)
    """The others, ended as interrupted."""


def account_for_leftovers(
    state: State,
    kill_leftover: LeftoverKiller,
    now: float,
    kill_marked: MarkedKiller,
    find: LeftoverFinder = _none_found,
) -> Accounting:
    """Adopt what can be adopted, kill the rest (blocking) and say how each ends.

    For an attempt not adopted: first the recorded process group (pid and start time
    must match), then every process still carrying the attempt's run marker: that also
    finds an agent whose pid never reached the journal (a crash right after spawn) and
    what left its group.
    """
    accounting = Accounting()
    lost: list[tuple[AttemptRecord, str]] = []
    for attempt in list(state.running.values()):
        note = "the orchestrator stopped before the attempt ended"
        try:
            leftover = find(attempt)
        except TrafficControlError as exc:  # a malformed file: the attempt's end is unknown
            log.warning("leftover_unreadable attempt=%s error=%s", attempt.id, exc.message)
            leftover = None
            note += f"; its supervisor's files could not be used ({exc.message})"
        if leftover is not None:
            accounting.adopt.append((attempt.id, leftover))
            continue
        killed = (
            attempt.pid is not None
            and attempt.pgid is not None
            and kill_leftover(attempt.pid, attempt.pgid, attempt.create_time or 0.0)
        )
        if killed:
            note += "; its leftover process group was killed"
        lost.append((attempt, note))
    # One scan of the processes for every lost attempt's marker (a scan costs ~1 ms).
    marked = kill_marked([attempt.log_path for attempt, _ in lost]) if lost else set()
    for attempt, note in lost:
        if attempt.log_path in marked:
            note += "; leftover processes carrying its run marker were killed"
        accounting.ends.append(
            AttemptFinished(
                at=now,
                attempt_id=attempt.id,
                outcome=Outcome.INTERRUPTED,
                error=note,
                session_id=attempt.session_id,
            )
        )
    return accounting


def interrupt_leftovers(
    state: State, kill_leftover: LeftoverKiller, now: float, kill_marked: MarkedKiller
) -> list[AttemptFinished]:
    """Kill every leftover agent process (blocking) and return the attempts' ends as
    interrupted; nothing is adopted (a rollback, or agents that cannot outlive us)."""
    return account_for_leftovers(state, kill_leftover, now, kill_marked).ends
