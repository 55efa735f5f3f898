"""Taking snapshots without pausing the loop for long.

The state is encoded on the loop (``snapshot.encode`` returns bytes at once: a
consistent copy that later events do not touch); compressing, checksumming and the
atomic write happen in a thread. One snapshot at a time: a periodic one that comes
due while another is being written waits for the next turn. A snapshot that cannot
be written is logged and the orchestrator goes on: snapshots only shorten replay,
the journal is the truth.
"""

from __future__ import annotations

import asyncio
import logging

from trafficcontrol.domain import snapshot
from trafficcontrol.domain.state import State
from trafficcontrol.errors import TrafficControlError
from trafficcontrol.ports import Clock, SnapshotFiles, SnapshotRecord
from trafficcontrol.runtime.stats import Spans

log = logging.getLogger(__name__)


class Snapshotter:
    def __init__(
        self, files: SnapshotFiles, *, clock: Clock, interval_s: float, instance: str
    ) -> None:
        self.files = files
        self._clock = clock
        self._interval_s = interval_s
        self._instance = instance
        self._last = clock.monotonic()
        self._writing: asyncio.Task[SnapshotRecord | None] | None = None
        self.last_error: str | None = None
        self.spans: Spans | None = None
        """Where the encoding's time is recorded (set by the orchestrator)."""

    def due(self) -> bool:
        return self._clock.monotonic() - self._last >= self._interval_s

    def maybe_start(self, state: State) -> None:
        """Start a periodic snapshot in the background when one is due.

        The state is encoded here, synchronously: the loop calls this between turns,
        when everything folded is also committed. Encoding later, inside the task,
        could capture events folded but not yet durable.
        """
        if self._writing is None and self.due():
            self._writing = asyncio.create_task(self._write(*self._encode(state)), name="snapshot")
            self._writing.add_done_callback(self._written)

    def _written(self, _task: asyncio.Task[SnapshotRecord | None]) -> None:
        self._writing = None

    async def take(self, state: State) -> SnapshotRecord | None:
        """Snapshot now (call between turns, when the state is all committed); None
        (and ``last_error`` set) when it could not be written."""
        return await self._write(*self._encode(state))

    def _encode(self, state: State) -> tuple[bytes, int]:
        self._last = started = self._clock.monotonic()
        payload = snapshot.encode(state)
        if self.spans is not None:  # on the loop: what a snapshot holds the loop up for
            self.spans.observe("snapshot", started, self._clock.monotonic())
        return payload, state.seq

    async def _write(self, payload: bytes, seq: int) -> SnapshotRecord | None:
        try:
            record = await asyncio.to_thread(
                self.files.write,
                payload,
                schema=snapshot.SCHEMA,
                seq=seq,
                instance=self._instance,
                now=self._clock.now(),
            )
        except TrafficControlError as exc:
            self.last_error = exc.message
            log.warning("snapshot_failed error=%s", exc.message)
            return None
        self.last_error = None
        log.info("snapshot_written version=%s seq=%s", record.version, record.seq)
        return record

    async def drain(self) -> None:
        """Wait for a snapshot being written."""
        if self._writing is not None:
            await asyncio.wait({self._writing})
