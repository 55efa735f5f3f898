"""The journal conformance suite: what every ``Journal`` implementation must do.

Each check is a plain function taking ``open_journal``, a factory that opens a journal
on one and the same store every time it is called (a SQLite file, a PostgreSQL
database), empty at the start of the check. Run them all with::

    @pytest.mark.parametrize("check", CHECKS, ids=check_id)
    def test_journal(check, open_journal):
        check(open_journal)

The checks close what they open. They use threads where the property is about
concurrency (two appenders, two takers) and assert what must hold whatever the
interleaving; they never sleep. The reference behaviour is ``SqliteJournal``'s.
"""

from __future__ import annotations

import contextlib
import threading
import typing
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import msgspec
from msgspec import inspect as mi

from trafficcontrol.domain.events import (
    AnyEvent,
    OrchestratorStarted,
    OrchestratorStopped,
    StoreOutage,
    TaskWoken,
)
from trafficcontrol.domain.model import TaskId
from trafficcontrol.errors import StoreError
from trafficcontrol.ports import Journal, RequestResult


class ConformingJournal(Journal, Protocol):
    def last_run_clean(self) -> bool | None:
        """Whether the last orchestrator journaled its clean stop (None: none ever ran)."""
        ...


OpenJournal = Callable[[], ConformingJournal]
Check = Callable[[OpenJournal], None]


@contextlib.contextmanager
def _opened(open_journal: OpenJournal) -> Iterator[ConformingJournal]:
    journal = open_journal()
    try:
        yield journal
    finally:
        journal.close()


def _woken(n: int, *, start: int = 0, by: str = "t") -> list[AnyEvent]:
    return [TaskWoken(at=float(i), task_id=TaskId(f"{by}{i}")) for i in range(start, start + n)]


def _started(instance: str = "i1") -> OrchestratorStarted:
    return OrchestratorStarted(at=1.0, instance=instance, pid=42, previous_clean=False)


def _stopped(instance: str = "i1") -> OrchestratorStopped:
    return OrchestratorStopped(at=2.0, instance=instance)


# -- events -------------------------------------------------------------------------------
def sample_events() -> list[AnyEvent]:
    """One event of every type in ``AnyEvent`` with only its required fields, and one
    with every field set where placeholder values pass the type's validation. Built
    from the types themselves, so a new event type is covered without an edit here."""
    events: list[AnyEvent] = []
    for cls in typing.get_args(AnyEvent):
        info = mi.type_info(cls)
        events.append(msgspec.convert(_sample(info, full=False), cls))
        # A constrained field (a timezone, a rate in (0, 1]) may refuse the placeholders.
        with contextlib.suppress(msgspec.ValidationError):
            events.append(msgspec.convert(_sample(info, full=True), cls))
    return events


def _sample(t: mi.Type, *, full: bool) -> object:
    """A builtin value that ``msgspec.convert`` accepts as type ``t``."""
    if isinstance(t, mi.StructType):
        return {f.encode_name: _sample(f.type, full=full) for f in t.fields if f.required or full}
    if isinstance(t, mi.UnionType):
        return _sample(next(x for x in t.types if not isinstance(x, mi.NoneType)), full=full)
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        return [_sample(t.item_type, full=full)]
    if isinstance(t, mi.TupleType):
        return [_sample(x, full=full) for x in t.item_types]
    if isinstance(t, mi.DictType):
        return {_sample(t.key_type, full=full): _sample(t.value_type, full=full)}
    if isinstance(t, mi.EnumType):
        return next(iter(t.cls)).value
    if isinstance(t, mi.LiteralType):
        return t.values[0]
    scalars: dict[type[mi.Type], object] = {
        mi.IntType: 7,
        mi.FloatType: 1.5,
        mi.StrType: "x ü \"'",
        mi.BoolType: True,
        mi.NoneType: None,
        mi.AnyType: "any",
        mi.BytesType: "AAE=",
    }
    if type(t) in scalars:
        return scalars[type(t)]
    raise TypeError(f"no sample value for {t!r}: teach journal_conformance._sample")


# -- checks ---------------------------------------------------------------------------------
def check_round_trip_of_every_event_type(open_journal: OpenJournal) -> None:
    events = sample_events()
    with _opened(open_journal) as journal:
        assert journal.append(events) == len(events)
        assert list(journal.read()) == list(enumerate(events, start=1))


def check_seq_is_contiguous_from_one(open_journal: OpenJournal) -> None:
    with _opened(open_journal) as journal:
        assert journal.last_seq() == 0
        assert list(journal.read()) == []
        assert journal.append(_woken(3)) == 3
        assert journal.append(_woken(1, start=3)) == 4
        assert journal.append([]) == 4  # nothing appended: the last seq, unchanged
        assert journal.append(_woken(2, start=4), fence=None) == 6
        assert journal.last_seq() == 6
        assert list(journal.read()) == list(enumerate(_woken(6), start=1))


def check_read_after(open_journal: OpenJournal) -> None:
    with _opened(open_journal) as journal:
        journal.append(_woken(5))
        assert [seq for seq, _ in journal.read(after=3)] == [4, 5]
        assert [e for _, e in journal.read(after=2)] == _woken(3, start=2)
        assert list(journal.read(after=5)) == []
        assert list(journal.read(after=99)) == []
        reader = journal.read(after=1)
        assert next(reader) == (2, _woken(1, start=1)[0])
        journal.append(_woken(1, start=5))  # an append between two reads of one iterator
        assert [seq for seq, _ in reader][:3] == [3, 4, 5]


def check_last_run_clean(open_journal: OpenJournal) -> None:
    with _opened(open_journal) as journal:
        assert journal.last_run_clean() is None  # nothing ever ran
        journal.append(_woken(2))
        assert journal.last_run_clean() is None
        journal.append([_started()])
        assert journal.last_run_clean() is False
        journal.append(_woken(1))
        assert journal.last_run_clean() is False  # other events do not change it
        journal.append([_stopped()])
        assert journal.last_run_clean() is True
        journal.append([_stopped(), _started("i2")])  # the batch's last one counts
        assert journal.last_run_clean() is False
        journal.append([_started("i3"), *_woken(1), _stopped("i3"), *_woken(1)])
        assert journal.last_run_clean() is True
    with _opened(open_journal) as reopened:
        assert reopened.last_run_clean() is True


def check_request_inbox(open_journal: OpenJournal) -> None:
    body = bytes(range(256))
    with _opened(open_journal) as journal:
        assert journal.take_requests() == []
        first = journal.post_request("submit", body)
        second = journal.post_request("cancel", b"")
        assert first < second
        assert journal.request_result(first) is None  # not answered yet
        taken = journal.take_requests()
        assert [(r.id, r.kind, r.body) for r in taken] == [
            (first, "submit", body),
            (second, "cancel", b""),
        ]
        assert journal.take_requests() == []  # each request is taken once
        third = journal.post_request("retry", b"{}")
        assert [r.id for r in journal.take_requests()] == [third]
        assert journal.request_result(first) is None  # taken is not answered
        answer = RequestResult(ok=False, message="refused: ü", details=["a", "b"])
        journal.finish_request(first, answer)
        journal.finish_request(third, RequestResult(ok=True, message="done"))
        assert journal.request_result(first) == answer
        assert journal.request_result(second) is None
        assert journal.request_result(third) == RequestResult(ok=True, message="done")
        assert journal.request_result(10_000) is None  # unknown: no answer, no error
        journal.finish_request(10_000, answer)  # unknown: nothing to answer, no error
        assert journal.last_seq() == 0  # the inbox is not the journal


def check_concurrent_takers_never_share_a_request(open_journal: OpenJournal) -> None:
    posts = 60
    with (
        _opened(open_journal) as poster,
        _opened(open_journal) as a,
        _opened(open_journal) as b,
    ):
        done = threading.Event()

        def post() -> list[int]:
            try:
                return [poster.post_request("k", str(i).encode()) for i in range(posts)]
            finally:
                done.set()

        def take(journal: ConformingJournal) -> list[int]:
            got: list[int] = []
            while True:
                finished = done.is_set()  # read before taking: nothing is left behind
                ids = [r.id for r in journal.take_requests()]
                assert ids == sorted(ids)  # oldest first
                got += ids
                if finished and not ids:
                    return got

        with ThreadPoolExecutor(3) as pool:
            posted = pool.submit(post)
            takers = [pool.submit(take, a), pool.submit(take, b)]
            ids = posted.result()
            taken = [t.result() for t in takers]
        everything = taken[0] + taken[1]
        assert sorted(everything) == sorted(ids)  # all taken, none twice
        assert len(set(everything)) == posts


def check_two_journals_share_the_store(open_journal: OpenJournal) -> None:
    with _opened(open_journal) as a, _opened(open_journal) as b:
        a.append(_woken(2))
        assert [e for _, e in b.read()] == _woken(2)
        assert b.append(_woken(1, start=2)) == 3
        assert a.last_seq() == 3
        assert [e for _, e in a.read(after=2)] == _woken(1, start=2)
        b.append([_started()])
        assert a.last_run_clean() is False
        request = b.post_request("submit", b"x")  # a CLI posts, the orchestrator takes
        assert [r.id for r in a.take_requests()] == [request]
        assert b.take_requests() == []
        a.finish_request(request, RequestResult(ok=True, message="ok", details=["d"]))
        assert b.request_result(request) == RequestResult(ok=True, message="ok", details=["d"])


def check_concurrent_appenders_stay_gap_free(open_journal: OpenJournal) -> None:
    writers, appends, size = 3, 15, 4
    journals = [open_journal() for _ in range(writers)]
    try:
        start = threading.Barrier(writers)

        def write(w: int) -> list[int]:
            start.wait()
            return [
                journals[w].append(_woken(size, start=i * size, by=f"w{w}-"))
                for i in range(appends)
            ]

        with ThreadPoolExecutor(writers) as pool:
            futures = [pool.submit(write, w) for w in range(writers)]
            lasts = [future.result() for future in futures]
        read = list(journals[0].read())
    finally:
        for journal in journals:
            journal.close()
    total = writers * appends * size
    assert [seq for seq, _ in read] == list(range(1, total + 1))
    for w, ends in enumerate(lasts):
        assert ends == sorted(ends)
        for i, last in enumerate(ends):  # each batch whole, in order, where append said
            batch = [event for _, event in read[last - size : last]]
            assert batch == _woken(size, start=i * size, by=f"w{w}-")


def check_reopened_journal_keeps_everything(open_journal: OpenJournal) -> None:
    with _opened(open_journal) as journal:
        journal.append([_started(), *_woken(2)])
        journal.post_request("submit", b"x")
    with _opened(open_journal) as journal:
        assert journal.last_seq() == 3
        assert [e for _, e in journal.read()] == [_started(), *_woken(2)]
        assert journal.append(_woken(1, start=2)) == 4
        assert [r.kind for r in journal.take_requests()] == ["submit"]


def check_closed_journal_raises_store_error(open_journal: OpenJournal) -> None:
    journal = open_journal()
    journal.append(_woken(1))
    journal.close()
    outage = StoreOutage(at=1.0, started_at=0.5, buffered=1, errors=1, last_error="x")
    for attempt in (lambda: journal.append([outage]), lambda: list(journal.read())):
        try:
            attempt()
        except StoreError:
            continue
        raise AssertionError("a closed journal did not raise StoreError")


CHECKS: tuple[Check, ...] = (
    check_round_trip_of_every_event_type,
    check_seq_is_contiguous_from_one,
    check_read_after,
    check_last_run_clean,
    check_request_inbox,
    check_concurrent_takers_never_share_a_request,
    check_two_journals_share_the_store,
    check_concurrent_appenders_stay_gap_free,
    check_reopened_journal_keeps_everything,
    check_closed_journal_raises_store_error,
)


def check_id(check: Check) -> str:
    return check.__name__.removeprefix("check_")
