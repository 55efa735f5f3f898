"""Expected cost of a task's attempt, in usage units, learned from finished attempts.

Design note. Estimates are keyed by (workflow step, model family, size bucket). Each key
keeps a running mean and variance (Welford) of the actual units of finished attempts,
shrunk towards a prior with a weight of ``prior.weight`` pseudo-attempts::

    mean = (w * prior + n * sample_mean) / (w + n)

The prior of a key is what the same (family, size) has cost over *all* steps when that
has data, else the configured ``units_by_size`` scaled by the family's unit factor. So
a new step borrows from its siblings before it has its own history, and a single odd
attempt moves the estimate only part of the way. ``high_units`` (mean + z * sd, ~p90)
is what a reservation should hold; ``mean_units`` is for forecasts and routing.
Unknown usage is not an observation: an attempt whose usage is unknown teaches nothing.
"""

from __future__ import annotations

import math
from enum import StrEnum

import msgspec

from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.plans import SubscriptionPlan


class SizeBucket(StrEnum):
    S = "s"
    M = "m"
    L = "l"
    XL = "xl"


SIZE_BOUNDS: tuple[tuple[int, SizeBucket], ...] = (
    (2_000, SizeBucket.S),
    (8_000, SizeBucket.M),
    (32_000, SizeBucket.L),
)


def size_bucket(prompt_chars: int) -> SizeBucket:
    """Bucket of a task by the length of its prompt (and attached context), in characters."""
    for bound, bucket in SIZE_BOUNDS:
        if prompt_chars < bound:
            return bucket
    return SizeBucket.XL


class CostKey(msgspec.Struct, frozen=True, kw_only=True):
    step: str
    family: ModelFamily
    size: SizeBucket


class CostPrior(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """What an attempt is assumed to cost before any attempt of its kind finished."""

    units_by_size: dict[SizeBucket, float] = msgspec.field(
        default_factory=lambda: {
            SizeBucket.S: 50_000.0,
            SizeBucket.M: 200_000.0,
            SizeBucket.L: 600_000.0,
            SizeBucket.XL: 1_500_000.0,
        }
    )
    """Units of one Sonnet attempt per size bucket; other families scale by their factor."""
    spread: float = 1.0
    """Assumed coefficient of variation (sd / mean) of the prior."""
    weight: float = 2.0
    """How many finished attempts the prior is worth."""


class CostEstimate(msgspec.Struct, frozen=True, kw_only=True):
    key: CostKey
    mean_units: float
    high_units: float
    """A high quantile (~p90): what to reserve."""
    samples: int
    """Finished attempts of exactly this key behind the estimate."""
    basis: str
    """``"learned"`` (this key has data), ``"siblings"`` (same family and size, other
    steps), or ``"prior"`` (configured)."""


class _Stats:
    __slots__ = ("m2", "mean", "n")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def merge(self, n: int, mean: float, m2: float) -> None:
        """Fold in another sample set's (n, mean, m2) (Chan et al.'s parallel form)."""
        if n == 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.n * n / total
        self.mean += delta * n / total
        self.n = total

    def posterior(self, prior_mean: float, prior_var: float, weight: float) -> tuple[float, float]:
        """(mean, variance) shrunk towards the prior."""
        total = weight + self.n
        mean = (weight * prior_mean + self.n * self.mean) / total
        between = weight * self.n / total * (self.mean - prior_mean) ** 2 if self.n else 0.0
        return mean, (weight * prior_var + self.m2 + between) / total


class CostModel:
    """Learned expected units per (step, family, size)."""

    def __init__(
        self, plan: SubscriptionPlan, prior: CostPrior | None = None, z_high: float = 1.2816
    ) -> None:
        self.plan = plan
        self.prior = prior or CostPrior()
        self.z_high = z_high
        self._by_key: dict[CostKey, _Stats] = {}
        self._by_family_size: dict[tuple[ModelFamily, SizeBucket], _Stats] = {}

    def observe(self, key: CostKey, units: float) -> None:
        """A finished attempt of ``key`` used ``units``."""
        self._by_key.setdefault(key, _Stats()).add(units)
        self._by_family_size.setdefault((key.family, key.size), _Stats()).add(units)

    def export(self) -> list[tuple[CostKey, int, float, float]]:
        """Every key's (n, mean, m2): the per-(family, size) sums follow from them."""
        return [(key, st.n, st.mean, st.m2) for key, st in self._by_key.items()]

    def load(self, saved: list[tuple[CostKey, int, float, float]]) -> None:
        self._by_key.clear()
        self._by_family_size.clear()
        for key, n, mean, m2 in saved:
            stats = self._by_key.setdefault(key, _Stats())
            stats.n, stats.mean, stats.m2 = n, mean, m2
            group = self._by_family_size.setdefault((key.family, key.size), _Stats())
            group.merge(n, mean, m2)

    def expected(self, key: CostKey) -> CostEstimate:
        base = self.prior.units_by_size.get(key.size, 0.0)
        mean = base * self.plan.weights(key.family).family_factor
        var = (mean * self.prior.spread) ** 2
        basis = "prior"
        siblings = self._by_family_size.get((key.family, key.size))
        if siblings is not None:
            mean, var = siblings.posterior(mean, var, self.prior.weight)
            basis = "siblings"
        own = self._by_key.get(key)
        if own is not None:
            mean, var = own.posterior(mean, var, self.prior.weight)
            basis = "learned"
        return CostEstimate(
            key=key,
            mean_units=mean,
            high_units=mean + self.z_high * math.sqrt(max(var, 0.0)),
            samples=0 if own is None else own.n,
            basis=basis,
        )
