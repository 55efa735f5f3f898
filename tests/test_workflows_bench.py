"""``bench workflows``, asserted: the lead's context stays small, handoffs beat transcripts."""

from __future__ import annotations

from bench.workflows import run


def test_the_lead_stays_below_half_its_window_and_handoffs_are_small() -> None:
    report = run(seed=1, n_tasks=800)
    assert report["violations"] == []
    lead = report["lead"]
    assert isinstance(lead, dict)
    assert lead["uncompressed_tokens_would_be"] > 0.5 * lead["window_tokens"]  # it had to act
    assert lead["peak_utilisation"] < 0.5
    assert lead["refused"] == 0
    prompts = report["first_prompts"]
    assert isinstance(prompts, dict)
    assert prompts["reduction"] >= 0.4
    share = report["workflows"]
    assert isinstance(share, dict)
    assert 0 < share["standard_share"] < 1  # the custom workflow counts as non-standard
