"""The event hub's ring and cursors: what a stream reads after its cursor, and when it
must resync instead."""

from __future__ import annotations

from trafficcontrol.api.hub import EventHub, summary, tail, touched
from trafficcontrol.domain.events import AnyEvent, TaskCancelRequested
from trafficcontrol.domain.model import TaskId


def batch(*ids: str) -> list[AnyEvent]:
    return [TaskCancelRequested(at=1.0, task_id=TaskId(i)) for i in ids]


def seqs(batches: list[tuple[int, list[AnyEvent]]] | None) -> list[int]:
    assert batches is not None
    return [first + i for first, events in batches for i in range(len(events))]


def test_a_cursor_reads_everything_after_it_across_batches() -> None:
    hub = EventHub(recent=100)
    hub.publish(1, batch("a", "b"))
    hub.publish(3, batch("c"))
    hub.publish(4, batch("d", "e", "f"))
    assert seqs(hub.since(2)) == [3, 4, 5, 6]
    assert seqs(hub.since(0)) == [1, 2, 3, 4, 5, 6]
    assert seqs(hub.since(4)) == [5, 6]  # a batch cut after the cursor
    assert [e.task_id for _f, events in hub.since(4) or [] for e in events] == ["e", "f"]
    assert hub.since(6) == []
    assert [seq for seq, _e in tail(hub.since(0) or [], 4)] == [3, 4, 5, 6]
    assert hub.last_seq == 6


def test_a_cursor_older_than_the_ring_must_resync() -> None:
    hub = EventHub(recent=3)
    for seq in range(1, 11):
        hub.publish(seq, batch(f"t{seq}"))
    assert hub.since(1) is None
    assert seqs(hub.since(8)) == [9, 10]
    assert seqs(hub.held()) == [8, 9, 10]
    assert [e["seq"] for e in hub.recent(limit=2)] == [9, 10]
    assert [e["seq"] for e in hub.recent(after=8, limit=100)] == [9, 10]


def test_publishing_wakes_every_subscriber_once_per_batch() -> None:
    hub = EventHub()
    one, two = hub.subscribe(0), hub.subscribe(0)
    hub.publish(1, batch("a", "b", "c"))
    assert one.wake.is_set() and two.wake.is_set()
    hub.unsubscribe(two)
    one.wake.clear()
    two.wake.clear()
    hub.publish(4, batch("d"))
    assert one.wake.is_set() and not two.wake.is_set()
    hub.close()
    assert hub.closed and one.wake.is_set()


def test_summaries_carry_scalars_and_touched_names_tasks_once() -> None:
    events = batch("a", "b", "a")
    assert summary(1, events[0]) == {
        "seq": 1,
        "type": "task_cancel_requested",
        "at": 1.0,
        "task_id": "a",
        "reason": "cancelled by user",
    }
    assert touched([(1, events)]) == (["a", "b"], [])
