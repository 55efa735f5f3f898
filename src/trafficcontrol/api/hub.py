"""Journal events pushed to open pages: a bounded ring of recent batches, and a cursor
per subscriber.

Design note. ``publish`` runs on the loop right after an append returns (a
``LoopStats`` commit listener, or ``tc serve``'s journal follower), so it does O(1)
work per *batch*, whatever its size: it appends a reference to the batch to a ring and
sets each subscriber's wake flag. Nothing is copied, queued per event or encoded
there. A subscriber keeps only the sequence number it has sent up to; its stream wakes
and, unless it sent a message less than ``COALESCE_S`` ago (a burst: let more commits
gather, well under the 250 ms a page may lag), reads what the ring holds after its
cursor at once and sends one message. A
subscriber whose cursor fell out of the ring is told so (below) rather than slowing
the loop or growing a queue. What is sent is a summary of the
newest ``MAX_SUMMARIES`` events of the burst (type, sequence number, scalar fields)
and the ids of every task and attempt the burst touched (up to ``MAX_TOUCHED`` events;
past that, ``null``: refresh everything), never a whole submission or snapshot. A
stream whose cursor fell out of the ring is told ``gap`` and does the same: it never
needs old events to be right, only the state it can fetch. Measured with
``./scripts/bench http``: a queue item per event cost the scheduling bench 19% of
its throughput with one page open; batches and a cursor cost what the bench README
reports.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import msgspec

from trafficcontrol.domain.events import AnyEvent
from trafficcontrol.domain.model import TaskState
from trafficcontrol.domain.state import State

RECENT = 10_000
"""Events (at least) kept for ``/api/events`` and for streams a little behind: more
than 50 ms of a saturated loop's events (references only, no copies)."""
COALESCE_S = 0.05
"""How long a woken stream lets more commits gather before it sends."""
MAX_SUMMARIES = 20
"""Event summaries per message; the rest of a burst is counted in ``dropped``. Pages
refetch what they show, so a short tail is enough; 50 cost the bench's client (on the
same 2 cores) enough parsing to show in the orchestrator's throughput."""
MAX_TOUCHED = 500
"""Past this many events in one message the ids they touched are not listed
(``tasks: null``): the page refreshes everything instead of looking each one up."""
_SCALARS = (str, int, float, bool)


def counts_of(state: State) -> dict[str, int]:
    """Every state's count, zeros included (a page must see a count fall to 0)."""
    counts = state.counts
    return {s.value: counts[s] for s in TaskState}


def summary(seq: int, event: AnyEvent) -> dict[str, Any]:
    """The event's type, sequence number and scalar fields (module notes)."""
    out: dict[str, Any] = {"seq": seq, "type": type(event).__struct_config__.tag}
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if isinstance(value, _SCALARS):
            out[name] = value
        elif (
            isinstance(value, tuple) and len(value) <= 20 and all(isinstance(v, str) for v in value)
        ):
            out[name] = list(value)
    return out


def tail(batches: list[tuple[int, list[AnyEvent]]], n: int) -> list[tuple[int, AnyEvent]]:
    """The last ``n`` events of ``batches`` with their sequence numbers, oldest first."""
    out: list[tuple[int, AnyEvent]] = []
    for first, events in reversed(batches):
        for i in range(len(events) - 1, -1, -1):
            if len(out) >= n:
                out.reverse()
                return out
            out.append((first + i, events[i]))
    out.reverse()
    return out


def touched(batches: list[tuple[int, list[AnyEvent]]]) -> tuple[list[str], list[str]]:
    """(task ids, attempt ids) the events name, each once, in order."""
    tasks: dict[str, None] = {}
    attempts: dict[str, None] = {}
    for _first, events in batches:
        for event in events:
            task_id = getattr(event, "task_id", None)
            if task_id is not None:
                tasks[task_id] = None
            attempt_id = getattr(event, "attempt_id", None)
            if attempt_id is not None:
                attempts[attempt_id] = None
                tasks[attempt_id.rpartition("#")[0]] = None
    return list(tasks), list(attempts)


class Subscriber:
    """One open stream: the last sequence number it sent, and its wake flag."""

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        self.wake = asyncio.Event()


class EventHub:
    """Fan-out of committed journal batches (module notes)."""

    def __init__(self, *, recent: int = RECENT) -> None:
        self._batches: deque[tuple[int, list[AnyEvent]]] = deque()
        self._held = 0
        self._recent = recent
        self._subscribers: set[Subscriber] = set()
        self.last_seq = 0
        self.closed = False

    def publish(self, first_seq: int, events: list[AnyEvent]) -> None:
        """A committed batch: ``events[i]`` has sequence number ``first_seq + i``."""
        if not events:
            return
        self._batches.append((first_seq, events))
        self._held += len(events)
        while self._held - len(self._batches[0][1]) >= self._recent:
            self._held -= len(self._batches.popleft()[1])
        self.last_seq = first_seq + len(events) - 1
        for subscriber in self._subscribers:
            subscriber.wake.set()

    def subscribe(self, cursor: int) -> Subscriber:
        """A subscriber that has seen everything up to ``cursor``."""
        subscriber = Subscriber(cursor)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def since(self, seq: int) -> list[tuple[int, list[AnyEvent]]] | None:
        """The held batches after ``seq`` as (first seq, events), oldest first, the first
        one trimmed to start after ``seq``; None when some events after ``seq`` are no
        longer held (the ring moved on). Batches are not copied but the trimmed one."""
        picked: list[tuple[int, list[AnyEvent]]] = []
        for first, events in reversed(self._batches):
            if first + len(events) - 1 <= seq:
                break
            picked.append((first, events))
        else:
            if picked and picked[-1][0] > seq + 1:
                return None
        picked.reverse()
        if picked and picked[0][0] <= seq:
            first, events = picked[0]
            picked[0] = (seq + 1, events[seq + 1 - first :])
        return picked

    def held(self) -> list[tuple[int, list[AnyEvent]]]:
        """Every batch the ring holds, oldest first."""
        return list(self._batches)

    def recent(self, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Summaries of the newest ``limit`` held events after ``after``, oldest first."""
        picked: list[tuple[int, AnyEvent]] = []
        for first, events in reversed(self._batches):
            for i in range(len(events) - 1, -1, -1):
                seq = first + i
                if seq <= after or len(picked) >= limit:
                    break
                picked.append((seq, events[i]))
            if len(picked) >= limit or first <= after:
                break
        return [summary(seq, event) for seq, event in reversed(picked)]

    def close(self) -> None:
        """Ends every stream (the server is stopping)."""
        self.closed = True
        for subscriber in self._subscribers:
            subscriber.wake.set()


def encode(data: Any) -> str:
    return msgspec.json.encode(data).decode()
