"""The simulated week of ``bench capacity``, asserted: the plan's promises hold in the
deterministic simulator (real decide/apply, virtual time, fixed seed)."""

from __future__ import annotations

from bench.capacity import routing_report, week_report


def test_a_simulated_week_hits_no_limit_and_uses_what_the_limits_allow() -> None:
    week = week_report(seed=1, n_tasks=1000, max_agents=10)
    assert week["violations"] == []
    assert week["queued_at_end"] > 0  # work was queued all week: capacity was the bound
    assert week["limit_hits"] == 0
    assert week["session_windows_closed"] >= 8
    assert week["session_utilisation_min"] >= 0.95
    assert week["weekly_used_share"] >= 0.95
    assert week["weekly_used_share"] <= 1.0
    assert week["dispatch_after_weekly_reset_s"] == 0.0  # resumed at the reset by itself


def test_routing_spends_far_less_opus_than_always_opus_at_no_loss_of_success() -> None:
    report = routing_report(seed=1, n_tasks=150, max_agents=10)
    routed, opus = report["routed"], report["always_opus"]
    assert isinstance(routed, dict) and isinstance(opus, dict)
    assert routed["success_rate"] >= opus["success_rate"]
    assert report["opus_tokens_saved"] >= 0.2
