"""A deliberately slowed journal: the slow commits become one incident (journaled once,
shown by tc health and tc run), and the profile recommends the matching change."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from tests.cli_helpers import tc_json
from tests.helpers import journal_events, make_app, project, submit, task
from trafficcontrol.adapters.stores.sqlite import SqliteJournal
from trafficcontrol.bootstrap import App, Home
from trafficcontrol.cli.profile_report import profile_dict
from trafficcontrol.domain.events import AnyEvent, SlowOperation, SlowOperationCleared
from trafficcontrol.domain.profile import profile
from trafficcontrol.ports import Fence
from trafficcontrol.runtime.slow_watch import SlowWatch
from trafficcontrol.runtime.stats import Spans
from trafficcontrol.settings import ProfileSettings, RunSettings, Settings

DELAY_S = 0.06
"""Every append takes this much longer: past a 0.05 s threshold, under the test's patience."""


class SlowJournal(SqliteJournal):
    """The real SQLite journal on a slow disk (every append waits first)."""

    def append(self, events: Sequence[AnyEvent], fence: Fence | None = None) -> int:
        time.sleep(DELAY_S)  # the injected slowness itself
        return super().append(events, fence)


async def test_slow_commits_open_one_incident_and_recommend_a_faster_disk(tmp_path: Path) -> None:
    home = tmp_path / "home"
    app = make_app(home)
    submit(app, [project(tmp_path / "p")], [task(f"t{i}") for i in range(12)])
    app.close()
    settings = Settings(
        run=RunSettings(request_poll_s=0.05),
        profile=ProfileSettings(slow_after_s={"commit": 0.05}),
    )
    app = App(Home(home), environ=dict(os.environ), settings=settings)
    app._journal = SlowJournal(home / "journal.db")  # the real one, on a slow "disk"
    orchestrator, _notes = app.start()
    await orchestrator.run(until_idle=True)
    spans = orchestrator.stats.spans.summary()
    app.close()

    events = journal_events(home)
    opened = [e for e in events if isinstance(e, SlowOperation)]
    assert [e.operation for e in opened] == ["commit"], "one incident, however many slow commits"
    assert opened[0].seconds >= DELAY_S and opened[0].threshold_s == 0.05
    assert spans["commit"]["count"] >= 2  # group commit: fewer appends than events
    assert (spans["commit"]["p99_s"] or 0) >= DELAY_S

    incidents = tc_json("health", home=home)["incidents"]
    (slow,) = [i for i in incidents["closed"] if i["key"] == "slow:commit"]
    assert "commit took" in slow["reason"]  # closed when its orchestrator stopped
    assert not [i for i in incidents["ongoing"] if i["key"] == "slow:commit"]
    assert any(m["key"] == "slow:commit" for m in incidents["mttr"])

    data = profile_dict(profile(events), max_agents=10, cores=os.cpu_count() or 1, operations=spans)
    keys = [r["key"] for r in data["recommendations"]]
    assert "run.durability" in keys, data["recommendations"]
    (commit,) = [r for r in data["recommendations"] if r["key"] == "run.durability"]
    assert "journal commit p99" in commit["text"] and commit["figure"] >= DELAY_S


def test_an_incident_is_cleared_after_a_quiet_period() -> None:
    spans = Spans(slow_after_s={"commit": 0.1})
    watch = SlowWatch(spans, quiet_s=10.0)
    spans.observe("commit", 0.0, 0.5)
    spans.observe("commit", 1.0, 1.3)
    spans.observe("decide", 1.0, 1.01)  # fast: not an incident
    (opened,) = watch.events(now=100.0, monotonic=2.0)
    assert isinstance(opened, SlowOperation) and opened.seconds == 0.5
    spans.observe("commit", 3.0, 3.9)
    assert watch.events(now=101.0, monotonic=5.0) == []  # still the same incident
    (cleared,) = watch.events(now=120.0, monotonic=3.9 + 10.0)
    assert isinstance(cleared, SlowOperationCleared)
    assert cleared.slow_spans == 3 and abs(cleared.worst_s - 0.9) < 1e-9
    assert watch.open == []
