"""What people see: the live view of ``tc run`` rendered by a real Rich console."""

from __future__ import annotations

from rich.console import Console

from tests.helpers import task
from trafficcontrol.cli.views import LiveView, status_dict
from trafficcontrol.domain.events import AttemptDispatched, AttemptFinished, BacklogSubmitted
from trafficcontrol.domain.model import Outcome, ProjectId, ProjectSpec, Usage
from trafficcontrol.domain.state import State, apply


def _state() -> State:
    state = State()
    project = ProjectSpec(id=ProjectId("p"), path="/nowhere", agent="sim", lock_in_place=False)
    apply(
        state,
        BacklogSubmitted(
            at=0.0,
            source="t",
            projects=[project],
            tasks=[
                task("a"),
                task("b"),
                task("c", deps=["a"]),
            ],
        ),
    )
    for tid, model in (("a", "opus"), ("b", None)):
        apply(
            state,
            AttemptDispatched(
                at=10.0,
                attempt_id=f"{tid}#1",
                task_id=tid,
                attempt_no=1,  # type: ignore[arg-type]
                backend="sim",
                model=model,
                resources=(),
                deadline=None,
                log_path="x",
            ),
        )
    apply(
        state,
        AttemptFinished(
            at=12.0,
            attempt_id="a#1",
            outcome=Outcome.SUCCEEDED,  # type: ignore[arg-type]
            usage=Usage(input_tokens=100, output_tokens=20, cost_usd=0.5),
            simulated=True,
        ),
    )
    return state


def test_live_view_shows_progress_counts_and_running_agents() -> None:
    console = Console(record=True, width=120, color_system=None)
    console.print(LiveView().render(_state(), now=75.0))
    text = console.export_text()
    assert "1/3 finished" in text
    assert "done 1" in text and "running 1" in text and "ready 1" in text
    assert "b#1" in text and "[simulated]" in text
    assert "1m05s" in text  # elapsed of b#1, started at 10.0


def test_status_reports_usage_by_model_with_its_simulated_label() -> None:
    data = status_dict(_state(), orchestrator_running=False)
    assert data["by_state"]["done"] == 1
    assert data["rate_limits"] == []
    assert data["usage_by_model"] == {
        "opus": {
            "input_tokens": 100,
            "output_tokens": 20,
            "cache_read_tokens": 0,
            "cache_creation_tokens": 0,
            "cost_usd": 0.5,
            "simulated": True,
        }
    }


def test_status_labels_provider_rate_limits_as_reported() -> None:
    from trafficcontrol.domain.events import RateLimitObserved

    state = _state()
    apply(
        state,
        RateLimitObserved(
            at=0.0,
            attempt_id="b#1",
            window="five_hour",
            status="allowed_warning",  # type: ignore[arg-type]
            utilization=0.9,
            resets_at=3600.0,
        ),
    )
    [limit] = status_dict(state, orchestrator_running=True)["rate_limits"]
    assert limit == {
        "window": "five_hour",
        "status": "allowed_warning",
        "utilization": 0.9,
        "resets_at": "1970-01-01T01:00:00+00:00",
        "observed_at": "1970-01-01T00:00:00+00:00",
        "reported": True,
    }
