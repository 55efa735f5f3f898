"""``tc health``, and failures and breakers in ``tc status`` / ``tc show``.

Each state is built the way ``tc run`` builds it: the resilience policy journaled as
``ResilienceConfigured``, ``decide`` asked and its commands journaled as the shell's own
events (dispatches, wake-ups, breaker changes), and the agents' ends classified by the
failure table (``classified``, user rules first) and appended to the real journal. Then
the real CLI reads it. Times are placed minutes to hours before the wall clock and the
breaker's probe interval is an hour, so the CLI (which reads the system clock) sees the
same picture without any timing assumption.

The morning (``recovered``): a, b (hard: opus) fail with 529s, c succeeds, d's work
fails; the opus breaker opens, its probe an hour later (b#2) succeeds, it closes — an
incident of 3,611 s; everything finishes. The present (``degraded``, on top): e, h
(hard) fail with 529s and open the opus breaker again, and wait for it, held; f gets a
503 with a retry-after and backs off; g hits a provider limit and waits for the reset.
"""

from __future__ import annotations

import os
import re
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.cli_helpers import tc, tc_json
from tests.helpers import project, submit, task
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.domain.breakers import BreakerState
from trafficcontrol.domain.decide import decide
from trafficcontrol.domain.events import (
    AnyEvent,
    AttemptFinished,
    BreakerChanged,
    ResilienceConfigured,
    TurnUsageReported,
)
from trafficcontrol.domain.failures import DEFAULT_RULES, FailureClass, classify
from trafficcontrol.domain.model import (
    AttemptId,
    Difficulty,
    FailureEvidence,
    LimitHit,
    Outcome,
    Usage,
)
from trafficcontrol.runtime.pool import classified, command_event
from trafficcontrol.settings import Settings, load_settings

pytestmark = pytest.mark.e2e

README = Path(__file__).parent.parent / "README.md"
PROBE_S = 3600.0
CONFIG = f"""\
[resilience.retry]
transient_attempts = 8

[resilience.breaker]
failures_to_open = 2
probe_interval_s = {PROBE_S}

[[resilience.rules]]
name = "flaky tests"
class = "transient"
pattern = "flaky"
"""
OVERLOADED = FailureEvidence(http_status=529, message="Overloaded")
TURN = Usage(input_tokens=100)


class Scene:
    def __init__(self, tmp_path: Path) -> None:
        self.now = time.time()
        self.t0 = self.now - 7200.0
        self.home = tmp_path / "home"
        self.home.mkdir()
        (self.home / "config.toml").write_text(CONFIG)
        self.settings: Settings = load_settings(self.home / "config.toml")
        self.app = App(Home(self.home), environ=dict(os.environ), settings=self.settings)
        self.journaled: list[AnyEvent] = []
        self.g_resets = self.now + 3600.0
        self.f_retry_after = 1200.0
        self.reopened_at = 0.0
        self.f_until = 0.0

    def step(self, at: float) -> list[AnyEvent]:
        """One pass of the loop: ``decide``, then journal its commands as the shell does."""
        decision = decide(self.app.read_state(), at, self.settings.scheduler())
        logs = str(self.app.home.logs)
        events: list[AnyEvent] = [command_event(c, at, logs) for c in decision.commands]
        self.append(events)
        return events

    def append(self, events: list[AnyEvent]) -> None:
        if events:
            self.app.journal().append(events)
            self.journaled.extend(events)

    def end(
        self, at: float, attempt: str, evidence: FailureEvidence | None = None, **kw: Any
    ) -> None:
        """An attempt's end as the pool reports it: failures classified by the table."""
        outcome = Outcome.SUCCEEDED if evidence is None else Outcome.FAILED
        error = None if evidence is None else evidence.message
        event = AttemptFinished(
            at=at,
            attempt_id=AttemptId(attempt),
            outcome=outcome,
            error=error,
            failure=evidence,
            **kw,
        )
        self.append([classified(event, self.settings.resilience.rules)])

    def morning(self) -> None:
        t0 = self.t0
        tasks = [
            task("a", difficulty=Difficulty.HARD),
            task("b", difficulty=Difficulty.HARD),
            task("c"),
            task("d", model="sonnet"),
        ]
        submit(self.app, [project(self.home.parent / "p", agent="claude", max_attempts=3)], tasks)
        self.append([ResilienceConfigured(at=t0 - 10, config=self.settings.resilience)])
        self.step(t0)  # a#1, b#1 on opus; c#1, d#1 on sonnet
        self.end(t0 + 10, "a#1", OVERLOADED)
        self.end(t0 + 10, "b#1", OVERLOADED)
        self.end(t0 + 10, "c#1")
        self.end(t0 + 10, "d#1", FailureEvidence(exit_code=1, message="tests failed: 3 errors"))
        self.step(t0 + 10)  # the opus breaker opens
        self.step(t0 + 20)  # a, b, d wake up
        self.step(t0 + 21)  # d#2 (pinned to sonnet); a and b (hard) wait for opus
        self.end(t0 + 30, "d#2")
        self.step(t0 + 10 + PROBE_S)  # half-open
        self.step(t0 + 11 + PROBE_S)  # b#2: the one probe (b woke first: its jitter)
        turn = TurnUsageReported(
            at=t0 + 15 + PROBE_S, attempt_id=AttemptId("b#2"), model="opus", usage=TURN
        )
        self.append([turn])
        self.end(t0 + 20 + PROBE_S, "b#2")
        self.step(t0 + 21 + PROBE_S)  # closed: probe succeeded
        self.step(t0 + 22 + PROBE_S)  # a#2
        self.end(t0 + 30 + PROBE_S, "a#2")

    def present(self) -> None:
        now = self.now
        start = now - 600
        submit(
            self.app,
            [],
            [
                task("e", difficulty=Difficulty.HARD),
                task("f"),
                task("g"),
                task("h", difficulty=Difficulty.HARD),
            ],
        )
        self.step(start)  # e#1, h#1 on opus; f#1, g#1 on sonnet
        self.end(start + 10, "e#1", OVERLOADED)
        self.end(start + 10, "h#1", OVERLOADED)
        self.end(
            start + 10,
            "f#1",
            FailureEvidence(
                http_status=503, retry_after_s=self.f_retry_after, message="upstream down"
            ),
        )
        self.end(
            start + 10,
            "g#1",
            FailureEvidence(http_status=429, message="usage limit reached"),
            limit_hit=LimitHit(window="five_hour", resets_at=self.g_resets, status=429),
        )
        self.reopened_at = start + 10
        self.f_until = start + 10 + self.f_retry_after
        self.step(start + 10)  # the opus breaker opens again
        self.step(start + 20)  # e, h wake up
        self.step(start + 21)  # and stay ready: hard work waits for opus

    def close(self) -> None:
        self.app.close()


@pytest.fixture
def recovered(tmp_path: Path) -> Scene:
    scene = Scene(tmp_path)
    scene.morning()
    scene.close()
    return scene


@pytest.fixture
def degraded(tmp_path: Path) -> Scene:
    scene = Scene(tmp_path)
    scene.morning()
    scene.present()
    scene.close()
    return scene


def health(scene: Scene, *args: str, code: int) -> Any:
    done = tc("health", *args, home=scene.home, check=False)
    assert done.returncode == code, done.stdout + done.stderr
    return done


def health_json(scene: Scene, *, code: int) -> Any:
    return msgspec.json.decode(health(scene, "--json", code=code).stdout)


def changes(scene: Scene) -> list[tuple[str, str, str]]:
    return [
        (e.key, e.state.value, e.reason) for e in scene.journaled if isinstance(e, BreakerChanged)
    ]


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def by_key(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["key"]: item for item in items}


# -- the scenes ------------------------------------------------------------------------
def test_the_scene_is_what_the_loop_would_have_journaled(degraded: Scene) -> None:
    assert changes(degraded) == [
        ("claude/opus", "open", "2 failures in a row"),
        ("claude/opus", "half_open", "probe interval passed: one probe"),
        ("claude/opus", "closed", "probe succeeded"),
        ("claude/opus", "open", "2 failures in a row"),
    ]
    verdicts = {
        e.attempt_id: (e.failure_class, e.failure_rule)
        for e in degraded.journaled
        if isinstance(e, AttemptFinished) and e.outcome is Outcome.FAILED
    }
    transient = FailureClass.TRANSIENT
    assert verdicts == {
        "a#1": (transient, "overloaded"),
        "b#1": (transient, "overloaded"),
        "d#1": (FailureClass.TASK, "agent reported failure"),
        "e#1": (transient, "overloaded"),
        "h#1": (transient, "overloaded"),
        "f#1": (transient, "server error"),
        "g#1": (FailureClass.LIMIT, "provider limit"),
    }


# -- tc health -------------------------------------------------------------------------
def test_health_is_degraded_while_a_breaker_is_open(degraded: Scene) -> None:
    report = health_json(degraded, code=1)
    assert (report["status"], report["exit_code"]) == ("degraded", 1)
    breakers = by_key(report["breakers"])
    assert set(breakers) == {"claude/opus", "claude/sonnet"}
    opus = breakers["claude/opus"]
    assert (opus["backend"], opus["family"], opus["state"]) == ("claude", "opus", "open")
    assert opus["reason"] == "2 failures in a row"
    assert opus["since"]["epoch"] == degraded.reopened_at
    assert opus["since"]["iso"] == iso(degraded.reopened_at)
    assert opus["next_probe_at"]["epoch"] == degraded.reopened_at + PROBE_S
    assert opus["probes"] == 1  # the morning's one probe
    assert opus["failures_in_a_row"] == 2
    assert opus["for_s"] >= 590
    sonnet = breakers["claude/sonnet"]
    assert (sonnet["state"], sonnet["since"], sonnet["next_probe_at"]) == ("closed", None, None)
    assert sonnet["failures_in_a_row"] == 0  # f's 503, then g's limit: the provider answered

    modes = {m["kind"]: m for m in report["degraded"]}
    assert list(modes) == ["breaker", "transient_backoff", "capacity_wait"]
    breaker = modes["breaker"]
    assert (breaker["key"], breaker["held"], breaker["shifted"]) == ("claude/opus", ["e", "h"], [])
    assert breaker["text"].startswith("routing around claude/opus: open since ")
    assert modes["transient_backoff"]["tasks"] == ["f"]
    assert modes["capacity_wait"]["tasks"] == ["g"]

    [backoff] = report["waiting"]["transient"]
    assert backoff["reason"] == "transient (server error): retry 1/8"
    assert backoff["until"]["epoch"] == degraded.f_until  # the provider's retry-after
    assert backoff["transient_failures"] == 1
    [capacity] = report["waiting"]["capacity"]
    assert capacity["reason"] == "capacity: provider limit reached (five_hour)"
    assert capacity["until"]["epoch"] == degraded.g_resets
    assert report["policy"]["breaker"]["failures_to_open"] == 2
    assert report["policy"]["user_rules"] == ["flaky tests"]


def test_health_counts_errors_by_class_overall_and_in_the_last_hour(degraded: Scene) -> None:
    errors = health_json(degraded, code=1)["errors"]
    assert errors["by_class"] == {
        "transient": {"total": 5, "last_hour": 3},
        "limit": {"total": 1, "last_hour": 1},
        "permanent": {"total": 0, "last_hour": 0},
        "task": {"total": 1, "last_hour": 0},
        "infrastructure": {"total": 0, "last_hour": 0},
    }
    assert errors["last_hour_complete"] is True
    recent = errors["recent"]
    assert [e["attempt"] for e in recent[:4]] == ["e#1", "h#1", "f#1", "g#1"]
    assert [e["attempt"] for e in recent[4:]] == ["a#1", "b#1", "d#1"]
    f = recent[2]
    assert (f["task"], f["key"], f["class"], f["rule"], f["message"]) == (
        "f",
        "claude/sonnet",
        "transient",
        "server error",
        "upstream down",
    )
    assert f["at"]["epoch"] == degraded.reopened_at
    done = health(degraded, "--json", "--errors", "2", code=1)
    assert [e["attempt"] for e in msgspec.json.decode(done.stdout)["errors"]["recent"]] == [
        "e#1",
        "h#1",
    ]


def test_health_reports_incidents_and_mttr(degraded: Scene) -> None:
    incidents = health_json(degraded, code=1)["incidents"]
    [closed] = incidents["closed"]
    assert closed["key"] == "claude/opus"
    assert closed["opened_at"]["epoch"] == degraded.t0 + 10
    assert closed["duration_s"] == PROBE_S + 11  # open at t0+10, closed at t0+21+PROBE_S
    assert closed["reason"] == "probe succeeded"
    [ongoing] = incidents["ongoing"]
    assert ongoing["key"] == "claude/opus"
    assert ongoing["opened_at"]["epoch"] == degraded.reopened_at
    assert ongoing["age_s"] >= 590
    assert incidents["mttr"] == [
        {"key": "claude/opus", "incidents": 1, "mttr_s": PROBE_S + 11, "ongoing": True}
    ]
    assert incidents["mttr_s"] == PROBE_S + 11


def test_health_text_says_what_is_degraded(degraded: Scene) -> None:
    text = health(degraded, code=1).stdout
    assert text.startswith("health: degraded — 3 degraded modes (exit 1)")
    assert re.search(
        r"routing around claude/opus: open since \w{3} \d\d:\d\d \(\d+m ago\): 2 failures in a"
        r" row; next probe \w{3} \d\d:\d\d \(in \d+m\); 2 ready tasks held until it closes",
        text,
    )
    assert "held (hard, pinned, escalated, resumed or nothing cheaper): e, h" in text
    assert "1 task in transient back-off" in text
    assert "f: transient (server error): retry 1/8, until " in text
    assert "g: capacity: provider limit reached (five_hour), until " in text
    assert re.search(r"claude/opus\s+open\s+.*2 failures in a row\s+1\s+", text)
    assert re.search(r"transient\s+5\s+3", text)
    assert re.search(r"task\s+1\s+0", text)
    assert re.search(r"f#1\s+transient\s+server error\s+upstream down", text)
    assert re.search(r"claude/opus\s+.*ongoing\s+\d+m\d\ds so far\s+2 failures in a row", text)
    assert "MTTR (open -> closed): claude/opus 1h00m over 1 incident" in text


def test_health_is_healthy_once_the_breaker_closed(recovered: Scene) -> None:
    report = health_json(recovered, code=0)
    assert (report["status"], report["exit_code"], report["degraded"]) == ("healthy", 0, [])
    [opus] = report["breakers"]
    assert (opus["key"], opus["state"], opus["reason"]) == (
        "claude/opus",
        "closed",
        "probe succeeded",
    )
    assert opus["since"]["epoch"] == recovered.t0 + 21 + PROBE_S
    assert (opus["probes"], opus["next_probe_at"], opus["incident_since"]) == (1, None, None)
    assert report["waiting"] == {"transient": [], "capacity": []}
    assert report["incidents"]["ongoing"] == []
    assert report["incidents"]["mttr_s"] == PROBE_S + 11
    assert report["errors"]["by_class"]["transient"] == {"total": 2, "last_hour": 0}
    text = health(recovered, code=0).stdout
    assert text.startswith("health: healthy")
    assert "MTTR (open -> closed): claude/opus 1h00m over 1 incident" in text


def test_a_store_outage_is_a_degraded_dependency_until_it_ends(tmp_path: Path) -> None:
    scene = Scene(tmp_path)
    submit(scene.app, [project(tmp_path / "p", agent="claude")], [task("a")])
    opened = scene.now - 300
    outage = BreakerChanged(
        at=opened, key="store", state=BreakerState.OPEN, reason="journal writes failing"
    )
    scene.append([outage])
    report = health_json(scene, code=1)
    [mode] = report["degraded"]
    assert (mode["kind"], mode["key"], mode["state"]) == ("dependency", "store", "open")
    assert mode["text"].startswith("store: open since ")
    [ongoing] = report["incidents"]["ongoing"]
    assert (ongoing["key"], ongoing["opened_at"]["epoch"]) == ("store", opened)
    assert by_key(report["breakers"])["store"]["backend"] is None
    scene.append(
        [
            BreakerChanged(
                at=opened + 42, key="store", state=BreakerState.CLOSED, reason="journal writable"
            )
        ]
    )
    scene.close()
    report = health_json(scene, code=0)
    assert report["incidents"]["mttr"] == [
        {"key": "store", "incidents": 1, "mttr_s": 42.0, "ongoing": False}
    ]
    assert "MTTR (open -> closed): store 42.0s over 1 incident" in health(scene, code=0).stdout


def test_health_without_state_exits_2(tmp_path: Path) -> None:
    done = tc("health", home=tmp_path / "nothing", check=False)
    assert done.returncode == 2
    assert "no state in" in done.stderr


# -- tc status and tc show -------------------------------------------------------------
def test_status_lists_open_breakers_and_errors_by_class(degraded: Scene) -> None:
    text = tc("status", home=degraded.home).stdout
    assert re.search(
        r"breaker claude/opus open since .*: 2 failures in a row; next probe .*\(in \d+m\)",
        text,
    )
    assert "claude/sonnet" not in text  # closed breakers stay out of the way
    assert "failed attempts by class: transient 5, limit 1, task 1 (tc health)" in text
    data = tc_json("status", home=degraded.home)
    [breaker] = data["breakers"]
    assert (breaker["key"], breaker["state"], breaker["reason"]) == (
        "claude/opus",
        "open",
        "2 failures in a row",
    )
    assert breaker["next_probe_at"] is not None
    assert data["errors_by_class"] == {"transient": 5, "limit": 1, "task": 1}


def test_status_of_a_recovered_home_has_no_breaker_line(recovered: Scene) -> None:
    text = tc("status", home=recovered.home).stdout
    assert "breaker" not in text
    assert "failed attempts by class: transient 2, task 1 (tc health)" in text
    assert tc_json("status", home=recovered.home)["breakers"] == []


def test_show_prints_each_failure_class_and_the_transient_count(degraded: Scene) -> None:
    text = tc("show", "e", home=degraded.home).stdout
    assert "transient_failures: 1" in text
    assert re.search(
        r"attempt e#1: failed\s+claude/opus.*\n\s+route: hint hard\n"
        r"\s+failure: transient \(overloaded\)",
        text,
    )
    d = tc("show", "d", home=degraded.home).stdout
    assert "failure: task (agent reported failure)" in d
    assert "transient_failures" not in d
    assert d.count("failure:") == 1  # d#2 succeeded: no failure line
    data = tc_json("show", "b", home=degraded.home)
    assert data["transient_failures"] == 1
    assert [(a["id"], a["failure_class"], a["failure_rule"]) for a in data["attempt_list"]] == [
        ("b#1", "transient", "overloaded"),
        ("b#2", None, None),
    ]


# -- README ----------------------------------------------------------------------------
def test_the_readme_config_example_loads_and_its_rule_classifies(tmp_path: Path) -> None:
    text = section("Failures, retries and circuit breakers")
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    [example] = [b for b in blocks if "[resilience.retry]" in b]
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(example))
    settings = load_settings(path)
    resilience = settings.resilience
    defaults = Settings().resilience
    assert (resilience.retry, resilience.breaker) == (defaults.retry, defaults.breaker)
    [rule] = resilience.rules
    assert (rule.name, rule.failure_class) == ("flaky tests", FailureClass.TRANSIENT)
    flaky = FailureEvidence(exit_code=1, message="2 flaky tests failed")
    assert classify(flaky).failure_class is FailureClass.TASK
    verdict = classify(flaky, (*resilience.rules, *DEFAULT_RULES))
    assert (verdict.failure_class, verdict.rule) == (FailureClass.TRANSIENT, "flaky tests")


def test_the_readme_table_names_every_default_rule() -> None:
    text = section("Failures, retries and circuit breakers")
    rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")}
    assert {rule.name for rule in DEFAULT_RULES} <= rows
    for cls in FailureClass:
        assert f"| `{cls.value}` |" in text
    assert "tc health " in section("Using it")
