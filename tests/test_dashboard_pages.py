"""The dashboard in a real headless Chromium, against a real ``tc run --http`` (or ``tc
serve``) process.

Each test builds a state home with the shared helpers, starts the real server, opens its
pages in Chromium (Debian's ``chromium`` package, driven by Playwright's sync API) and
reads them as a person would: the counts as text, the DAG's nodes, the capacity
projection. Waiting is always for something the page shows (Playwright's auto-waiting
``expect`` and ``wait_for_function``), never a sleep. Screenshots of every page are saved
to ``$TC_ARTIFACTS`` (else ``<repo>/.artifacts/screenshots``), and the live test writes
how long each pushed journal message took from the event to the open page
(``live_latency.json``; measured and reported, not asserted: see DESIGN's Testing).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from tests.helpers import agent_argv, make_app, project, submit, task
from tests.http_helpers import Served, served
from tests.test_cli_capacity import Scene as CapacityScene
from tests.test_cli_health import Scene as HealthScene
from trafficcontrol.api.pages import figure_text as number
from trafficcontrol.api.pages import percent_text as percent
from trafficcontrol.cli.formats import duration
from trafficcontrol.domain.model import SimSettings

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
STATES = ("pending", "ready", "running", "waiting", "blocked", "done", "failed", "cancelled")


def artefacts() -> Path:
    path = Path(os.environ.get("TC_ARTIFACTS") or REPO / ".artifacts" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Chromium:
    """One headless Chromium for the module, launched on first use: a missing browser
    fails the test that needs it (never a skip), saying how to install it."""

    def __init__(self) -> None:
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    def get(self) -> Browser:
        if self._browser is None:
            if not CHROMIUM.exists():
                pytest.fail(
                    f"{CHROMIUM} is missing: the dashboard tests need Debian's Chromium"
                    " (apt-get install -y chromium)",
                    pytrace=False,
                )
            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox"]
            )
        return self._browser

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._playwright is not None:
            self._playwright.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    chromium = Chromium()
    try:
        yield chromium
    finally:
        chromium.close()


@contextmanager
def opened(
    browser: Chromium, server: Served, path: str = "/", *, status: int = 200
) -> Iterator[Page]:
    """A fresh browser context on ``path``: ``?token=`` once (the server sets the cookie and
    redirects); no script error may happen on the page while it is open."""
    context = browser.get().new_context(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page = context.new_page()

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    network: list[str] = []
    page.on("console", console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: network.append(f"{r.status} {r.request.method} {r.url}"))
    page.on("requestfailed", lambda r: network.append(f"failed {r.url}: {r.failure}"))
    try:
        separator = "&" if "?" in path else "?"
        response = page.goto(f"{server.url}{path}{separator}token={server.token}")
        assert response is not None and response.status == status, response
        assert server.token not in page.url and server.token not in page.content()
        try:
            expect(page.locator("#live")).to_have_text("live")
        except AssertionError as exc:
            said = "".join(server.stderr[-20:])
            shown = f"{exc}\nnetwork:\n" + "\n".join(network) + f"\nconsole: {errors}\n{said}"
            raise AssertionError(shown.replace(server.token, "<token>")) from None
        yield page
        if status != 200:  # the page's own answer is logged as a failed load
            errors = [e for e in errors if f"status of {status}" not in e]
        assert not errors, errors
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    page.screenshot(path=str(artefacts() / f"{name}.png"), full_page=True)


def page_counts(page: Page) -> dict[str, int]:
    return {s: int(page.locator(f'#counts [data-count="{s}"]').inner_text()) for s in STATES}


def html_counts(html: str) -> dict[str, int]:
    """The overview's counts as the server rendered them (no script ran)."""
    section = html[html.index('id="counts"') :]
    found = {m[1]: int(m[2]) for m in re.finditer(r'data-count="(\w+)">(\d+)<', section)}
    return {s: found[s] for s in STATES}


def api_counts(server: Served) -> dict[str, int]:
    counts: dict[str, int] = server.get("/api/status").json()["by_state"]
    return {s: counts.get(s, 0) for s in STATES}


WATCH_JOURNAL = """() => {
  window.__tcMarker = "never reloaded";
  window.__tcSeen = [];
  document.addEventListener("tc:journal", (e) => window.__tcSeen.push(
    {kind: "counts", at: Date.now(), seqs: (e.detail.events || []).map((x) => x.seq)}));
  document.addEventListener("tc:refreshed", () => window.__tcSeen.push(
    {kind: "fragments", at: Date.now(), seq: Number(document.body.dataset.seq)}));
}"""


def latencies(page: Page, server: Served) -> dict[str, Any]:
    """Milliseconds from each event's ``at`` to the page showing it (counts at once, the
    refreshed parts after the debounce and a fetch)."""
    events = {e["seq"]: e["at"] for e in server.get("/api/events?limit=1000").json()["events"]}
    seen = page.evaluate("window.__tcSeen")
    counts = [
        s["at"] - 1000 * events[seq] for s in seen if s["kind"] == "counts" for seq in s["seqs"]
    ]
    fragments = [
        s["at"] - 1000 * max(at for seq, at in events.items() if seq <= s["seq"])
        for s in seen
        if s["kind"] == "fragments" and any(seq <= s["seq"] for seq in events)
    ]
    return {
        "counts_ms": {"n": len(counts), "max": max(counts, default=None)},
        "fragments_ms": {"n": len(fragments), "max": max(fragments, default=None)},
    }


def test_overview_counts_a_real_run_and_shows_journaled_events_live(
    browser: Chromium, tmp_path: Path
) -> None:
    """Six sim tasks run to done, a command agent blocks (running) with two tasks waiting
    on it (pending); the overview says so, first as rendered and then live when the
    blocking task is cancelled over HTTP while the page is open."""
    home = tmp_path / "home"
    app = make_app(home)
    started = tmp_path / "started"
    os.mkfifo(started)
    blocker = project(
        tmp_path / "w",
        "w",
        agent="command",
        command=agent_argv("--started", str(started), "--block"),
    )
    quick = project(tmp_path / "p", sim=SimSettings(duration_s=0.0, jitter=0.0))
    tasks = [task(f"a{i}") for i in range(1, 7)]
    tasks += [task("hold", "w"), task("after1", deps=["hold"]), task("after2", deps=["hold", "a1"])]
    submit(app, [quick, blocker], tasks)
    app.close()
    expected = {**dict.fromkeys(STATES, 0), "done": 6, "running": 1, "pending": 2}
    with served(home) as server:
        assert started.read_text() == "started\n"  # the blocking agent runs
        with opened(browser, server, "/") as page:
            expect(page.locator('#counts [data-count="done"]')).to_have_text("6")
            page.reload()
            expect(page.locator("#live")).to_have_text("live")
            assert page_counts(page) == expected
            assert html_counts(server.get("/").text) == expected == api_counts(server)
            expect(page.locator("#progress-text")).to_have_text("66%")
            expect(page.locator("#running-count")).to_have_text("1")
            expect(page.locator("#running tbody tr")).to_have_count(1)
            row = page.locator("#running tbody tr").first
            expect(row.locator("td").nth(1)).to_have_text("hold")
            expect(row.locator(".elapsed")).to_have_text(
                re.compile(r"^(\d+\.\ds|\d+m\d\ds|\d+h\d\dm)$")
            )
            expect(page.locator(".throughput")).to_be_visible()
            assert "6 done, 0 failed in the last 24 hours" in page.inner_text("#overview-live")
            screenshot(page, "overview-running")

            page.evaluate(WATCH_JOURNAL)
            answer = server.post("/api/tasks/hold/cancel")
            assert answer.status_code == 200, answer.text
            expect(page.locator('#counts [data-count="cancelled"]')).not_to_have_text("0")
            expect(page.locator('#counts [data-count="running"]')).to_have_text("0")
            expect(page.locator("#running-count")).to_have_text("0")
            expect(page.locator("#running tbody tr.empty")).to_have_count(1)
            page.wait_for_function(
                "want => Object.entries(want).every(([s, n]) =>"
                " document.querySelector(`#counts [data-count='${s}']`).textContent == n)",
                arg=api_counts(server),
            )
            assert page.evaluate("window.__tcMarker") == "never reloaded"
            assert "task_cancel_requested" in page.inner_text("#events")
            measured = latencies(page, server)
            (artefacts() / "live_latency.json").write_text(json.dumps(measured, indent=2))
            print(f"journal event -> open page: {measured}")
            screenshot(page, "overview-after-cancel")

        with opened(browser, server, "/tasks/hold") as page:
            expect(page.locator("#task-state")).to_have_text("cancelled")
            expect(page.locator("#attempts tbody tr")).to_have_count(1)
            expect(page.locator("#attempts .outcome")).to_have_text("cancelled")
            expect(page.locator("#log")).to_contain_text("agent running in")
            screenshot(page, "task")
        with opened(browser, server, "/tasks/a1") as page:
            expect(page.locator("#task-state")).to_have_text("done")
            expect(page.locator("#log")).to_contain_text("[simulated]")
            page.get_by_role("link", name="after2").click()
            expect(page.locator("h1")).to_contain_text("after2")
        with opened(browser, server, "/tasks/nope", status=404) as page:
            expect(page.locator("#missing")).to_contain_text("no task 'nope'")
        with opened(browser, server, "/health") as page:
            expect(page.locator("#health-status")).to_have_text(re.compile("healthy|degraded"))
            expect(page.locator("#orchestrator")).to_contain_text("store")
            screenshot(page, "health")
        with opened(browser, server, "/profile") as page:
            expect(page.locator("h1")).to_have_text("Profile")
            profile = server.get("/api/profile").json()
            assert profile["available"] is True and profile["attempts"] >= 6
            path = " → ".join(step["task"] for step in profile["critical_path"])
            expect(page.locator("#critical-path")).to_contain_text(path)
            expect(page.locator("#phases")).to_contain_text("workspace")
            expect(page.locator("#operations")).to_contain_text("commit")
            screenshot(page, "profile")


def backlog(n: int, seed: int) -> list[Any]:
    """``n`` tasks, each depending on up to two earlier ones."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        deps = sorted({f"n{rng.randrange(i)}" for _ in range(rng.randrange(3))}) if i else []
        spec = task(f"n{i}", deps=deps)
        out.append(msgspec.structs.replace(spec, title=f"node {i} of the big backlog"))
    return out


def test_the_dag_page_draws_a_500_node_backlog_and_recolours_it_live(
    browser: Chromium, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    app = make_app(home)
    tasks = backlog(500, seed=7)
    submit(app, [project(tmp_path / "p")], tasks)
    app.close()
    edges = sum(len(t.depends_on) for t in tasks)
    with served(home, command="serve") as server:  # read-only: the states hold still
        dag = server.get("/api/dag").json()
        states = {n["id"]: n["state"] for n in dag["nodes"]}
        with opened(browser, server, "/dag") as page:
            nodes = page.locator("svg#dag a.node")
            expect(nodes).to_have_count(500)
            expect(page.locator("svg#dag .edges path")).to_have_count(edges)
            drawn = page.evaluate(
                "() => Object.fromEntries([...document.querySelectorAll('svg#dag a.node')]"
                ".map((n) => [n.dataset.id, n.getAttribute('class')]))"
            )
            assert drawn == {t: f"node state-{s}" for t, s in states.items()}
            assert {"ready", "pending"} <= set(states.values())
            expect(page.locator('a.node[data-id="n42"] title')).to_contain_text("node 42")
            box = page.locator('a.node[data-id="n0"] rect').bounding_box()
            assert box is not None and box["width"] > 50 and box["height"] > 10
            screenshot(page, "dag-500")

            ready = next(t for t, s in states.items() if s == "ready")
            page.evaluate(WATCH_JOURNAL)
            assert server.post(f"/api/tasks/{ready}/cancel").status_code == 200
            node = page.locator(f'a.node[data-id="{ready}"]')
            expect(node).to_have_attribute("data-state", "cancelled")
            expect(node).to_have_class("node state-cancelled")
            expect(page.locator('[data-dag-count="cancelled"]')).to_have_text("1")
            assert page.evaluate("window.__tcMarker") == "never reloaded"
            page.click("#dag-fit")
            screenshot(page, "dag-500-fit")

        # A task page follows its own task: cancelled while open, it says so.
        second = next(t for t, s in states.items() if s == "ready" and t != ready)
        with opened(browser, server, f"/tasks/{second}") as page:
            expect(page.locator("#task-state")).to_have_text("ready")
            page.evaluate(WATCH_JOURNAL)
            assert server.post(f"/api/tasks/{second}/cancel").status_code == 200
            expect(page.locator("#task-state")).to_have_text("cancelled")
            assert page.evaluate("window.__tcMarker") == "never reloaded"


def test_the_capacity_page_shows_each_windows_projection(browser: Chromium, tmp_path: Path) -> None:
    """``tc capacity``'s scene (a plan, a morning of metered work two hours ago, a limit
    hit and a learned limit), served read-only so that nothing runs."""
    scene = CapacityScene(tmp_path)
    scene.build()
    with served(scene.home, command="serve") as server:
        report = server.get("/api/capacity").json()
        projected = [w for w in report["windows"] if w["projection"]["at_reset"] is not None]
        assert projected, report["windows"]
        with opened(browser, server, "/capacity") as page:
            for window in projected:
                card = page.locator(f'article[data-window="{window["window"]}"]')
                # The projection moves with the clock (idle buckets cool the rate): the
                # page, rendered a moment after the API answered, agrees to within 1%.
                low, mid, high = (
                    figure(card.locator(f".projection .{k}").inner_text())
                    for k in ("low", "mid", "high")
                )
                assert low <= mid <= high
                want = window["projection"]
                for got, key in ((low, "at_reset_low"), (mid, "at_reset"), (high, "at_reset_high")):
                    assert got == pytest.approx(want[key], rel=0.01), (window["window"], key)
                expect(card.locator(".burn")).to_contain_text("/h")
                expect(card.locator("svg polygon.band")).to_have_count(1)
                expect(card.locator("svg polyline.used-line")).to_have_count(1)
            limited = [w for w in projected if w["limit"]["effective"] is not None]
            assert limited
            card = page.locator(f'article[data-window="{limited[0]["window"]}"]')
            expect(card.locator(".used .limit")).to_have_text(
                number(limited[0]["limit"]["effective"])
            )
            expect(card.locator("svg line.limit-line")).to_have_count(1)
            for window in limited:
                card = page.locator(f'article[data-window="{window["window"]}"]')
                verdict = (
                    "reaches the limit"
                    if window["projection"]["limit_before_reset"]
                    else ("stays under the limit")
                )
                expect(card.locator(".projection")).to_contain_text(verdict)
            expect(page.locator("#limit-hits li")).to_have_count(
                len(report["limit_hits"]["recent"])
            )
            expect(page.locator("#no-plan")).to_have_count(0)
            screenshot(page, "capacity")

        with opened(browser, server, "/context") as page:
            data = server.get("/api/context").json()
            assert data["sessions"]
            expect(page.locator("#sessions tbody tr")).to_have_count(len(data["sessions"]))
            for session in data["sessions"]:
                row = page.locator(f'#sessions tr[data-attempt="{session["attempt"]}"]')
                expect(row.locator(".util")).to_have_text(percent(session["utilisation"]))
            expect(page.locator("#context-chart canvas").first).to_be_visible()
            expect(page.locator("#context-chart")).to_have_attribute(
                "data-series", str(len(data["sessions"]))
            )
            legend = page.inner_text("#context-chart")
            for line in ("compress 40%", "delegate 45%", "warn 50%", "cap 60%"):
                assert line in legend
            screenshot(page, "context")


def test_the_health_page_shows_breakers_degraded_modes_and_mttr(
    browser: Chromium, tmp_path: Path
) -> None:
    """``tc health``'s degraded scene: the opus breaker opened, closed after an incident of
    an hour, and opened again; tasks held for it, one backing off, one waiting for a reset."""
    scene = HealthScene(tmp_path)
    scene.morning()
    scene.present()
    scene.close()
    with served(scene.home, command="serve") as server:
        report = server.get("/api/health").json()
        assert report["status"] == "degraded"
        with opened(browser, server, "/health") as page:
            expect(page.locator("#health-status")).to_have_text("degraded")
            expect(page.locator("#degraded li")).to_have_count(len(report["degraded"]))
            for mode in report["degraded"]:
                expect(page.locator("#degraded")).to_contain_text(mode["text"])
            rows = page.locator("#breakers tbody tr")
            expect(rows).to_have_count(len(report["breakers"]))
            for breaker in report["breakers"]:
                row = page.locator(f'#breakers tr[data-key="{breaker["key"]}"]')
                expect(row.locator("td").nth(1)).to_have_text(breaker["state"])
            expect(page.locator("#mttr strong")).to_have_text(
                duration(report["incidents"]["mttr_s"])
            )
            by_class = report["errors"]["by_class"]
            for name, figures in by_class.items():
                row = page.locator(f'#errors tr[data-class="{name}"]')
                expect(row.locator("td").nth(1)).to_have_text(str(figures["total"]))
            screenshot(page, "health-degraded")


def figure(text: str) -> float:
    """A figure as the page writes it (``1,234,567``) read back."""
    return float(text.replace(",", ""))
