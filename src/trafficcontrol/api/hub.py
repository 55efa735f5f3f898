"""Journal events pushed to open pages: a bounded ring of recent ones and a queue per
subscriber.

Design note. ``publish`` runs on the loop right after an append returns (a
``LoopStats`` commit listener, or the journal follower of ``tc serve``): it only
appends references to a ring and to each subscriber's bounded queue, nothing is
encoded until a subscriber's stream sends it. A subscriber that falls a whole queue
behind is dropped with a ``resync`` mark rather than slowing the loop or growing
without bound; its page reloads its data and subscribes again. What is sent is a
summary of each event (its type, sequence number and scalar fields), never a whole
submission or snapshot.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import msgspec

from trafficcontrol.domain.events import AnyEvent

RECENT = 1000
"""Events kept for ``/api/events`` and for a page that reconnects."""
QUEUE = 2000
"""Events a subscriber may be behind before it is dropped (``resync``)."""
_SCALARS = (str, int, float, bool)


def summary(seq: int, event: AnyEvent) -> dict[str, Any]:
    """The event's type, sequence number and scalar fields (module notes)."""
    out: dict[str, Any] = {"seq": seq, "type": type(event).__struct_config__.tag}
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if isinstance(value, _SCALARS) or value is None:
            if value is not None:
                out[name] = value
        elif (
            isinstance(value, tuple) and all(isinstance(v, str) for v in value) and len(value) <= 20
        ):
            out[name] = list(value)
    return out


class Subscriber:
    """One open stream's queue of (seq, event); ``lost`` once it fell too far behind."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[tuple[int, AnyEvent]] = asyncio.Queue(size)
        self.lost = False
        self.wake = asyncio.Event()

    def offer(self, item: tuple[int, AnyEvent]) -> None:
        if self.lost:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.lost = True
        self.wake.set()


class EventHub:
    """Fan-out of committed journal events (module notes)."""

    def __init__(self, *, recent: int = RECENT, queue: int = QUEUE) -> None:
        self._recent: deque[tuple[int, AnyEvent]] = deque(maxlen=recent)
        self._subscribers: set[Subscriber] = set()
        self._queue = queue
        self.published = 0
        self.closed = False

    def publish(self, first_seq: int, events: list[AnyEvent]) -> None:
        """A committed batch: ``events[i]`` has sequence number ``first_seq + i``."""
        for offset, event in enumerate(events):
            item = (first_seq + offset, event)
            self._recent.append(item)
            for subscriber in self._subscribers:
                subscriber.offer(item)
        self.published += len(events)

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber(self._queue)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def recent(self, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Summaries of the newest ``limit`` events after ``after``, oldest first."""
        picked = [item for item in self._recent if item[0] > after][-limit:]
        return [summary(seq, event) for seq, event in picked]

    def close(self) -> None:
        """Ends every stream (the server is stopping)."""
        self.closed = True
        for subscriber in self._subscribers:
            subscriber.wake.set()


def encode(data: Any) -> str:
    return msgspec.json.encode(data).decode()
