"""What a start does about attempts a previous orchestrator left running.

They are accounted for one by one: a process group that outlived its orchestrator
(found by the pid, process-group id and start time the journal recorded) is killed
— never adopted blindly: an attempt must not run twice at once — and the attempt is
journaled as interrupted, so its task follows its ``on_interrupt`` policy (resume
the same Claude Code session, restart, or fail).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from trafficcontrol.domain.events import AttemptFinished
from trafficcontrol.domain.model import Outcome
from trafficcontrol.domain.state import State

LeftoverKiller = Callable[[int, int, float], bool]
MarkedKiller = Callable[[Collection[str]], set[str]]
"""Kills the processes that carry one of the given run markers (attempts' log paths);
returns the markers that had processes."""


def interrupt_leftovers(
    state: State, kill_leftover: LeftoverKiller, now: float, kill_marked: MarkedKiller
) -> list[AttemptFinished]:
    """Kill leftover agent processes (blocking) and return their attempts' ends.

    First the recorded process groups (pid and start time must match), then every
    process still carrying an attempt's run marker: that also finds an agent whose pid
    never reached the journal (a crash right after spawn) and what left its group.
    """
    ends = []
    for attempt in list(state.running.values()):
        note = "the orchestrator stopped before the attempt ended"
        killed = (
            attempt.pid is not None
            and attempt.pgid is not None
            and kill_leftover(attempt.pid, attempt.pgid, attempt.create_time or 0.0)
        )
        if killed:
            note += "; its leftover process group was killed"
        if kill_marked([attempt.log_path]):
            note += "; leftover processes carrying its run marker were killed"
        ends.append(
            AttemptFinished(
                at=now,
                attempt_id=attempt.id,
                outcome=Outcome.INTERRUPTED,
                error=note,
                session_id=attempt.session_id,
            )
        )
    return ends
