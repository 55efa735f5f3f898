"""Attempts queued for workers on other machines, in PostgreSQL (``ports.WorkQueue``).

Design note. The leader queues an attempt it decided to run on a worker (one row of
``work``, migration 0003) and follows it; a ``tc worker`` claims rows of the projects
it has checkouts for with ``FOR UPDATE SKIP LOCKED`` (two workers never claim one row,
nor wait for each other), runs them, appends what their agents report to
``work_reports`` and heartbeats. Every decision about time is the store's clock: an
attempt whose worker has been silent too long is given up by the leader in one
``UPDATE ... WHERE state <> 'done' AND seen_at < ...``, so a worker finishing at the
same moment either lands its result first (the leader reads it) or finds its
``finish`` refused (its result is dropped: the attempt was retried). Requests and
results are msgspec JSON (paths as strings).

One connection, one thread at a time, as the journal's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from trafficcontrol.adapters.stores.pg_schema import Connection, OneConnection, parse_url
from trafficcontrol.ports import (
    AgentRequest,
    AgentResult,
    WorkerInfo,
    WorkProgress,
    WorkReport,
)

T = TypeVar("T")
WORK_CHANNEL = "tc_work"
"""NOTIFY'd when work is queued (workers claim at once) or reported (the leader reads)."""


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise NotImplementedError(type(obj))


def _dec_hook(kind: type, obj: Any) -> Any:
    if kind is Path:
        return Path(obj)
    raise NotImplementedError(kind)


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_requests = msgspec.json.Decoder(AgentRequest, dec_hook=_dec_hook)
_results = msgspec.json.Decoder(AgentResult, dec_hook=_dec_hook)
_reports = msgspec.json.Decoder(WorkReport, dec_hook=_dec_hook)

_PUT = f"""
WITH queued AS (
    INSERT INTO work (attempt_id, project, backend, log_path, request, epoch)
    VALUES (%s, %s, %s, %s, %s, %s)
    ON CONFLICT (attempt_id) DO NOTHING
    RETURNING attempt_id
)
SELECT pg_notify('{WORK_CHANNEL}', attempt_id) FROM queued
"""
_PROGRESS = """
SELECT state, worker, extract(epoch FROM clock_timestamp() - seen_at)::float8, result
FROM work WHERE attempt_id = %s
"""
_GIVE_UP = """
UPDATE work SET state = 'done', result = %s
WHERE attempt_id = %s AND state <> 'done'
    AND (seen_at IS NULL OR seen_at < clock_timestamp() - make_interval(secs => %s))
RETURNING attempt_id
"""
_CLAIM = """
UPDATE work SET state = 'running', worker = %(me)s, claimed_at = clock_timestamp(),
    seen_at = clock_timestamp()
WHERE attempt_id IN (
    SELECT attempt_id FROM work
    WHERE state = 'queued' AND project = ANY(%(projects)s) AND backend = ANY(%(backends)s)
    ORDER BY queued_at LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
)
RETURNING backend, request
"""
_BEAT = """
WITH me AS (
    UPDATE workers SET seen_at = clock_timestamp(), running = cardinality(%(ids)s::text[])
    WHERE host_id = %(me)s
), theirs AS (
    UPDATE work SET seen_at = clock_timestamp()
    WHERE attempt_id = ANY(%(ids)s) AND worker = %(me)s AND state = 'running'
    RETURNING attempt_id, stop
)
SELECT attempt_id, stop FROM theirs WHERE stop IS NOT NULL
"""
_REGISTER = """
INSERT INTO workers AS w (host_id, projects, max_agents, version) VALUES (%s, %s, %s, %s)
ON CONFLICT (host_id) DO UPDATE SET projects = excluded.projects,
    max_agents = excluded.max_agents, version = excluded.version,
    started_at = clock_timestamp(), seen_at = clock_timestamp(), running = 0
"""
_WORKERS = """
SELECT host_id, projects, max_agents, running, version,
    extract(epoch FROM clock_timestamp() - seen_at)::float8
FROM workers ORDER BY host_id
"""


class PgWorkQueue:
    def __init__(self, url: str, *, busy_timeout_s: float = 10.0) -> None:
        self._target = parse_url(url, busy_timeout_s=busy_timeout_s)
        self.where = self._target.where
        self._db = OneConnection(self._target, "the work queue is")

    # -- the leader's side ---------------------------------------------------------------
    def put(self, request: AgentRequest, backend: str, epoch: int) -> None:
        params = (
            request.attempt_id,
            request.project_id,
            backend,
            str(request.log_path),
            _encoder.encode(request),
            epoch,
        )
        self._run("queue an attempt for the workers", lambda c: c.execute(_PUT, params).fetchall())

    def progress(self, attempt_id: str, after: int) -> WorkProgress | None:
        def read(conn: Connection) -> WorkProgress | None:
            row = conn.execute(_PROGRESS, (attempt_id,), binary=True).fetchone()
            if row is None:
                return None
            reports = conn.execute(
                "SELECT n, body FROM work_reports WHERE attempt_id = %s AND n > %s ORDER BY n",
                (attempt_id, after),
                binary=True,
            ).fetchall()
            result = None if row[3] is None else _results.decode(row[3])
            return WorkProgress(
                reports=[(int(n), _reports.decode(body)) for n, body in reports],
                state=row[0],
                worker=row[1],
                silent_s=row[2],
                result=result,
            )

        return self._run("read an attempt's progress", read)

    def ask_stop(self, attempt_id: str, reason: str) -> None:
        self._run(
            "ask a worker to stop an attempt",
            lambda c: c.execute(
                "UPDATE work SET stop = %s WHERE attempt_id = %s AND state <> 'done'",
                (reason, attempt_id),
            ),
        )

    def give_up(self, attempt_id: str, result: AgentResult, silent_s: float) -> AgentResult | None:
        def work(conn: Connection) -> AgentResult | None:
            with conn.transaction():
                given = conn.execute(
                    _GIVE_UP, (_encoder.encode(result), attempt_id, silent_s)
                ).fetchone()
                if given is not None:
                    return result
                row = conn.execute(
                    "SELECT state, result FROM work WHERE attempt_id = %s", (attempt_id,)
                ).fetchone()
            if row is not None and row[0] == "done" and row[1] is not None:
                return _results.decode(row[1])
            return None

        return self._run("give up on an attempt", work)

    def find(self, log_path: str) -> tuple[str, str] | None:
        row = self._run(
            "find an attempt queued for workers",
            lambda c: c.execute(
                "SELECT attempt_id, state FROM work WHERE log_path = %s", (log_path,)
            ).fetchone(),
        )
        return None if row is None else (str(row[0]), str(row[1]))

    def workers(self) -> list[WorkerInfo]:
        rows = self._run("read the workers", lambda c: c.execute(_WORKERS).fetchall())
        return [WorkerInfo(r[0], list(r[1]), int(r[2]), int(r[3]), r[4], float(r[5])) for r in rows]

    # -- the worker's side ---------------------------------------------------------------
    def register(self, host_id: str, projects: list[str], max_agents: int, version: str) -> None:
        params = (host_id, projects, max_agents, version)
        self._run("register a worker", lambda c: c.execute(_REGISTER, params))

    def claim(
        self, host_id: str, projects: list[str], backends: list[str], n: int
    ) -> list[tuple[str, AgentRequest]]:
        if n <= 0:
            return []
        params = {"me": host_id, "projects": projects, "backends": backends, "n": n}
        rows = self._run(
            "claim queued attempts", lambda c: c.execute(_CLAIM, params, binary=True).fetchall()
        )
        return [(backend, _requests.decode(body)) for backend, body in rows]

    def report(self, attempt_id: str, n: int, report: WorkReport) -> None:
        params = (attempt_id, n, _encoder.encode(report))
        self._run(
            "report an attempt's progress",
            lambda c: c.execute(
                "INSERT INTO work_reports (attempt_id, n, body) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                params,
            ),
        )

    def beat(self, host_id: str, attempt_ids: list[str]) -> dict[str, str]:
        params = {"me": host_id, "ids": attempt_ids}
        rows = self._run("heartbeat", lambda c: c.execute(_BEAT, params).fetchall())
        return {r[0]: r[1] for r in rows}

    def finish(self, host_id: str, attempt_id: str, result: AgentResult) -> bool:
        row = self._run(
            "finish an attempt",
            lambda c: c.execute(
                "UPDATE work SET state = 'done', result = %s, seen_at = clock_timestamp()"
                " WHERE attempt_id = %s AND worker = %s AND state = 'running'"
                " RETURNING attempt_id",
                (_encoder.encode(result), attempt_id, host_id),
            ).fetchone(),
        )
        return row is not None

    def mine(self, host_id: str) -> list[AgentRequest]:
        rows = self._run(
            "read a worker's attempts",
            lambda c: c.execute(
                "SELECT request FROM work WHERE worker = %s AND state = 'running'",
                (host_id,),
                binary=True,
            ).fetchall(),
        )
        return [_requests.decode(r[0]) for r in rows]

    def close(self) -> None:
        self._db.close()

    def _run(self, doing: str, work: Callable[[Connection], T]) -> T:
        return self._db.run(doing, work)
