"""Sequential paired comparison: stop the evaluation as soon as the verdict is clear. Pure.

The items are looked at in a fixed (seeded, shuffled) order. At a few planned looks
(by default after 25 %, 50 %, 75 % and 100 % of the items) the paired interval on
candidate - baseline is computed at a level that spends only part of the error budget,
so that the whole procedure keeps the fixed-size test's error rates (Bonferroni over the
looks: the per-look error rates add up to 1 - confidence level). Most of the budget is
kept for the last look, as in O'Brien-Fleming designs, so a run that goes the full
length is judged almost as sharply as the fixed-size test.

At each look:
    block early  provenRegression: the interval lies below zero and its lower bound below
                 -maxRegression; nonInferiority: the whole interval lies below -maxRegression;
    pass early   when the interval's lower bound is at least -maxRegression (the
                 candidate is shown to be within the tolerance);
    otherwise    continue; at the last look the rule decides as in ``verdict.decide``.

Only the regression check is sequential; absolute thresholds are judged on whatever items
were used. The gate study (benchmarks/eval-gate) reports its error rates and the average
number of items it needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from . import stats
from .verdict import RegressionRule, regression_blocks

DEFAULT_LOOKS = (0.25, 0.5, 0.75, 1.0)
# Two-sided error spent at each look, adding up to 0.05 (a 95 % procedure).
DEFAULT_SPENDING = (0.001, 0.002, 0.005, 0.042)


LookOutcome = Literal["pass", "block", "continue"]


def look_outcome(interval: stats.Interval, *, max_regression: float, rule: RegressionRule, final: bool) -> LookOutcome:
    """What one look's paired interval (at that look's level) says."""
    if final:
        return "block" if regression_blocks(interval, max_regression, rule) else "pass"
    # Early, block only on a clear answer: for nonInferiority, the whole interval below
    # -maxRegression (its final rule, lower < -maxRegression, would stop at the first,
    # widest look).
    if rule == "nonInferiority":
        clearly_worse = interval.upper < -max_regression
    else:
        clearly_worse = regression_blocks(interval, max_regression, rule)
    if clearly_worse:
        return "block"
    if interval.lower >= -max_regression:
        return "pass"
    return "continue"


def look_sizes(n: int, looks: Sequence[float] = DEFAULT_LOOKS) -> list[int]:
    """How many items each look has seen (at least one; the last sees all ``n``)."""
    return [max(1, math.ceil(fraction * n)) for fraction in looks]


@dataclass(frozen=True)
class SequentialResult:
    passed: bool
    items_used: int
    look: int  # 1-based index of the look that decided
    interval: stats.Interval


def decide_sequential(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    max_regression: float,
    rule: RegressionRule = "provenRegression",
    looks: Sequence[float] = DEFAULT_LOOKS,
    spending: Sequence[float] = DEFAULT_SPENDING,
) -> SequentialResult:
    """Judge paired 0/1 outcomes, in the given order, with early stopping.

    ``looks`` are increasing fractions of the items ending at 1.0; ``spending`` the
    two-sided error rate used at each (their sum is the procedure's 1 - level).
    """
    if len(candidate) != len(baseline):
        raise ValueError(f"paired scores differ in length: {len(candidate)} and {len(baseline)}")
    if len(looks) != len(spending) or not looks or looks[-1] != 1.0 or list(looks) != sorted(looks):
        raise ValueError("looks must increase to 1.0 and pair one-to-one with spending")
    interval = stats.Interval(0.0, -1.0, 1.0)
    sizes = look_sizes(len(candidate), looks)
    for index, (used, alpha) in enumerate(zip(sizes, spending), start=1):
        counts = stats.PairedCounts.from_scores(candidate[:used], baseline[:used])
        interval = stats.newcombe_paired(counts, 1.0 - alpha)
        outcome = look_outcome(interval, max_regression=max_regression, rule=rule, final=index == len(looks))
        if outcome != "continue":
            return SequentialResult(outcome == "pass", used, index, interval)
    raise AssertionError("unreachable: the last look always decides")
