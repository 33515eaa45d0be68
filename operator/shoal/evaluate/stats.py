"""Confidence intervals for evaluation scores: pure functions, standard library only.

Every interval is two-sided at the given confidence level. Two families are offered:

- closed form (``wilson``): the Wilson score interval for a proportion, Newcombe's
  square-and-add interval (his method 10, with the correlation correction he recommends)
  for the difference of two *paired* proportions, and the distribution-free
  order-statistic interval for a quantile. These need 0/1 scores, are deterministic and
  cost nothing to compute, so the gate study can run them millions of times.
- ``bootstrap``: percentile bootstrap for a mean and a paired bootstrap for the mean of
  the item-wise differences, for scores that are not 0/1. The resampling uses a
  ``random.Random`` seeded by the caller, so a verdict can be recomputed exactly.

Why paired: the candidate and the serving checkpoint answer the *same* items, and they
agree on most of them. The variance of the difference then comes only from the items on
which they disagree, which makes a paired interval several times narrower than treating
the two runs as independent samples (and therefore makes the regression check usable on
a few hundred items).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

DEFAULT_BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence bounds (lower <= value <= upper)."""

    value: float
    lower: float
    upper: float


def z_for(confidence_level: float) -> float:
    """The standard normal quantile of a two-sided interval at this level (0.95 -> 1.96)."""
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence level must lie strictly between 0 and 1, got {confidence_level}")
    return NormalDist().inv_cdf(0.5 + confidence_level / 2.0)


def wilson(successes: int, n: int, confidence_level: float = 0.95) -> Interval:
    """Wilson score interval for ``successes`` out of ``n``.

    Unlike the textbook Wald interval it stays inside [0, 1] and keeps its coverage
    near 0 and 1, where a good model's accuracy usually is. ``n == 0`` has no
    information: the interval is the whole [0, 1] around 0.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return Interval(0.0, 0.0, 1.0)
    z = z_for(confidence_level)
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = (z / denominator) * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    # Rounding can push a bound a hair past the estimate at p = 0 or 1; clamp.
    return Interval(p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


@dataclass(frozen=True)
class PairedCounts:
    """The 2x2 table of paired 0/1 outcomes: candidate first, baseline second."""

    both: int  # both right
    candidate_only: int  # the candidate right, the baseline wrong
    baseline_only: int  # the baseline right, the candidate wrong
    neither: int  # both wrong

    @property
    def n(self) -> int:
        return self.both + self.candidate_only + self.baseline_only + self.neither

    @classmethod
    def from_scores(cls, candidate: Sequence[float], baseline: Sequence[float]) -> PairedCounts:
        if len(candidate) != len(baseline):
            raise ValueError(f"paired scores differ in length: {len(candidate)} and {len(baseline)}")
        both = cand_only = base_only = neither = 0
        for c, b in zip(candidate, baseline):
            if c not in (0, 1) or b not in (0, 1):
                raise ValueError("paired proportions need 0/1 scores; use the bootstrap for others")
            if c and b:
                both += 1
            elif c:
                cand_only += 1
            elif b:
                base_only += 1
            else:
                neither += 1
        return cls(both, cand_only, base_only, neither)


def newcombe_paired(counts: PairedCounts, confidence_level: float = 0.95) -> Interval:
    """Interval for (candidate accuracy - baseline accuracy) on paired 0/1 outcomes.

    Newcombe (1998, Statistics in Medicine 17:2635), method 10: the Wilson intervals of
    the two marginal proportions combined by "square and add", with the correlation
    between the paired outcomes (phi, corrected towards zero by N/2 as Newcombe
    recommends) taking out the shared variance. Known value: the paper's example
    (36, 12, 2, 0) gives 0.0569 to 0.3404.
    """
    n = counts.n
    if n == 0:
        return Interval(0.0, -1.0, 1.0)
    a, b, c, d = counts.both, counts.candidate_only, counts.baseline_only, counts.neither
    p1 = (a + b) / n
    p2 = (a + c) / n
    w1 = wilson(a + b, n, confidence_level)
    w2 = wilson(a + c, n, confidence_level)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    if cross > n / 2:
        corrected = cross - n / 2
    elif cross < 0:
        corrected = float(cross)
    else:
        corrected = 0.0
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    delta = p1 - p2
    dl1, du1 = p1 - w1.lower, w1.upper - p1
    dl2, du2 = p2 - w2.lower, w2.upper - p2
    lower = delta - math.sqrt(max(0.0, dl1 * dl1 - 2.0 * phi * dl1 * du2 + du2 * du2))
    upper = delta + math.sqrt(max(0.0, dl2 * dl2 - 2.0 * phi * dl2 * du1 + du1 * du1))
    return Interval(delta, max(-1.0, lower), min(1.0, upper))


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default 'linear' method)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] * (1.0 - fraction) + sorted_values[high] * fraction


def bootstrap_mean(
    scores: Sequence[float],
    confidence_level: float = 0.95,
    *,
    rng: random.Random,
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
) -> Interval:
    """Percentile bootstrap interval for the mean of ``scores``."""
    n = len(scores)
    if n == 0:
        return Interval(0.0, 0.0, 1.0)
    values = list(scores)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    alpha = 1.0 - confidence_level
    point = sum(values) / n
    return Interval(point, min(point, _percentile(means, alpha / 2)), max(point, _percentile(means, 1 - alpha / 2)))


def bootstrap_paired_difference(
    candidate: Sequence[float],
    baseline: Sequence[float],
    confidence_level: float = 0.95,
    *,
    rng: random.Random,
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
) -> Interval:
    """Percentile bootstrap for mean(candidate - baseline), resampling *items* (pairs)."""
    if len(candidate) != len(baseline):
        raise ValueError(f"paired scores differ in length: {len(candidate)} and {len(baseline)}")
    differences = [c - b for c, b in zip(candidate, baseline)]
    n = len(differences)
    if n == 0:
        return Interval(0.0, -1.0, 1.0)
    point = sum(differences) / n
    means = sorted(sum(rng.choices(differences, k=n)) / n for _ in range(resamples))
    alpha = 1.0 - confidence_level
    return Interval(point, min(point, _percentile(means, alpha / 2)), max(point, _percentile(means, 1 - alpha / 2)))


def quantile_interval(values: Sequence[float], q: float, confidence_level: float = 0.95) -> Interval:
    """A sample quantile with a distribution-free interval from order statistics.

    The number of observations below the true q-quantile is Binomial(n, q); the bounds
    are the order statistics at that count's normal-approximation limits. No
    assumption about the latency distribution's shape is made. With few values the
    bounds widen to the sample's minimum and maximum.
    """
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must lie strictly between 0 and 1, got {q}")
    ordered = sorted(values)
    n = len(ordered)
    z = z_for(confidence_level)
    spread = z * math.sqrt(n * q * (1.0 - q))
    low_rank = max(0, math.floor(n * q - spread) - 1)
    high_rank = min(n - 1, math.ceil(n * q + spread))
    point = _percentile(ordered, q)
    return Interval(point, min(point, ordered[low_rank]), max(point, ordered[high_rank]))
