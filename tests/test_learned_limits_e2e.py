"""Limits learned from reality, end to end: the real ``anthropic`` client (through the api
backend and the real agent pool) against the protocol server, which refuses with 429 at
a hidden limit the plan overstates twofold.

The shell is ``bench.stepped.SteppedShell``: ``decide`` → journal-and-fold the commands →
run the dispatched attempts in the real ``AgentPool`` → fold what they reported, with
the time moved by hand (a window is an hour of manual clock; no sleeps). The
provider's window restarts when ours does.
"""

from __future__ import annotations

from pathlib import Path

from bench.stepped import ManualClock, SteppedShell

from tests.provider.server import TEST_API_KEY, ProviderServer, TurnUsage, text
from trafficcontrol.adapters.agents.anthropic_api import ApiBackend
from trafficcontrol.domain.capacity.costs import CostPrior, SizeBucket
from trafficcontrol.domain.capacity.plans import SharedLimits, SubscriptionPlan
from trafficcontrol.domain.capacity.tracker import CapacityConfig
from trafficcontrol.domain.capacity.windows import Window, WindowKind
from trafficcontrol.domain.decide import SchedulerConfig
from trafficcontrol.domain.events import (
    AnyEvent,
    AttemptDispatched,
    BacklogSubmitted,
    CapacityConfigured,
    LimitCorrected,
)
from trafficcontrol.domain.model import ProjectId, ProjectSpec, TaskId, TaskSpec
from trafficcontrol.domain.state import State

WINDOW_S = 3600.0
T0 = 1_900_000_000.0
PER_REQUEST = TurnUsage(input_tokens=1000, output_tokens=200)
HIDDEN_TOKENS = 60_000
"""The provider refuses once 50 responses were delivered in a window."""
UNITS_PER_REQUEST = 1000 + 200 * 5  # sonnet: input + 5 x output (plans.UnitWeights)
HIDDEN_UNITS = HIDDEN_TOKENS // (1000 + 200) * UNITS_PER_REQUEST
SESSION = Window(kind=WindowKind.SESSION)


async def run_windows(
    provider: ProviderServer, tmp_path: Path, windows: int
) -> tuple[State, list[int], list[float | None], list[AnyEvent]]:
    plan = SubscriptionPlan(
        all_models=SharedLimits(session_units=2.0 * HIDDEN_UNITS),  # the plan overstates
        session_length_s=WINDOW_S,
    )
    prior = CostPrior(units_by_size={size: 3000.0 for size in SizeBucket}, spread=0.3)
    project = ProjectSpec(id=ProjectId("p"), path=str(tmp_path), agent="api")
    tasks = [
        TaskSpec(id=TaskId(f"t{i:03}"), project=project.id, title=f"t{i}", prompt="answer")
        for i in range(400)
    ]
    clock = ManualClock(T0)
    environ = {"ANTHROPIC_BASE_URL": provider.url, "ANTHROPIC_API_KEY": TEST_API_KEY}
    shell = SteppedShell(
        [
            CapacityConfigured(at=T0, config=CapacityConfig(plan=plan, prior=prior)),
            BacklogSubmitted(at=T0, source="test", projects=[project], tasks=tasks),
        ],
        {"api": ApiBackend(environ=environ, clock=clock)},
        clock,
        SchedulerConfig(max_agents=2),
        tmp_path,
    )
    hits: list[int] = []
    effective: list[float | None] = []
    for window in range(windows):
        end = T0 + (window + 1) * WINDOW_S
        provider.new_window(resets_at=end)
        before = provider.limit_hits
        while clock.t < end:
            events = await shell.turn()
            if not events:
                # Nothing to do until a reset (or the end of this window).
                clock.t = min(shell.next_wakeup or end, end)
            elif any(isinstance(e, AttemptDispatched) for e in events):
                shell.advance(30.0)
        hits.append(provider.limit_hits - before)
        effective.append(shell.state.capacity.book.limits.effective(SESSION))
        clock.t = end
    return shell.state, hits, effective, shell.journal


async def test_the_limit_is_learned_from_429s_within_two_windows_and_never_hit_again(
    provider: ProviderServer, tmp_path: Path
) -> None:
    provider.script(*[text("ok", usage=PER_REQUEST) for _ in range(1000)])
    provider.set_hidden_limit(HIDDEN_TOKENS, resets_at=T0 + WINDOW_S)
    state, hits, effective, journal = await run_windows(provider, tmp_path, windows=4)

    assert hits[0] >= 1  # the overstated plan ran into the provider's limit once
    learned = effective[1]
    assert learned is not None
    assert abs(learned - HIDDEN_UNITS) / HIDDEN_UNITS <= 0.05, (learned, HIDDEN_UNITS)
    assert hits[1:] == [0, 0, 0], hits  # no further 429 once learned (probing included)
    corrections = [e.correction for e in journal if isinstance(e, LimitCorrected)]
    first = corrections[0]
    assert first.reason.value == "limit_hit"
    assert first.window == SESSION and first.previous == 2.0 * HIDDEN_UNITS
    assert first.used_at_hit == HIDDEN_UNITS  # the evidence: what was used when it hit
    # The windows after the lesson still did real work (the plan is not over-corrected).
    work = [e for e in journal if isinstance(e, AttemptDispatched) and e.at >= T0 + 2 * WINDOW_S]
    assert len(work) >= 0.8 * HIDDEN_UNITS / UNITS_PER_REQUEST
    assert state.capacity.limit_hits == sum(hits)
    routes = {(a.model, a.route) for a in state.attempts.values()}
    assert routes == {("sonnet", "default (size s)")}  # a full shared window is waited out
