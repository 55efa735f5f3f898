"""Retry schedules: exponential backoff with full jitter, caps and budgets. Pure.

Design note. After a failed attempt the fold decides, from its class (``failures``):

- ``transient`` / ``infrastructure``: wait ``uniform(0, min(cap, base * 2**(n-1)))``
  (full jitter: many tasks failing together spread out instead of retrying in step),
  at least the provider's ``retry-after``; at most ``transient_attempts`` such
  failures per task (``unknown_attempts`` for errors no rule knows) and never later
  than ``budget_s`` after the task's first transient failure — then the task fails;
- ``task``: the same backoff without jitter (``retry_backoff_s * 2**(n-1)``), counted
  against the task's ``max_attempts``;
- ``permanent``: the task fails now; ``limit``: it waits for the reset (capacity).

The jitter is drawn from a hash of (task id, attempt number), not a random source: the
fold stays a pure function of the journal, so a restart computes the same retry time
(which the state, its snapshots and ``tc status`` carry) instead of retrying at once.
"""

from __future__ import annotations

import zlib

import msgspec


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    cap_s: float = 600.0
    """Longest wait between two attempts (before ``retry-after``)."""
    transient_attempts: int = 8
    """Transient failures a task may have before it fails."""
    unknown_attempts: int = 3
    """Failures no rule classifies (treated as transient) a task may have."""
    budget_s: float = 6 * 3600.0
    """No transient retry later than this after the task's first transient failure."""

    def __post_init__(self) -> None:
        if self.cap_s <= 0 or self.budget_s <= 0:
            raise ValueError("retry cap_s and budget_s must be > 0")
        if self.transient_attempts < 0 or self.unknown_attempts < 0:
            raise ValueError("retry attempt counts must be >= 0")


def jitter(key: str) -> float:
    """A uniform draw in [0, 1) that depends only on ``key``."""
    return zlib.crc32(key.encode()) / 2**32


def full_jitter_delay(
    base_s: float, n: int, cap_s: float, key: str, retry_after_s: float | None = None
) -> float:
    """Delay before retry ``n`` (1 = the first retry)."""
    delay = jitter(key) * task_delay(base_s, n, cap_s)
    return max(delay, retry_after_s or 0.0)


def task_delay(base_s: float, n: int, cap_s: float) -> float:
    """Delay before a retry after the work itself failed (no jitter: one task's own pace)."""
    return min(cap_s, base_s * 2.0 ** max(n - 1, 0))
