"""The verdict: item-level scores in, metrics with intervals and pass/fail out. Pure.

``decide`` is the whole decision. It does no I/O and reads no clock, so the evaluation
Job, the unit tests and the gate study (benchmarks/eval-gate) all run the same code.

Absolute thresholds are judged on the interval, never on the point estimate:
``min`` passes when the metric's *lower* bound is at least ``min``; ``max`` passes when
its *upper* bound is at most ``max``. A candidate therefore has to show that it clears
the bar, and a lucky draw of easy items cannot carry it over.

The comparison with the serving checkpoint (``baseline``) is paired: both answered the
same items, and the interval is on the item-wise difference candidate - baseline. Two
decision rules are implemented; ``DEFAULT_REGRESSION_RULE`` is the one the gate study
found to meet the error targets with the API's default maxRegression (0.02):

``provenRegression`` (default)
    Block only when the data show a regression: the whole interval lies below zero (the
    candidate is worse than the serving checkpoint beyond noise) *and* its lower bound is
    below -maxRegression (a drop larger than the tolerated one cannot be ruled out).
    A candidate that is as good as the incumbent is blocked at most (1 - level) / 2 of
    the time at any dataset size. A real regression is caught once the dataset is large
    enough to see it: at 95 % and 15 % disagreement, 200 items catch a 10-point drop and
    1000 items a 5-point drop at least 95 % of the time; 50 items catch neither
    reliably. The study's table says how large is large enough.

``nonInferiority``
    Pass only when the lower bound is at least -maxRegression: the candidate must prove
    it is not worse by more than the tolerance. A regression larger than maxRegression
    is promoted at most (1 - level) / 2 of the time at any size, but an equal candidate
    is blocked unless the interval's half-width is well under maxRegression; with
    maxRegression 0.02 that needs thousands of items (about 15 % disagreement). Use it
    with maxRegression sized to the dataset (the study gives the numbers).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from shoal.api.modeltier import EvaluationSpec, MetricResult, ThresholdSpec

from . import stats

IntervalMethod = Literal["wilson", "bootstrap"]
RegressionRule = Literal["provenRegression", "nonInferiority"]
REGRESSION_RULES: tuple[RegressionRule, ...] = ("provenRegression", "nonInferiority")
DEFAULT_REGRESSION_RULE: RegressionRule = "provenRegression"

LATENCY_P50 = "latency_p50_seconds"
LATENCY_P95 = "latency_p95_seconds"


class VerdictError(ValueError):
    """The evaluation's settings and results do not fit together (a threshold names no metric)."""


@dataclass(frozen=True)
class DecisionSettings:
    """The parts of an EvaluationSpec the decision reads, plus the two knobs it adds."""

    thresholds: Sequence[ThresholdSpec] = ()
    max_regression: float = 0.02
    confidence_level: float = 0.95
    interval_method: IntervalMethod = "wilson"
    regression_rule: RegressionRule = DEFAULT_REGRESSION_RULE
    # The bootstrap's RNG seed: the same scores always give the same verdict.
    seed: int = 0
    # Level of the paired interval on the difference, when it differs from
    # confidence_level: the sequential mode judges each look at a stricter level.
    paired_confidence_level: float | None = None

    @property
    def paired_level(self) -> float:
        return self.paired_confidence_level if self.paired_confidence_level is not None else self.confidence_level

    @classmethod
    def from_spec(cls, spec: EvaluationSpec, *, regression_rule: RegressionRule = DEFAULT_REGRESSION_RULE, seed: int = 0) -> DecisionSettings:
        return cls(
            thresholds=tuple(spec.thresholds),
            max_regression=spec.max_regression,
            confidence_level=spec.confidence_level,
            interval_method=spec.interval_method,
            regression_rule=regression_rule,
            seed=seed,
        )


@dataclass(frozen=True)
class Verdict:
    passed: bool
    metrics: list[MetricResult]
    # One sentence per missed bar, in the order the bars were checked.
    failures: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        if self.passed:
            checked = ", ".join(f"{m.name} {m.value:.3f} [{m.lower:.3f}, {m.upper:.3f}]" for m in self.metrics if m.lower is not None)
            return f"Passed every threshold: {checked}." if checked else "Passed: no threshold was configured."
        return " ".join(self.failures)


def _is_binary(values: Sequence[float]) -> bool:
    return all(v in (0, 1) for v in values)


def _interval(values: Sequence[float], settings: DecisionSettings, rng: random.Random) -> stats.Interval:
    if settings.interval_method == "wilson" and _is_binary(values):
        return stats.wilson(int(sum(values)), len(values), settings.confidence_level)
    # Wilson needs 0/1 scores; a judge's graded score or a mean of several falls back to
    # the bootstrap rather than to a wrong formula.
    return stats.bootstrap_mean(values, settings.confidence_level, rng=rng)


def _paired_interval(cand: Sequence[float], base: Sequence[float], settings: DecisionSettings, rng: random.Random) -> stats.Interval:
    if settings.interval_method == "wilson" and _is_binary(cand) and _is_binary(base):
        return stats.newcombe_paired(stats.PairedCounts.from_scores(cand, base), settings.paired_level)
    return stats.bootstrap_paired_difference(cand, base, settings.paired_level, rng=rng)


def regression_blocks(delta: stats.Interval, max_regression: float, rule: RegressionRule) -> bool:
    """Whether a paired interval on candidate - baseline blocks the candidate under ``rule``."""
    if rule == "nonInferiority":
        return delta.lower < -max_regression
    if rule == "provenRegression":
        return delta.upper < 0.0 and delta.lower < -max_regression
    raise VerdictError(f"unknown regression rule {rule!r} (one of {', '.join(REGRESSION_RULES)})")


def _pct(level: float) -> str:
    return f"{level * 100:g}%"


def decide(
    candidate: Mapping[str, Sequence[float | None]],
    settings: DecisionSettings,
    *,
    baseline: Mapping[str, Sequence[float | None]] | None = None,
    latencies_seconds: Sequence[float] = (),
    baseline_latencies_seconds: Sequence[float] = (),
) -> Verdict:
    """Judge a candidate from its item-level scores.

    ``candidate`` maps each scorer's metric name to one score per item, in item order;
    None marks an item that opted out of that scorer. ``baseline`` (the serving
    checkpoint on the same items, same order) turns on the paired regression check for
    every metric both have: an item counts in the pair only when both scored it.
    ``latencies_seconds`` (one per answered item) add latency_p50_seconds and
    latency_p95_seconds, with order-statistic intervals.

    Raises VerdictError when a threshold names a metric that was not measured, or when
    the baseline's items do not line up with the candidate's.
    """
    rng = random.Random(settings.seed)
    level = settings.confidence_level
    metrics: list[MetricResult] = []
    failures: list[str] = []

    for name, raw in candidate.items():
        values = [v for v in raw if v is not None]
        interval = _interval(values, settings, rng)
        result = MetricResult(name=name, value=interval.value, lower=interval.lower, upper=interval.upper)
        if baseline is not None and name in baseline:
            base_raw = baseline[name]
            if len(base_raw) != len(raw):
                raise VerdictError(f"{name}: the baseline scored {len(base_raw)} items, the candidate {len(raw)}")
            pairs = [(c, b) for c, b in zip(raw, base_raw) if c is not None and b is not None]
            cand_paired = [c for c, _ in pairs]
            base_paired = [b for _, b in pairs]
            delta = _paired_interval(cand_paired, base_paired, settings, rng)
            result = result.model_copy(
                update={
                    "baseline": sum(base_paired) / len(base_paired) if base_paired else 0.0,
                    "delta_lower": delta.lower,
                    "delta_upper": delta.upper,
                }
            )
            if regression_blocks(delta, settings.max_regression, settings.regression_rule):
                failures.append(
                    f"{name} regressed against the serving checkpoint: difference {delta.value:+.3f}, "
                    f"{_pct(settings.paired_level)} interval [{delta.lower:+.3f}, {delta.upper:+.3f}], "
                    f"largest tolerated drop {settings.max_regression:.3f} ({settings.regression_rule})."
                )
        metrics.append(result)

    if latencies_seconds:
        for name, q in ((LATENCY_P50, 0.5), (LATENCY_P95, 0.95)):
            interval = stats.quantile_interval(latencies_seconds, q, level)
            base_value = None
            if baseline_latencies_seconds:
                base_value = stats.quantile_interval(baseline_latencies_seconds, q, level).value
            metrics.append(
                MetricResult(name=name, value=interval.value, lower=interval.lower, upper=interval.upper, baseline=base_value)
            )

    by_name = {m.name: m for m in metrics}
    for threshold in settings.thresholds:
        metric = by_name.get(threshold.metric)
        if metric is None:
            measured = ", ".join(by_name) or "none"
            raise VerdictError(f"threshold on {threshold.metric!r}, which was not measured (measured: {measured})")
        assert metric.lower is not None and metric.upper is not None
        if threshold.min is not None and metric.lower < threshold.min:
            failures.append(
                f"{metric.name} {metric.value:.3f} has a {_pct(level)} lower bound of {metric.lower:.3f}, "
                f"below the minimum {threshold.min:g}."
            )
        if threshold.max is not None and metric.upper > threshold.max:
            failures.append(
                f"{metric.name} {metric.value:.3f} has a {_pct(level)} upper bound of {metric.upper:.3f}, "
                f"above the maximum {threshold.max:g}."
            )

    return Verdict(passed=not failures, metrics=metrics, failures=failures)
