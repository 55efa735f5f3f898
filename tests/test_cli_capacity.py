"""``tc capacity``, and capacity in ``tc show`` / ``tc status`` / ``tc tasks``.

Each state is built the way ``tc run`` builds it: the plan journaled as
``CapacityConfigured``, ``decide`` asked and its commands journaled as the shell's own
events (dispatches with their routes and reservations, limit corrections, warnings,
deferrals), and the agents' reports (turn usage, rate-limit signals, results, a limit
hit) appended to the real journal. Then the real CLI reads it. Times are placed hours
before the wall clock, and the weekly reset days away from it, so the CLI (which reads
the system clock) sees the same windows without any timing assumption.
"""

from __future__ import annotations

import os
import re
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import tc, tc_json
from tests.helpers import project, submit, task
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.cli.capacity import PLAN_HINT, short, sparkline
from trafficcontrol.cli.views import local_time
from trafficcontrol.domain.capacity.costs import SizeBucket
from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.windows import WeeklyReset, weekly_window_bounds
from trafficcontrol.domain.decide import decide
from trafficcontrol.domain.events import (
    AgentSessionStarted,
    AnyEvent,
    AttemptDispatched,
    AttemptFinished,
    CapacityConfigured,
    RateLimitObserved,
    TaskDeferred,
    TurnUsageReported,
)
from trafficcontrol.domain.model import (
    AttemptId,
    Difficulty,
    LimitHit,
    Outcome,
    Usage,
)
from trafficcontrol.errors import ConfigError
from trafficcontrol.runtime.pool import command_event
from trafficcontrol.settings import Settings, load_settings

pytestmark = pytest.mark.e2e

OPUS = ModelFamily.OPUS
SESSION_S = 5 * 3600.0
TURN_A = Usage(input_tokens=2000, cache_read_tokens=10_000, cost_usd=0.1)
FINAL_A = Usage(
    input_tokens=3000,
    output_tokens=800,
    cache_read_tokens=20_000,
    cache_creation_tokens=1000,
    cost_usd=0.3,
)
TURN_C = Usage(input_tokens=10_000, output_tokens=2000, cost_usd=0.5)


def plan_toml(now: float) -> str:
    """A plan whose weekly window resets three days (UTC) after ``now``: never near it."""
    weekday = (datetime.fromtimestamp(now, UTC).weekday() + 3) % 7
    return textwrap.dedent(
        f"""\
        [capacity.prior]
        units_by_size = {{ s = 10000, m = 40000, l = 120000, xl = 300000 }}
        spread = 0.0

        [capacity.plan.weekly_reset]
        weekday = {weekday}
        timezone = "UTC"

        [capacity.plan.all_models]
        session_units = 5_000_000
        weekly_units = 50_000_000

        [capacity.plan.families.opus]
        session_units = 300_000
        weekly_units = 3_000_000
        max_concurrent = 2
        """
    )


def step(app: App, settings: Settings, now: float) -> list[AnyEvent]:
    """One pass of the loop: ``decide``, then journal its commands as the shell does."""
    decision = decide(app.read_state(), now, settings.scheduler())
    events: list[AnyEvent] = [command_event(c, now, str(app.home.logs)) for c in decision.commands]
    if events:
        app.journal().append(events)
    return events


class Scene:
    """A state home with a plan and a morning of work (see ``build``)."""

    def __init__(self, tmp_path: Path) -> None:
        self.now = time.time()
        self.t0 = self.now - 7200.0
        self.home = tmp_path / "home"
        self.home.mkdir()
        (self.home / "config.toml").write_text(plan_toml(self.now))
        self.settings = load_settings(self.home / "config.toml")
        self.plan = self.settings.capacity.plan
        self.week_end = weekly_window_bounds(self.now, self.plan.weekly_reset)[1]
        self.session_end = self.t0 + 60 + SESSION_S
        self.app = App(Home(self.home), environ=dict(os.environ), settings=self.settings)
        self.dispatched: list[AnyEvent] = []
        self.corrections: list[AnyEvent] = []
        self.deferred: list[AnyEvent] = []

    def build(self) -> None:
        """a (hard) and c (hard) on opus, b on sonnet; a reports usage and succeeds, b's
        usage is never reported, the provider reports its windows, c hits the weekly
        opus limit; later d (hard) finds the learned limit full and waits."""
        app, t0 = self.app, self.t0
        tasks = [
            task("a", difficulty=Difficulty.HARD),
            task("b"),
            task("c", difficulty=Difficulty.HARD),
        ]
        submit(app, [project(self.home.parent / "p", agent="claude")], tasks)
        app.journal().append([CapacityConfigured(at=t0 - 10, config=self.settings.capacity)])
        self.dispatched = step(app, self.settings, t0)
        a, b, c = AttemptId("a#1"), AttemptId("b#1"), AttemptId("c#1")
        app.journal().append(
            [
                TurnUsageReported(at=t0 + 60, attempt_id=a, model="opus", usage=TURN_A),
                AttemptFinished(
                    at=t0 + 120, attempt_id=a, outcome=Outcome.SUCCEEDED, usage=FINAL_A
                ),
                AgentSessionStarted(at=t0 + 150, attempt_id=b, session_id="s-b"),
                AttemptFinished(at=t0 + 200, attempt_id=b, outcome=Outcome.SUCCEEDED),
                RateLimitObserved(
                    at=t0 + 400,
                    attempt_id=c,
                    window="five_hour",
                    status="allowed",
                    utilization=0.25,
                    resets_at=self.session_end,
                ),
                TurnUsageReported(at=t0 + 600, attempt_id=c, model="opus", usage=TURN_C),
                RateLimitObserved(
                    at=t0 + 650,
                    attempt_id=c,
                    window="seven_day",
                    status="allowed",
                    utilization=0.1,
                    resets_at=self.week_end,
                ),
                AttemptFinished(
                    at=t0 + 700,
                    attempt_id=c,
                    outcome=Outcome.FAILED,
                    error="usage limit reached",
                    limit_hit=LimitHit(
                        window="seven_day_opus",
                        resets_at=self.week_end,
                        status=429,
                        message="usage limit reached",
                    ),
                ),
            ]
        )
        self.corrections = step(app, self.settings, t0 + 700)
        submit(app, [], [task("d", difficulty=Difficulty.HARD)])
        self.deferred = step(app, self.settings, time.time())
        app.close()

    @property
    def opus_units(self) -> float:
        return self.plan.units(OPUS, FINAL_A) + self.plan.units(OPUS, TURN_C)


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    built = Scene(tmp_path)
    built.build()
    return built


def by_window(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["window"]: w for w in report["windows"]}


def test_the_scene_is_what_the_loop_would_have_journaled(scene: Scene) -> None:
    routes = {
        e.attempt_id: (e.model, e.route)
        for e in scene.dispatched
        if isinstance(e, AttemptDispatched)
    }
    assert routes == {
        "a#1": ("opus", "hint hard"),
        "b#1": ("sonnet", "default (size s)"),
        "c#1": ("opus", "hint hard"),
    }
    assert [type(e).__name__ for e in scene.corrections].count("LimitCorrected") == 1
    [deferred] = [e for e in scene.deferred if isinstance(e, TaskDeferred)]
    assert (deferred.task_id, deferred.until) == ("d", scene.week_end)


def test_capacity_json_figures_sources_limits_and_unknown_usage(scene: Scene) -> None:
    report = tc_json("capacity", home=scene.home)
    windows = by_window(report)
    opus = scene.opus_units  # 51,250 from a, 100,000 from c
    assert opus == 151_250

    session_opus = windows["session/opus"]
    assert session_opus["used_units"] == pytest.approx(opus)
    assert session_opus["source"] == "estimated"
    assert session_opus["limit"] == {
        "effective": 300_000,
        "configured": 300_000,
        "source": "configured",
        "last_correction": None,
    }
    assert session_opus["remaining_units"] == pytest.approx(300_000 - opus)
    assert session_opus["utilization"] == pytest.approx(opus / 300_000)
    assert session_opus["burn_rate"]["source"] == "estimated"
    assert session_opus["projection"]["source"] == "estimated"
    assert session_opus["resets_at"]["epoch"] == pytest.approx(scene.session_end)
    assert session_opus["resets_at"]["iso"] == datetime.fromtimestamp(
        scene.session_end, UTC
    ).isoformat(timespec="seconds")
    assert session_opus["cost_usd"] == pytest.approx(0.8)

    # The provider's five_hour figure, plus c's turn after it: reported+estimated.
    session_all = windows["session/all"]
    assert session_all["source"] == "reported+estimated"
    assert session_all["used_units"] == pytest.approx(0.25 * 5_000_000 + 100_000)
    assert session_all["reported_at"]["epoch"] == pytest.approx(scene.t0 + 400)
    assert session_all["units_since_report"] == pytest.approx(100_000)
    # seven_day came after the last usage: the provider's figure alone.
    weekly_all = windows["weekly/all"]
    assert weekly_all["source"] == "reported"
    assert weekly_all["used_units"] == pytest.approx(0.1 * 50_000_000)

    # b ran a session whose usage nobody reported: unknown, never zero.
    session_sonnet = windows["session/sonnet"]
    assert (session_sonnet["used_units"], session_sonnet["unknown_entries"]) == (0, 1)
    assert session_sonnet["limit"]["effective"] is None
    assert session_all["unknown_entries"] == 1

    # c's limit hit taught weekly/opus its limit: what it held when the provider refused.
    weekly_opus = windows["weekly/opus"]
    limit = weekly_opus["limit"]
    assert limit["source"] == "learned"
    assert limit["configured"] == 3_000_000
    assert limit["effective"] == pytest.approx(opus)
    correction = limit["last_correction"]
    assert correction["reason"] == "limit_hit"
    assert correction["used_at_hit"] == pytest.approx(opus)
    assert correction["previous"] == 3_000_000
    assert correction["at"]["epoch"] == pytest.approx(scene.t0 + 700)

    hits = report["limit_hits"]
    assert hits["count"] == 1 and hits["pending"] == []
    assert [(h["attempt"], h["window"]) for h in hits["recent"]] == [("c#1", "seven_day_opus")]
    assert {s["window_type"]: s["source"] for s in report["signals"]} == {
        "five_hour": "reported",
        "seven_day": "reported",
    }
    assert report["warnings"], "50% of the opus session window was crossed"
    assert all(
        w["source"] in ("estimated", "reported", "reported+estimated") for w in report["warnings"]
    )
    assert "session/opus" in {w["window"] for w in report["warnings"]}
    assert report["plan"]["configured"] is True and report["plan"]["source"] == "journal"
    assert report["now"]["epoch"] >= scene.now


def test_capacity_json_sparkline_breakdown_and_models(scene: Scene) -> None:
    report = tc_json("capacity", home=scene.home)
    pools = {p["pool"]: p for p in report["usage_24h"]["pools"]}
    assert set(pools) == {"all", "opus", "sonnet"}
    everything = pools["all"]
    assert len(everything["hourly_units"]) == 24 and len(everything["sparkline"]) == 24
    assert sum(everything["hourly_units"]) == pytest.approx(scene.opus_units)
    assert everything["unknown_entries"] == 1
    assert (pools["sonnet"]["total_units"], pools["sonnet"]["unknown_entries"]) == (0, 1)
    assert "█" in pools["opus"]["sparkline"]

    breakdown = report["weekly_breakdown"]
    assert breakdown["window"] == "weekly/all"
    assert breakdown["by_project"] == [
        {"name": "p", "units": pytest.approx(scene.opus_units), "unknown_entries": 1}
    ]
    assert [a["name"] for a in breakdown["by_agent"]] == ["claude"]

    models = {m["model"]: m for m in report["by_model"]}
    assert models["opus"]["units"] == pytest.approx(scene.opus_units)
    assert models["opus"]["input_tokens"] == FINAL_A.input_tokens + TURN_C.input_tokens
    assert models["opus"]["output_tokens"] == FINAL_A.output_tokens + TURN_C.output_tokens
    assert models["opus"]["simulated"] is False
    assert (models["sonnet"]["units"], models["sonnet"]["unknown_entries"]) == (0, 1)


def test_capacity_text_labels_every_figure(scene: Scene) -> None:
    text = tc("capacity", home=scene.home).stdout
    now_part, forecast = text.split("Forecast (estimated from the local burn rate)")
    rows = {line.split()[0]: line for line in now_part.splitlines() if "/" in line[:18]}
    assert "151.2k" in rows["session/opus"] and " estimated " in rows["session/opus"]
    assert "300k configured" in rows["session/opus"] and " 50% " in rows["session/opus"]
    assert "1.35M +1 unknown" in rows["session/all"]
    assert " reported+estimated " in rows["session/all"]
    assert re.search(r" 5M \+1 unknown +reported ", rows["weekly/all"])
    assert "0 +1 unknown" in rows["session/sonnet"] and "none" in rows["session/sonnet"]
    assert "151.2k learned" in rows["weekly/opus"] and "100%" in rows["weekly/opus"]
    assert "(in " in rows["session/all"]  # time to reset
    assert "weekly/opus: limit 151,250 (learned; configured 3,000,000)" in now_part
    assert "the provider refused on" in now_part and "151,250 units used" in now_part
    forecast_rows = {line.split()[0]: line for line in forecast.splitlines() if "/" in line[:18]}
    assert "burn/h" in forecast and "at reset (low–high)" in forecast
    assert forecast_rows["weekly/opus"].rstrip().endswith("reached")
    assert "no data yet" in forecast_rows["session/sonnet"]
    assert "limit hits: 1" in text and "c#1 (opus): seven_day_opus" in text
    assert "provider report five_hour: 25% used" in text
    assert "capacity session/opus at 50% (estimated): crossed 50%" in text  # a warning
    assert "by project: p 151,250 +1 unknown" in text
    assert "by agent: claude 151,250 +1 unknown" in text
    assert re.search(r" all +[▁▂▃▄▅▆▇█]{24} +151,250 \+1 unknown", text)
    assert "No capacity plan" not in text


def test_show_prints_route_reservation_and_limit_hit(scene: Scene) -> None:
    shown = tc_json("show", "c", home=scene.home)
    [attempt] = shown["attempt_list"]
    assert attempt["model"] == "opus" and attempt["route"] == "hint hard"
    assert attempt["expected_units"] == pytest.approx(50_000)  # 10,000 for size s, x5 for opus
    hit = attempt["limit_hit"]
    assert hit["window"] == "seven_day_opus" and hit["status"] == 429
    assert hit["resets_at"]["epoch"] == pytest.approx(scene.week_end)
    assert shown["difficulty"] == "hard"
    assert shown["wait_reason"] == "capacity: provider limit reached (seven_day_opus)"
    assert tc_json("show", "b", home=scene.home)["attempt_list"][0]["route"] == ("default (size s)")

    text = tc("show", "c", home=scene.home).stdout
    assert "attempt c#1: failed  claude/opus" in text
    assert "route: hint hard" in text
    assert "reserved: 50,000 units" in text
    assert f"limit_hit: seven_day_opus, resets {local_time(scene.week_end)} (in " in text
    assert "(HTTP 429): usage limit reached" in text
    assert (
        "waiting: capacity: provider limit reached (seven_day_opus),"
        f" until {local_time(scene.week_end)} (in "
    ) in text


def test_status_and_tasks_say_why_a_task_waits_and_until_when(scene: Scene) -> None:
    until = local_time(scene.week_end)
    status = tc_json("status", home=scene.home)
    waiting = {w["task"]: w for w in status["waiting"]}
    assert waiting["d"]["reason"] == "capacity: opus weekly/opus window full"
    assert waiting["c"]["reason"] == "capacity: provider limit reached (seven_day_opus)"
    assert waiting["d"]["until"]["epoch"] == pytest.approx(scene.week_end)
    assert waiting["d"]["in_s"] > 0

    text = tc("status", home=scene.home).stdout
    assert f"d  waiting — capacity: opus weekly/opus window full, until {until} (in " in text
    assert f"c  waiting — capacity: provider limit reached (seven_day_opus), until {until}" in text

    table = tc("tasks", "--state", "waiting", home=scene.home).stdout
    assert f"capacity: opus weekly/opus window full, until {until} (in " in table
    listed = {t["id"]: t for t in tc_json("tasks", home=scene.home)}
    assert listed["d"]["wait_reason"] == "capacity: opus weekly/opus window full"
    assert listed["d"]["retry_at_epoch"] == pytest.approx(scene.week_end)
    assert "wait_reason" not in listed["a"]


def test_without_a_plan_usage_is_still_shown_with_a_hint(tmp_path: Path) -> None:
    home = tmp_path / "home"
    now = time.time()
    app = App(Home(home), environ=dict(os.environ), settings=Settings())
    submit(app, [project(tmp_path / "p", agent="claude")], [task("a")])
    step(app, app.settings, now - 600)
    usage = Usage(input_tokens=1200, output_tokens=300, cost_usd=0.02)
    app.journal().append(
        [
            AttemptFinished(
                at=now - 300, attempt_id=AttemptId("a#1"), outcome=Outcome.SUCCEEDED, usage=usage
            )
        ]
    )
    app.close()
    units = Settings().capacity.plan.units(ModelFamily.SONNET, usage)

    report = tc_json("capacity", home=home)
    assert report["plan"]["configured"] is False
    windows = by_window(report)
    assert set(windows) == {"session/all", "weekly/all", "session/sonnet", "weekly/sonnet"}
    assert windows["session/all"]["used_units"] == pytest.approx(units)
    assert windows["session/all"]["limit"]["effective"] is None
    assert windows["session/all"]["remaining_units"] is None
    [model] = report["by_model"]
    assert (model["model"], model["input_tokens"], model["output_tokens"]) == ("sonnet", 1200, 300)

    text = tc("capacity", home=home).stdout
    assert "No capacity plan is configured" in text
    assert str(home / "config.toml") in text and "[capacity.plan.all_models]" in text
    assert f"{units:,.0f}" in text and "1,200" in text

    # A plan written to config.toml since: shown (and said so) before any tc run journals it.
    (home / "config.toml").write_text(plan_toml(now))
    report = tc_json("capacity", home=home)
    assert report["plan"]["configured"] is True and report["plan"]["source"] == "config.toml"
    assert "tc run journals it" in report["plan"]["note"]
    assert by_window(report)["session/all"]["limit"]["effective"] == 5_000_000
    assert "note: plan from config.toml" in tc("capacity", home=home).stdout


def readme_plan() -> str:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Capacity and model routing", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert match, "the README's capacity section has a TOML example"
    return match.group(1)


def test_the_readme_plan_example_loads(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(readme_plan())
    settings = load_settings(config)
    plan = settings.capacity.plan
    assert (plan.all_models.session_units, plan.all_models.weekly_units) == (6e6, 60e6)
    assert plan.family(OPUS).weekly_units == 15e6 and plan.family(OPUS).max_concurrent == 2
    assert plan.weights(OPUS) == plan.weights(OPUS).__class__(family_factor=5.0)
    assert plan.weekly_reset == WeeklyReset(weekday=0, hour=9, timezone="Europe/Berlin")
    assert plan.family(ModelFamily.SONNET).weekly_units == 50e6
    assert settings.capacity.thresholds == (0.5, 0.7, 0.85, 0.95)
    assert settings.routing.opus_from_size is SizeBucket.XL
    assert settings.routing.model(ModelFamily.HAIKU) == "haiku"
    # The hint tc capacity prints without a plan is valid config too.
    config.write_text(textwrap.dedent(PLAN_HINT))
    assert load_settings(config).capacity.plan.all_models.weekly_units == 60e6


def test_sparkline_scales_to_the_busiest_hour_and_keeps_small_use_visible() -> None:
    assert sparkline([0.0, 0.0]) == "▁▁"
    assert sparkline([0.0, 1.0, 100.0]) == "▁▂█"
    assert sparkline([50.0, 100.0]) == "▅█"


def test_short_units_read_at_a_glance() -> None:
    assert [short(v) for v in (None, 9876, 151_250, 300_000, 1_350_000, 5e6)] == [
        "-",
        "9,876",
        "151.2k",
        "300k",
        "1.35M",
        "5M",
    ]


def test_tc_run_prints_capacity_warnings_as_they_are_journaled(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        textwrap.dedent(
            """
            [capacity.plan.all_models]
            session_units = 20000
            [capacity.prior]
            spread = 0.05
            units_by_size = { s = 9000, m = 9000, l = 9000, xl = 9000 }
            """
        )
    )
    backlog = tmp_path / "backlog.toml"
    backlog.write_text(
        textwrap.dedent(
            f"""
            [[projects]]
            id = "p"
            path = "{tmp_path}"
            sim = {{ duration = 0.01, jitter = 0.0, tokens_in = 4000 }}
            [[tasks]]
            id = "a"
            project = "p"
            prompt = "one"
            [[tasks]]
            id = "b"
            project = "p"
            prompt = "two"
            depends_on = ["a"]
            """
        )
    )
    tc("submit", str(backlog), home=home)
    done = tc("run", "--no-live", home=home)
    # Two sonnet attempts of ~4,000 input tokens (the sim draws 50-150%): ~8,800 units
    # each (input + 5 x output + 0.1 x cache reads) of the 20,000-unit session window.
    lines = [line for line in done.stderr.splitlines() if "warning: capacity" in line]
    assert any(re.search(r"session/all at \d+% \(estimated\): crossed \d+%", x) for x in lines)
    assert len(lines) == len(set(lines))  # each warning once
    journaled = tc_json("capacity", home=home)["warnings"]
    assert len(journaled) == len(lines)


def test_an_api_key_plan_loads_from_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "[capacity.api_key.families.opus]\n"
        "requests_per_minute = 50\n"
        "output_tokens_per_minute = 80000\n"
    )
    settings = load_settings(config)
    assert settings.capacity.api_key is not None
    limits = settings.capacity.api_key.limits(OPUS)
    assert (limits.requests_per_minute, limits.output_tokens_per_minute) == (50, 80_000)
    config.write_text("[capacity.api_key.families.opus]\nrequests_per_hour = 5\n")
    with pytest.raises(ConfigError, match="requests_per_hour"):
        load_settings(config)


def test_status_reports_agent_context_use(scene: Scene) -> None:
    sessions = tc_json("status", home=scene.home)["sessions"]
    # Two attempts reported turns (a, c): their context is input + cache tokens.
    assert sessions["measured"] == 2 and sessions["rotations"] == 0
    peak = max(
        TURN_A.input_tokens + TURN_A.cache_read_tokens + TURN_A.cache_creation_tokens,
        TURN_C.input_tokens + TURN_C.cache_read_tokens + TURN_C.cache_creation_tokens,
    )
    assert sessions["peak_utilisation"] == pytest.approx(peak / 200_000)
    assert "agent contexts: 2 sessions measured" in tc("status", home=scene.home).stdout
