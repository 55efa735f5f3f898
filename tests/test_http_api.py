"""The HTTP API of a real ``tc run --http`` / ``tc serve`` process: auth over the
whole route table, the JSON routes against ``tc … --json``, write actions through the
CLI's request path (a refused one changes nothing), ``/metrics`` parsed by
prometheus-client's own parser, health checks, the live stream."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cli_helpers import tc, tc_json
from tests.helpers import make_app, project, submit, task
from tests.http_helpers import Served, served
from trafficcontrol.api.app import OPENAPI_PATH, build_app, openapi
from trafficcontrol.api.routes import ROUTES
from trafficcontrol.domain.model import SimSettings
from trafficcontrol.runtime.stats import LoopStats

pytestmark = pytest.mark.e2e

LONG = SimSettings(duration_s=600.0, jitter=0.0)
"""Sim agents that run until the test stops them."""


def backlog_home(tmp_path: Path) -> Path:
    """a (done quickly), b and c (run long: they are running while the test looks),
    d after b (pending)."""
    home = tmp_path / "home"
    app = make_app(home)
    submit(
        app,
        [project(tmp_path / "p"), project(tmp_path / "q", "q", sim=LONG)],
        [
            task("a"),
            task("b", "q"),
            task("c", "q"),
            task("d", "q", deps=["b"]),
        ],
    )
    app.close()
    return home


def wait_until(served_: Served, predicate: Any, what: str) -> dict[str, Any]:
    """Read the live stream until ``predicate(status)`` holds for ``/api/status``."""
    status = served_.get("/api/status").json()
    if predicate(status):
        return dict(status)
    deadline = time.monotonic() + 60
    with (
        served_.client() as client,
        client.stream("GET", "/api/events/stream", timeout=30) as stream,
    ):
        for line in stream.iter_lines():
            if time.monotonic() > deadline:
                break
            if line.startswith("data:"):
                status = served_.get("/api/status").json()
                if predicate(status):
                    return dict(status)
    raise AssertionError(f"the stream ended before {what}")


def routes_of_app() -> list[tuple[str, str]]:
    """(method, path) of every route the real app serves, from its routing table."""
    from starlette.routing import Mount, Route

    # Enough of a Context to build the routing table; nothing is served from it.
    source = SimpleNamespace(hub=None, stats=LoopStats())
    ctx = SimpleNamespace(source=source, scheduler=None, rotation=None, home=None)
    app = build_app(ctx, token="x" * 32)  # type: ignore[arg-type]
    out: list[tuple[str, str]] = []
    for route in app.app.app.routes:  # TokenAuth(Timed(Starlette))
        if isinstance(route, Mount):
            out.append(("GET", route.path + "/app.css"))
        elif isinstance(route, Route):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    out.append((method, route.path.replace("{task_id}", "b")))
    return out


@pytest.fixture
def running(tmp_path: Path) -> Any:
    home = backlog_home(tmp_path)
    with served(home) as s:
        wait_until(s, lambda st: st["by_state"]["running"] == 2, "b and c run")
        yield s


def test_every_route_but_healthz_refuses_a_missing_or_wrong_token(running: Served) -> None:
    table = routes_of_app()
    assert len(table) >= len(ROUTES) + 5, table  # the API plus health, metrics, pages
    paths = {p for _m, p in table}
    assert {"/healthz", "/readyz", "/metrics", OPENAPI_PATH, "/api/events/stream", "/"} <= paths
    for token in (None, "wrong-" + running.token[6:], running.token + "x", "Basic"):
        with running.client(token=token) as client:
            for method, path in table:
                answer = client.request(method, path)
                if path == "/healthz":
                    assert answer.status_code == 200, (method, path)
                else:
                    assert answer.status_code == 401, (token, method, path, answer.text)
                    assert running.token not in answer.text
    # The refused writes changed nothing: b and c still run, d waits.
    status = running.get("/api/status").json()
    assert status["by_state"]["running"] == 2 and status["by_state"]["pending"] == 1


def test_a_browser_exchanges_the_token_for_a_cookie_and_the_token_stays_out_of_pages(
    running: Served,
) -> None:
    with httpx.Client(base_url=running.url, timeout=30) as browser:
        first = browser.get(f"/?token={running.token}&x=1", follow_redirects=False)
        assert first.status_code == 303
        assert first.headers["location"] == "/?x=1"
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        page = browser.get("/?x=1")
        assert page.status_code == 200 and "TrafficControl" in page.text
        assert running.token not in page.text
        assert browser.get("/api/status").status_code == 200  # the cookie is enough
    path = running.home / "http.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    journal = (running.home / "journal.db").read_bytes()
    assert running.token.encode() not in journal


def test_the_token_is_printed_once_and_tc_http_token_shows_it(tmp_path: Path) -> None:
    home = backlog_home(tmp_path)
    with served(home) as first:
        assert any(first.token in line for line in first.stderr)
    with served(home) as second:
        assert second.token == first.token
        assert not any(first.token in line for line in second.stderr)
        assert any("tc http token" in line for line in second.stderr)
    assert tc("http", "token", home=home).stdout.strip() == first.token


def test_json_routes_agree_with_the_cli(running: Served) -> None:
    status = running.get("/api/status").json()
    cli = tc_json("status", home=running.home)
    assert status["by_state"] == cli["by_state"]
    assert status["tasks"] == 4 and status["role"] == "orchestrator"
    assert sorted(r["task"] for r in status["running"]) == ["b", "c"]

    page = running.get("/api/tasks", params={"state": "running", "limit": 1}).json()
    assert page["total"] == 2 and len(page["tasks"]) == 1
    second = running.get("/api/tasks", params={"state": "running", "limit": 1, "offset": 1})
    assert {page["tasks"][0]["id"], second.json()["tasks"][0]["id"]} == {"b", "c"}
    assert running.get("/api/tasks", params={"project": "p"}).json()["total"] == 1

    one = running.get("/api/tasks/b").json()
    shown = tc_json("show", "b", home=running.home)
    assert one["state"] == shown["state"] == "running"
    assert [a["id"] for a in one["attempt_list"]] == [a["id"] for a in shown["attempt_list"]]
    assert one["dependents"] == ["d"]

    agents = running.get("/api/agents").json()["agents"]
    assert sorted(a["task"] for a in agents) == ["b", "c"]
    assert all(a["elapsed_s"] >= 0 for a in agents)
    dag = running.get("/api/dag").json()
    assert len(dag["nodes"]) == 4 and dag["edges"] == [["b", "d"]]
    capacity = running.get("/api/capacity").json()
    assert capacity == {**capacity, "windows": capacity["windows"]} and "plan" in capacity
    health = running.get("/api/health").json()
    assert health["status"] == tc_json("health", home=running.home)["status"]
    context = running.get("/api/context").json()
    assert context["thresholds"]["compress"] == 0.40 and context["thresholds"]["cap"] == 0.60
    events = running.get("/api/events", params={"limit": 5}).json()
    assert len(events["events"]) <= 5
    assert all(e["seq"] <= events["seq"] for e in events["events"])
    profile = running.get("/api/profile").json()
    assert profile["available"] is True and profile["attempts"] == 3
    assert "commit" in profile["operations"] and "decide" in profile["operations"]
    log = running.get("/api/tasks/a/log", params={"lines": 3}).json()
    assert log["attempt"] == "a#1" and len(log["lines"]) <= 3


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/tasks", {"limit": "0"}, "limit"),
        ("/api/tasks", {"limit": "many"}, "limit"),
        ("/api/tasks", {"offset": "-1"}, "offset"),
        ("/api/tasks", {"state": "sleeping"}, "state"),
        ("/api/tasks/nope", {}, "task_id"),
        ("/api/tasks/b/log", {"lines": "100000"}, "lines"),
        ("/api/events", {"after": "x"}, "after"),
    ],
)
def test_a_bad_query_is_a_4xx_naming_the_field(
    running: Served, path: str, params: dict[str, str], field: str
) -> None:
    answer = running.get(path, params=params)
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.json()["field"] == field
    assert field in answer.json()["error"]


def test_writes_go_through_the_cli_request_path_and_a_refused_one_changes_nothing(
    running: Served, tmp_path: Path
) -> None:
    before = running.get("/api/status").json()["events"]
    refused = [
        running.post("/api/tasks/nope/cancel"),
        running.post("/api/backlog", content=b"{not json"),
        running.post("/api/backlog", json={"toml": "x = [", "more": 1}),
        running.post("/api/backlog", json={"toml": "[[tasks]\nid ="}),
        running.post(
            "/api/backlog",
            json={"toml": '[[projects]]\nid = "r"\npath = "relative/dir"\n'},
        ),
        running.post(
            "/api/backlog",
            json={
                "toml": f'[[projects]]\nid = "r"\npath = "{tmp_path / "p"}"\n\n'
                '[[tasks]]\nid = "e"\nproject = "r"\nprompt = "x"\ndepends_on = ["zz"]\n'
            },
        ),
        running.post("/api/tasks/a/retry"),  # done: nothing to retry
    ]
    codes = [r.status_code for r in refused]
    assert codes == [404, 400, 422, 422, 422, 422, 409], [r.text for r in refused]
    assert refused[4].json()["field"] == "toml.projects[0].path"
    assert "zz" in json.dumps(refused[5].json())
    assert running.get("/api/status").json()["events"] == before

    cancelled = running.post("/api/tasks/c/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["ok"], cancelled.text
    wait_until(running, lambda st: st["by_state"]["cancelled"] == 1, "c cancelled")
    assert tc_json("show", "c", home=running.home)["state"] == "cancelled"
    retried = running.post("/api/tasks/c/retry")
    assert retried.status_code == 200 and retried.json()["ok"], retried.text
    wait_until(running, lambda st: st["by_state"]["running"] == 2, "c running again")

    submitted = running.post(
        "/api/backlog",
        json={
            "toml": f'[[projects]]\nid = "r"\npath = "{tmp_path / "p"}"\n\n'
            '[[tasks]]\nid = "e"\nproject = "r"\nprompt = "x"\n'
        },
    )
    assert submitted.status_code == 200 and submitted.json()["ok"], submitted.text
    wait_until(running, lambda st: st["by_state"]["done"] == 2, "e done")


def test_metrics_parse_and_match_tc_status(running: Served) -> None:
    answer = running.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    by_state = tc_json("status", home=running.home)["by_state"]
    tasks = {s.labels["state"]: s.value for s in families["tc_tasks"].samples}
    assert tasks == {k: float(v) for k, v in by_state.items()}
    attempts = families["tc_attempts"].samples
    assert [(s.name, s.labels["outcome"], s.value) for s in attempts] == [
        ("tc_attempts_total", "succeeded", 1.0)
    ]
    for name in (
        "tc_attempt_duration_seconds",
        "tc_dispatch_latency_seconds",
        "tc_journal_commit_seconds",
    ):
        assert families[name].type == "histogram"
        count = [s for s in families[name].samples if s.name == f"{name}_count"]
        assert count and count[0].value >= 1, name
    assert families["tc_usage_units"].type == "counter"
    for name in (
        "tc_capacity_remaining_ratio",
        "tc_breaker_state",
        "tc_context_utilisation_ratio",
        "tc_event_loop_lag_seconds",
    ):
        assert name in families, name
    assert families["tc_event_loop_lag_seconds"].samples[0].value >= 0


def test_health_and_readiness(running: Served) -> None:
    with running.client(token=None) as anonymous:
        live = anonymous.get("/healthz")
    assert live.status_code == 200 and live.json()["ok"] is True
    ready = running.get("/readyz").json()
    assert ready == {
        "ready": True,
        "role": "orchestrator",
        "recovered": True,
        "store_writable": True,
    }


def test_openapi_document_lists_every_api_route() -> None:
    document = openapi()
    assert document["openapi"].startswith("3.")
    listed = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert listed == {(r.method, r.path) for r in ROUTES}
    backlog = document["paths"]["/api/backlog"]["post"]
    assert backlog["requestBody"]["content"]["application/json"]["schema"]["required"] == ["toml"]


def test_binding_beyond_loopback_without_a_token_is_refused(tmp_path: Path) -> None:
    home = backlog_home(tmp_path)
    (home / "config.toml").write_text("[http]\nauth = false\n")
    refused = tc("run", "--http", "0.0.0.0:0", "--no-live", home=home, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "refusing to serve on 0.0.0.0 without a token" in refused.stderr
    assert tc_json("status", home=home)["by_state"]["ready"] == 3  # nothing ran
    bad = tc("run", "--http", "127.0.0.1:99999", "--no-live", home=home, check=False)
    assert bad.returncode == 2 and "port must be a number" in bad.stderr
    with served(home) as loopback:  # auth off on loopback: allowed, no token needed
        with loopback.client(token=None) as anonymous:
            assert anonymous.get("/api/status").status_code == 200
        assert not (home / "http.token").exists()


def test_a_taken_port_fails_before_recovery(running: Served, tmp_path: Path) -> None:
    port = running.url.rsplit(":", 1)[1]
    other = backlog_home(tmp_path / "other")
    taken = tc("run", "--http", f"127.0.0.1:{port}", "--no-live", home=other, check=False)
    assert taken.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    assert tc_json("status", home=other)["by_state"]["ready"] == 3


def test_tc_serve_follows_a_home_no_orchestrator_runs(tmp_path: Path) -> None:
    home = backlog_home(tmp_path)
    with served(home, command="serve") as view:
        status = view.get("/api/status").json()
        assert status["role"] == "read-only" and status["by_state"]["ready"] == 3
        assert view.get("/readyz").json()["role"] == "read-only"
        with (
            view.client() as client,
            client.stream("GET", "/api/events/stream", timeout=30) as stream,
        ):
            lines = stream.iter_lines()
            assert next(lines) == "event: hello"
            tc("cancel", "a", home=home)  # another process writes the journal
            data = _next_journal_message(lines)
        assert data["counts"]["cancelled"] == 1
        assert [e["type"] for e in data["events"]] == ["task_cancel_requested"]
        assert data["events"][0]["task_id"] == "a"
        # Its writes go to the journal as the CLI's do when no tc run holds the lock.
        assert view.post("/api/tasks/a/retry").json()["ok"] is True
        assert view.get("/api/tasks/a").json()["state"] == "ready"


def _next_journal_message(lines: Any) -> dict[str, Any]:
    event = None
    for line in lines:
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event == "journal":
            return dict(json.loads(line.split(":", 1)[1]))
    raise AssertionError("the stream ended without a journal message")
