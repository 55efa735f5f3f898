"""The dashboard's pages: server-rendered HTML (Jinja2) that a small script keeps live
from ``/api/events/stream``.

Design note. Every page is whole when served — counts, tables and charts are rendered
here from the folded state, so a page works without its script and a test can read it
as text. The script (``static/live.js``) only subscribes to the stream and refreshes
what an event changed. Static files ship inside the package: nothing is fetched from
elsewhere at run time and there is no build step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.staticfiles import StaticFiles

from trafficcontrol import __version__
from trafficcontrol.api.routes import Context
from trafficcontrol.cli.formats import duration
from trafficcontrol.domain.model import TaskState

HERE = Path(__file__).parent
_ENV = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
STATE_ORDER = tuple(s.value for s in TaskState)


def static_files() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")


def render(name: str, **values: Any) -> HTMLResponse:
    page = _ENV.get_template(name).render(version=__version__, **values)
    return HTMLResponse(page, headers={"cache-control": "no-store"})


def routes(ctx: Context) -> list[BaseRoute]:
    async def overview(_request: Request) -> Response:
        state = ctx.source.state
        now = time.time()
        counts = {s: state.counts[TaskState(s)] for s in STATE_ORDER}
        total = len(state.tasks)
        finished = counts["done"] + counts["failed"] + counts["cancelled"]
        running = [
            {
                "attempt": a.id,
                "task": a.task_id,
                "backend": a.backend,
                "model": a.model or "",
                "elapsed": duration(now - a.started_at),
            }
            for a in state.running.values()
        ]
        return render(
            "overview.html",
            page="overview",
            role=ctx.source.role,
            seq=state.seq,
            counts=counts,
            total=total,
            progress=0 if not total else round(100 * finished / total),
            running=running,
        )

    return [Route("/", overview, name="overview")]
