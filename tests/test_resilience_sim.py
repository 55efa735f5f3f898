"""The fault-injection runs of ``bench resilience``, asserted (deterministic simulator)."""

from __future__ import annotations

from bench.resilience import outage_report, transient_report


def test_thirty_percent_transient_failures_recover_without_a_human() -> None:
    report = transient_report(seed=1, n_tasks=300, rate=0.3)
    assert report["violations"] == [] and report["settled"] is True
    assert 0.2 <= report["transient_share"] <= 0.4  # type: ignore[operator]
    assert report["tasks_hit_recovered_share"] >= 0.99  # type: ignore[operator]
    assert report["tasks_failed"] == 0


def test_an_outage_opens_the_breaker_probes_once_per_interval_and_recovers_fast() -> None:
    report = outage_report(seed=1, n_tasks=300)
    assert report["violations"] == [] and report["settled"] is True
    assert report["incidents"] >= 1
    assert report["opus_dispatched_while_open"] == 0
    assert report["half_open_periods"] >= 2
    assert report["max_probes_per_half_open"] == 1
    assert report["sonnet_dispatched_during_outage"] > 0  # other models unaffected
    assert report["sonnet_breaker_opened"] is False
    assert report["first_opus_answered_after_outage_s"] <= 30  # type: ignore[operator]
    assert report["tasks_failed"] == 0


def test_against_the_protocol_server_one_request_per_attempt_and_the_breaker_holds() -> None:
    """The same runs with the real ``anthropic`` client and the api backend."""
    from bench.resilience import real_reports

    reports = real_reports(seed=1, n_tasks=40, rate=0.3)
    transient, outage = reports["transient_real"], reports["outage_real"]
    assert isinstance(transient, dict) and isinstance(outage, dict)
    assert transient["requests_at_server"] == transient["attempts"]  # one retry layer
    assert transient["transient_failed_attempts"] > 0
    assert transient["tasks_hit_recovered_share"] == 1.0
    assert transient["tasks_failed"] == 0
    assert outage["requests_at_server"] == outage["attempts"]
    assert outage["opus_dispatched_while_open"] == 0
    assert outage["max_probes_per_half_open"] == 1
    assert outage["sonnet_dispatched_during_outage"] > 0
    assert outage["first_opus_answered_after_outage_s"] <= 30  # type: ignore[operator]
    assert outage["tasks_failed"] == 0
