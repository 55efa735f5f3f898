"""The context budget manager: thresholds, compression, refusal at the cap, calibration."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from trafficcontrol.domain.context import (
    Category,
    Compressed,
    ContextBudget,
    Estimator,
    Refused,
    Thresholds,
    Warned,
    extractive_summary,
)


def words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(1000)}" for _ in range(n)) + "."


def test_below_the_compress_threshold_nothing_happens() -> None:
    budget = ContextBudget(10_000)
    assert budget.add("sys", Category.SYSTEM, "x" * 4000, compressible=False) == []
    assert budget.used == 1000 and budget.utilisation() == 0.1
    assert not budget.must_delegate()


def test_past_the_compress_threshold_completed_work_is_summarised_with_its_ids() -> None:
    budget = ContextBudget(10_000)
    budget.add("sys", Category.SYSTEM, "s" * 4000, compressible=False)
    for i in range(11):
        actions = budget.add(f"r{i}", Category.RESULTS, f"Result {i} is fine. " + "x" * 1200)
    assert budget.utilisation() <= 0.40
    compressed = [a for a in actions if isinstance(a, Compressed)] or [
        e for e in budget.entries.values() if e.summary_of
    ]
    assert compressed
    summary = next(e for e in budget.entries.values() if e.summary_of)
    assert summary.summary_of[0] == "r0"
    assert "[r0] Result 0 is fine." in summary.text
    fetched = budget.fetch("r0")
    assert fetched is not None and fetched.text.startswith("Result 0")
    assert "sys" in budget.entries  # not compressible: kept as is


def test_delegate_warn_and_cap() -> None:
    budget = ContextBudget(10_000)
    budget.add("sys", Category.SYSTEM, "s" * 18_000, compressible=False)  # 45%
    assert budget.must_delegate()
    assert budget.add("d", Category.DECISIONS, "d" * 2_000, compressible=False) == [
        Warned(utilisation=0.5)
    ]
    assert budget.add("d2", Category.DECISIONS, "d" * 400, compressible=False) == []  # once
    refused = budget.add("big", Category.TASK_SPECS, "b" * 4_000, compressible=False)
    assert refused == [
        Refused(entry_id="big", tokens=1000, reason="would take the context past 60% of its window")
    ]
    assert "big" not in budget.entries and budget.utilisation() <= 0.6


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(Category)),
            st.integers(min_value=1, max_value=30_000),
            st.booleans(),
        ),
        max_size=80,
    ),
    st.integers(min_value=2_000, max_value=50_000),
)
def test_utilisation_never_exceeds_the_cap_whatever_is_added(
    adds: list[tuple[Category, int, bool]], window: int
) -> None:
    budget = ContextBudget(window)
    for i, (category, chars, compressible) in enumerate(adds):
        budget.add(f"e{i}", category, "x" * chars, compressible=compressible)
        assert budget.utilisation() <= budget.thresholds.cap + 1e-9
        assert budget.used == sum(e.tokens for e in budget.entries.values())
    assert budget.peak <= budget.thresholds.cap + 1e-9


def test_the_estimator_converges_on_a_provider_that_reports_true_counts() -> None:
    rng = random.Random(7)
    estimator = Estimator()  # starts at 4 characters per token
    true_ratio = 3.1  # the provider's tokenizer
    errors = []
    for _ in range(40):
        text = words(rng.randrange(50, 400), rng.randrange(10**6))
        reported = round(len(text) / true_ratio * rng.uniform(0.97, 1.03))
        errors.append(abs(estimator.estimate(text) - reported) / reported)
        estimator.observe(len(text), reported)
    assert errors[0] > 0.2  # uncalibrated: off by the ratio
    assert max(errors[-10:]) < 0.06  # calibrated: within the provider's own noise
    assert estimator.error is not None and estimator.error < 0.06
    assert abs(estimator.chars_per_token - true_ratio) < 0.1


def test_thresholds_must_be_ordered() -> None:
    try:
        Thresholds(compress=0.5, delegate=0.4)
    except ValueError as exc:
        assert "compress <= delegate" in str(exc)
    else:
        raise AssertionError("disordered thresholds accepted")


def test_the_extractive_summary_keeps_ids_and_first_sentences() -> None:
    budget = ContextBudget(1000)
    budget.add("a", Category.RESULTS, "Alpha done. Details follow\nmore")
    entries = list(budget.entries.values())
    assert extractive_summary(entries) == "[a] Alpha done."
