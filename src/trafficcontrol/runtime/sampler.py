"""``tc profile --sample``: pyinstrument on the orchestrator's own loop thread.

Design note. A sample is asked for through the request table (``SampleRequest``), so
it needs no HTTP server and reaches whichever ``tc run`` holds the home. Serving it
only starts the profiler and schedules its end: the loop goes on turning while it is
sampled (that is the point), the answer says where the report will be, and after
``seconds`` the profiler stops and the report is rendered on a thread (HTML and a
speedscope JSON), written atomically. One sample at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a sample is asked for: every tc run would pay 8 ms
    from pyinstrument import Profiler
    from pyinstrument.session import Session

log = logging.getLogger(__name__)

MAX_SECONDS = 600.0
INTERVAL_S = 0.001


class Sampler:
    """Samples the calling thread's stacks for a while, then writes the report."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._running: asyncio.Task[None] | None = None

    def start(self, seconds: float) -> tuple[Path, Path]:
        """Start sampling; the (HTML, speedscope) files it will write. Raises
        ``ValueError`` when ``seconds`` is out of range or a sample already runs."""
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be > 0 and <= {MAX_SECONDS:g}, not {seconds:g}")
        if self._running is not None and not self._running.done():
            raise ValueError("a sample is already being taken")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        html = self.directory / f"sample-{stamp}.html"
        speedscope = self.directory / f"sample-{stamp}.speedscope.json"
        from pyinstrument import Profiler

        profiler = Profiler(interval=INTERVAL_S, async_mode="disabled")
        profiler.start()
        self._running = asyncio.create_task(
            self._finish(profiler, seconds, html, speedscope), name="sample"
        )
        return html, speedscope

    async def _finish(
        self, profiler: Profiler, seconds: float, html: Path, speedscope: Path
    ) -> None:
        try:
            await asyncio.sleep(seconds)  # the sample's length itself
        finally:
            session = profiler.stop()
        try:
            await asyncio.to_thread(_write, session, html, speedscope)
        except OSError as exc:
            log.warning("sample_not_written error=%s", exc)


def _write(session: Session, html: Path, speedscope: Path) -> None:
    from pyinstrument.renderers import HTMLRenderer, SpeedscopeRenderer

    html.parent.mkdir(parents=True, exist_ok=True)
    for path, renderer in (
        (speedscope, SpeedscopeRenderer()),
        (html, HTMLRenderer()),  # last: its appearance says the report is complete
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(renderer.render(session), encoding="utf-8")
        tmp.replace(path)
