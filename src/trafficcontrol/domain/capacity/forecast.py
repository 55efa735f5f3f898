"""Burn rates and projections: how fast a pool is used and when its window runs out.

Design note. Usage arrives as irregular events, so ``BurnRate`` first bins it into
fixed buckets (``bucket_s``, aligned to the epoch) and feeds each *closed* bucket's rate
(units per hour) to an exponentially weighted mean and variance (West/Finch
incremental form) with ``alpha = 1 - 2 ** (-bucket_s / half_life_s)``: after a step
change the mean has moved half way to the new rate one half-life later. The first
bucket initialises the mean, so a constant rate reads exactly from the first bucket
on. Idle buckets are zero samples: a pool that stops being used cools down. The open
bucket is not counted until it closes (the estimate lags by at most one bucket).

``sum_w2`` tracks the sum of squared normalised weights, so ``variance * sum_w2`` is the
variance of the mean itself (1 after one sample, ``alpha / (2 - alpha)`` in steady state).

``project`` turns a rate into a forecast with an interval: over a horizon ``H`` the
average rate is uncertain by the error of the mean plus the bucket noise averaged over
``H / bucket_s`` buckets::

    band = z * sqrt(error_of_mean ** 2 + noise ** 2 * bucket_s / H)

Rates are per pool (a family, or all models together): both windows of a pool drain at
the same rate, so one ``BurnRate`` serves its session and weekly projections.
Rejected: a continuous decayed sum (sum of u * exp(-lambda * age)) — it under-reads a
constant rate until several half-lives have passed and gives no variance.
"""

from __future__ import annotations

import math

import msgspec

from trafficcontrol.domain.capacity.families import ModelFamily
from trafficcontrol.domain.capacity.windows import HOUR_S, Window

_MAX_IDLE_STEPS = 4096
"""Idle buckets folded one by one at most; past that the rate is zero for all purposes."""


class RateEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """A pool's burn rate at one moment."""

    per_hour: float
    """EWMA of the bucket rates, in units per hour."""
    noise_per_hour: float
    """EW standard deviation of one bucket's rate around the mean."""
    error_per_hour: float
    """Standard error of ``per_hour`` itself."""
    samples: int
    """Closed buckets seen; 0: no data, the rate is unknown (reads 0)."""
    bucket_s: float


class BurnRate:
    """EWMA burn rate of one pool; ``observe`` usage, ``estimate`` at any later time."""

    __slots__ = (
        "_bucket_start",
        "_bucket_units",
        "_mean",
        "_n",
        "_sum_w2",
        "_var",
        "alpha",
        "bucket_s",
    )

    def __init__(self, half_life_s: float = 1800.0, bucket_s: float = 60.0) -> None:
        if half_life_s <= 0 or bucket_s <= 0:
            raise ValueError("half_life_s and bucket_s must be > 0")
        self.bucket_s = bucket_s
        self.alpha = 1.0 - 2.0 ** (-bucket_s / half_life_s)
        self._bucket_start: float | None = None
        self._bucket_units = 0.0
        self._mean = 0.0
        self._var = 0.0
        self._sum_w2 = 0.0
        self._n = 0

    def observe(self, at: float, units: float) -> None:
        """``units`` used at ``at``; usage earlier than the open bucket counts in it."""
        if self._bucket_start is None:
            self._bucket_start = math.floor(at / self.bucket_s) * self.bucket_s
        elif at >= self._bucket_start + self.bucket_s:
            state = self._closed(at)
            self._mean, self._var, self._sum_w2, self._n = state
            self._bucket_start = math.floor(at / self.bucket_s) * self.bucket_s
            self._bucket_units = 0.0
        self._bucket_units += units

    def export(self) -> tuple[float | None, float, float, float, float, int]:
        """The fold's state (for snapshots)."""
        return (
            self._bucket_start,
            self._bucket_units,
            self._mean,
            self._var,
            self._sum_w2,
            self._n,
        )

    def load(self, saved: tuple[float | None, float, float, float, float, int]) -> None:
        (
            self._bucket_start,
            self._bucket_units,
            self._mean,
            self._var,
            self._sum_w2,
            self._n,
        ) = saved

    def estimate(self, now: float) -> RateEstimate:
        """The rate from every bucket closed by ``now`` (does not change the fold)."""
        mean, var, sum_w2, n = self._mean, self._var, self._sum_w2, self._n
        if self._bucket_start is not None and now >= self._bucket_start + self.bucket_s:
            mean, var, sum_w2, n = self._closed(now)
        return RateEstimate(
            per_hour=mean,
            noise_per_hour=math.sqrt(var),
            error_per_hour=math.sqrt(var * sum_w2) if n > 1 else (mean if n == 1 else 0.0),
            samples=n,
            bucket_s=self.bucket_s,
        )

    def _closed(self, now: float) -> tuple[float, float, float, int]:
        """State after closing the open bucket and the idle buckets up to ``now``."""
        assert self._bucket_start is not None
        mean, var, sum_w2, n = self._mean, self._var, self._sum_w2, self._n
        rate = self._bucket_units / self.bucket_s * HOUR_S
        mean, var, sum_w2, n = self._step(mean, var, sum_w2, n, rate)
        idle = int((now - self._bucket_start) // self.bucket_s) - 1
        if idle > _MAX_IDLE_STEPS:
            return 0.0, 0.0, sum_w2, n + idle
        for _ in range(max(idle, 0)):
            mean, var, sum_w2, n = self._step(mean, var, sum_w2, n, 0.0)
        return mean, var, sum_w2, n

    def _step(
        self, mean: float, var: float, sum_w2: float, n: int, x: float
    ) -> tuple[float, float, float, int]:
        if n == 0:
            return x, 0.0, 1.0, 1
        a = self.alpha
        diff = x - mean
        incr = a * diff
        return mean + incr, (1 - a) * (var + diff * incr), (1 - a) ** 2 * sum_w2 + a * a, n + 1


class Projection(msgspec.Struct, frozen=True, kw_only=True):
    """Where a window is heading at the current burn rate, with a low/high band."""

    window: Window
    now: float
    used: float
    limit: float | None
    resets_at: float | None
    rate: RateEstimate
    at_reset: float | None
    """Projected use when the window resets (mean); None without a reset time."""
    at_reset_low: float | None
    at_reset_high: float | None
    limit_at: float | None
    """When the limit is reached at the mean rate; None: never (rate 0 or no limit)."""
    limit_at_earliest: float | None
    """Earliest plausible time to the limit (the high end of the rate band)."""
    limit_at_latest: float | None
    """Latest plausible time to the limit; None: possibly never."""

    @property
    def crosses_before_reset(self) -> bool:
        """At the mean rate the limit is reached before the window resets."""
        if self.limit_at is None:
            return False
        return self.resets_at is None or self.limit_at < self.resets_at


def project(
    window: Window,
    used: float,
    limit: float | None,
    resets_at: float | None,
    rate: RateEstimate,
    now: float,
    z: float = 1.96,
) -> Projection:
    """Project ``used`` forward at ``rate``; ``z`` sets the band (1.96: ~95%)."""
    mean = max(rate.per_hour, 0.0)
    at_reset = low = high = None
    if resets_at is not None:
        hours = max(resets_at - now, 0.0) / HOUR_S
        band = _band(rate, hours, z)
        at_reset = used + mean * hours
        low = used + max(mean - band, 0.0) * hours
        high = used + (mean + band) * hours
    limit_at = earliest = latest = None
    if limit is not None:
        remaining = limit - used
        if remaining <= 0:
            limit_at = earliest = latest = now
        elif mean > 0:
            hours = remaining / mean
            band = _band(rate, hours, z)
            limit_at = now + hours * HOUR_S
            earliest = now + remaining / (mean + band) * HOUR_S
            latest = None if mean - band <= 0 else now + remaining / (mean - band) * HOUR_S
    return Projection(
        window=window,
        now=now,
        used=used,
        limit=limit,
        resets_at=resets_at,
        rate=rate,
        at_reset=at_reset,
        at_reset_low=low,
        at_reset_high=high,
        limit_at=limit_at,
        limit_at_earliest=earliest,
        limit_at_latest=latest,
    )


def _band(rate: RateEstimate, hours: float, z: float) -> float:
    """Half-width of the band on the average rate over ``hours``."""
    buckets = max(hours * HOUR_S / rate.bucket_s, 1.0)
    return z * math.sqrt(rate.error_per_hour**2 + rate.noise_per_hour**2 / buckets)


class Forecaster:
    """One ``BurnRate`` per pool (each family, and all models together)."""

    def __init__(self, half_life_s: float = 1800.0, bucket_s: float = 60.0) -> None:
        self._rates: dict[ModelFamily | None, BurnRate] = {
            pool: BurnRate(half_life_s, bucket_s) for pool in (None, *ModelFamily)
        }

    def observe(self, at: float, family: ModelFamily, units: float | None) -> None:
        """Usage of ``family``; unknown usage (None) adds nothing to the rate."""
        if units is None:
            return
        self._rates[family].observe(at, units)
        self._rates[None].observe(at, units)

    def export(self) -> list[tuple[float | None, float, float, float, float, int]]:
        return [self._rates[pool].export() for pool in (None, *ModelFamily)]

    def load(self, saved: list[tuple[float | None, float, float, float, float, int]]) -> None:
        for pool, state in zip((None, *ModelFamily), saved, strict=True):
            self._rates[pool].load(state)

    def rate(self, window: Window, now: float) -> RateEstimate:
        return self._rates[window.family].estimate(now)

    def project(
        self, window: Window, used: float, limit: float | None, resets_at: float | None, now: float
    ) -> Projection:
        return project(window, used, limit, resets_at, self.rate(window, now), now)
