"""Routing quality on per-prompt outcomes, measured the way RouteLLM measures a router.

A router gives each prompt a score (higher: more likely to need the strong tier); prompts
at or above a threshold go to the strong tier. Sweeping the threshold traces quality
against the share of strong-tier calls.

- The sweep (RouteLLM's `benchmarks.py`): the thresholds are the score's deciles (the 11
  edges of 10 equally filled bins, duplicates kept); at every edge but the last the strong
  tier gets `score >= edge`, at the last `score > edge` (so the curve always reaches 0%).
- PGR at a point = (quality - weak) / (strong - weak).
- APGR = trapezoidal area under quality over strong share (0..1), with the weak-only and
  strong-only areas over the same x values as 0 and 1: (AUC - weak) / (strong - weak).
  Random routing: 0.5.
- CPT(x) = the smallest strong share at which the (linearly interpolated) curve recovers
  x of the gap. RouteLLM interpolates with `np.interp` over the curve sorted by share,
  which assumes quality rises with share; on a curve that does, both agree, and on one
  that dips this definition stays "the smallest share", as the data README states it.
- The oracle sends to the strong tier exactly the prompts where only the strong tier is
  right, up to the share allowed (RouteLLM's `get_optimal_accuracy`).

Pure Python, no numpy: the simulator and the router import this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """Whether the weak (smallest) and the strong tier answered one prompt well."""

    weak: bool
    strong: bool


@dataclass(frozen=True)
class Curve:
    """Quality (0..1) against strong share (0..1), sorted by share."""

    shares: tuple[float, ...]
    quality: tuple[float, ...]


@dataclass(frozen=True)
class Quality:
    weak: float
    strong: float
    apgr: float
    cpt50: float | None  # None: the curve never recovers that much of the gap
    cpt80: float | None
    curve: Curve

    def to_dict(self) -> dict:
        return {
            "apgr": round(self.apgr, 4),
            "cpt50": None if self.cpt50 is None else round(self.cpt50, 4),
            "cpt80": None if self.cpt80 is None else round(self.cpt80, 4),
            "curve": [[round(s, 4), round(q, 4)] for s, q in zip(self.curve.shares, self.curve.quality)],
        }


def accuracy(outcomes: Sequence[Outcome], strong: Sequence[bool]) -> float:
    """Quality when prompt i goes to the strong tier exactly when strong[i]."""
    return sum((o.strong if s else o.weak) for o, s in zip(outcomes, strong)) / len(outcomes)


def decile_edges(scores: Sequence[float], bins: int = 10) -> list[float]:
    """The bin edges of `bins` equally filled bins (pandas.qcut's retbins, linear quantiles)."""
    ordered = sorted(scores)
    n = len(ordered)
    edges = []
    for i in range(bins + 1):
        position = (n - 1) * i / bins
        low = math.floor(position)
        high = min(low + 1, n - 1)
        edges.append(ordered[low] + (ordered[high] - ordered[low]) * (position - low))
    return edges


def sweep(outcomes: Sequence[Outcome], scores: Sequence[float], bins: int = 10) -> Curve:
    """RouteLLM's threshold sweep over the score's deciles."""
    if len(outcomes) != len(scores) or not outcomes:
        raise ValueError("need one score per outcome, and at least one")
    edges = decile_edges(scores, bins)
    points = []
    for i, edge in enumerate(edges):
        last = i == len(edges) - 1
        strong = [(s > edge) if last else (s >= edge) for s in scores]
        points.append((sum(strong) / len(strong), accuracy(outcomes, strong)))
    points.sort()
    return Curve(tuple(p[0] for p in points), tuple(p[1] for p in points))


def oracle_curve(outcomes: Sequence[Outcome], bins: int = 10) -> Curve:
    """The perfect router at shares 0, 1/bins, ..., 1."""
    n = len(outcomes)
    weak_right = sum(o.weak for o in outcomes)
    helps = sum((not o.weak) and o.strong for o in outcomes)
    shares = tuple(i / bins for i in range(bins + 1))
    return Curve(shares, tuple((weak_right + min(share * n, helps)) / n for share in shares))


def evaluate(outcomes: Sequence[Outcome], curve: Curve) -> Quality:
    """APGR, CPT(50%) and CPT(80%) of a curve on these outcomes."""
    n = len(outcomes)
    weak = sum(o.weak for o in outcomes) / n
    strong = sum(o.strong for o in outcomes) / n
    gap = strong - weak
    xs, ys = curve.shares, curve.quality
    auc = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    width = xs[-1] - xs[0]
    apgr = (auc - weak * width) / (gap * width) if gap and width else float("nan")
    return Quality(weak, strong, apgr, cost_to_recover(curve, weak, gap, 0.5), cost_to_recover(curve, weak, gap, 0.8), curve)


def cost_to_recover(curve: Curve, weak: float, gap: float, fraction: float) -> float | None:
    """The smallest strong share at which the interpolated curve reaches weak + fraction*gap."""
    target = weak + fraction * gap
    xs, ys = curve.shares, curve.quality
    if ys[0] >= target:
        return xs[0]
    for i in range(len(xs) - 1):
        if ys[i] < target <= ys[i + 1]:
            return xs[i] + (xs[i + 1] - xs[i]) * (target - ys[i]) / (ys[i + 1] - ys[i])
    return None


def route_quality(outcomes: Sequence[Outcome], scores: Sequence[float], bins: int = 10) -> Quality:
    """The RouteLLM measurement of a router's scores on these outcomes."""
    return evaluate(outcomes, sweep(outcomes, scores, bins))


def cascade_curve(outcomes: Sequence[Outcome], reject: Sequence[float], bins: int = 10) -> Curve:
    """A cascade answers every prompt with the weak tier and escalates when a verifier's
    rejection score is at or above a threshold: as a router it is the same sweep, with the
    verifier's score (which has seen the weak answer) in place of the prompt-only score."""
    return sweep(outcomes, reject, bins)


@dataclass(frozen=True)
class RoutedQuality:
    """Quality of a simulated run: each request answered by the tier that served it."""

    quality: float
    smallest_only: float
    largest_only: float
    shares: dict[str, float]

    @property
    def gap_recovered(self) -> float:
        gap = self.largest_only - self.smallest_only
        return (self.quality - self.smallest_only) / gap if gap else float("nan")


def routed_quality(outcomes: Sequence[dict[str, bool]], served: Sequence[str], tiers: Sequence[str]) -> RoutedQuality:
    """outcomes[i]: per tier, whether it answers request i well (a tier missing from it
    counts as the nearest smaller tier that is present, else as wrong); served[i]: the
    tier that served request i."""
    if len(outcomes) != len(served) or not outcomes:
        raise ValueError("need one served tier per outcome, and at least one")

    def right(o: dict[str, bool], tier: str) -> bool:
        for name in reversed(tiers[: tiers.index(tier) + 1]):
            if name in o:
                return o[name]
        return False

    n = len(outcomes)
    return RoutedQuality(
        quality=sum(right(o, t) for o, t in zip(outcomes, served)) / n,
        smallest_only=sum(right(o, tiers[0]) for o in outcomes) / n,
        largest_only=sum(right(o, tiers[-1]) for o in outcomes) / n,
        shares={t: sum(s == t for s in served) / n for t in tiers},
    )
