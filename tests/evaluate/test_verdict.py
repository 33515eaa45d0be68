import pytest

from shoal.api.modeltier import EvaluationSpec, ThresholdSpec
from shoal.evaluate.stats import Interval
from shoal.evaluate.verdict import DecisionSettings, VerdictError, decide, regression_blocks


def ones(k, n):
    return [1.0] * k + [0.0] * (n - k)


def test_threshold_min_is_judged_on_the_lower_bound_not_the_point_estimate():
    # 8/10 = 0.8 looks like it clears 0.7, but its 95% lower bound is 0.490.
    settings = DecisionSettings(thresholds=[ThresholdSpec(metric="exact_match", min=0.7)])
    verdict = decide({"exact_match": ones(8, 10)}, settings)
    assert verdict.passed is False
    assert verdict.failures == ["exact_match 0.800 has a 95% lower bound of 0.490, below the minimum 0.7."]
    metric = verdict.metrics[0]
    assert (metric.name, metric.value) == ("exact_match", 0.8)
    assert metric.lower == pytest.approx(0.4902, abs=1e-4)


def test_the_same_accuracy_on_more_items_passes():
    settings = DecisionSettings(thresholds=[ThresholdSpec(metric="exact_match", min=0.7)])
    verdict = decide({"exact_match": ones(160, 200)}, settings)
    assert verdict.passed is True
    assert verdict.failures == []
    assert verdict.metrics[0].lower == pytest.approx(0.7391, abs=1e-4)
    assert verdict.message == ("Passed every threshold: exact_match 0.800 [0.739, 0.850].")


def test_skipped_items_do_not_count_in_a_metric():
    verdict = decide({"numeric": [1.0, None, 1.0, 0.0]}, DecisionSettings())
    assert verdict.metrics[0].value == pytest.approx(2 / 3)


def test_threshold_max_is_judged_on_the_upper_bound_of_latency():
    latencies = [0.1 * i for i in range(1, 101)]  # 0.1 .. 10.0 s
    settings = DecisionSettings(thresholds=[ThresholdSpec(metric="latency_p95_seconds", max=9.9)])
    verdict = decide({"exact_match": ones(100, 100)}, settings, latencies_seconds=latencies)
    p95 = next(m for m in verdict.metrics if m.name == "latency_p95_seconds")
    assert p95.value == pytest.approx(9.505)
    assert p95.upper == pytest.approx(10.0)
    assert verdict.passed is False
    assert verdict.failures == ["latency_p95_seconds 9.505 has a 95% upper bound of 10.000, above the maximum 9.9."]


def test_a_threshold_on_an_unmeasured_metric_is_an_error_not_a_failure():
    settings = DecisionSettings(thresholds=[ThresholdSpec(metric="exact_macth", min=0.5)])
    with pytest.raises(VerdictError, match="exact_macth.*measured: exact_match"):
        decide({"exact_match": ones(5, 10)}, settings)


def paired(n, both, cand_only, base_only):
    candidate = [1.0] * both + [1.0] * cand_only + [0.0] * base_only
    baseline = [1.0] * both + [0.0] * cand_only + [1.0] * base_only
    rest = n - len(candidate)
    return candidate + [0.0] * rest, baseline + [0.0] * rest


def test_a_clear_regression_against_the_serving_checkpoint_blocks_the_candidate():
    # 1000 items, 15% disagreement, the candidate 5 points worse.
    cand, base = paired(1000, 700, 50, 100)
    verdict = decide({"exact_match": cand}, DecisionSettings(), baseline={"exact_match": base})
    metric = verdict.metrics[0]
    assert metric.baseline == pytest.approx(0.8)
    assert metric.value == pytest.approx(0.75)
    assert metric.delta_upper < 0.0
    assert metric.delta_lower < -0.02
    assert verdict.passed is False
    assert verdict.failures[0].startswith("exact_match regressed against the serving checkpoint: difference -0.050")


def test_an_equal_candidate_with_a_noisy_dip_is_not_blocked():
    # 200 items, 15% disagreement, 4 points worse by chance: the interval still covers 0.
    cand, base = paired(200, 140, 13, 17)
    verdict = decide({"exact_match": cand}, DecisionSettings(), baseline={"exact_match": base})
    metric = verdict.metrics[0]
    assert metric.delta_lower < -0.02 < 0.0 < metric.delta_upper
    assert verdict.passed is True


def test_non_inferiority_blocks_the_same_noisy_dip():
    cand, base = paired(200, 140, 13, 17)
    settings = DecisionSettings(regression_rule="nonInferiority")
    verdict = decide({"exact_match": cand}, settings, baseline={"exact_match": base})
    assert verdict.passed is False


@pytest.mark.parametrize(
    ("interval", "rule", "blocks"),
    [
        (Interval(-0.01, -0.03, 0.01), "provenRegression", False),  # covers zero
        (Interval(-0.01, -0.015, -0.005), "provenRegression", False),  # worse, but within tolerance
        (Interval(-0.05, -0.08, -0.02), "provenRegression", True),
        (Interval(-0.01, -0.03, 0.01), "nonInferiority", True),
        (Interval(-0.01, -0.015, -0.005), "nonInferiority", False),
        (Interval(0.02, -0.01, 0.05), "nonInferiority", False),
    ],
)
def test_regression_rules(interval, rule, blocks):
    assert regression_blocks(interval, 0.02, rule) is blocks


def test_bootstrap_verdicts_are_reproducible_from_the_seed():
    spec = EvaluationSpec.model_validate(
        {"dataset": {"uri": "https://example.invalid/d.jsonl"}, "scorers": [{"type": "exactMatch"}], "intervalMethod": "bootstrap"}
    )
    settings = DecisionSettings.from_spec(spec, seed=3)
    cand, base = paired(100, 60, 10, 15)
    first = decide({"exact_match": cand}, settings, baseline={"exact_match": base})
    second = decide({"exact_match": cand}, settings, baseline={"exact_match": base})
    assert first == second
    assert first.metrics[0].delta_lower < -0.05 < first.metrics[0].delta_upper


def test_graded_scores_fall_back_to_the_bootstrap():
    verdict = decide({"judge": [0.5, 1.0, 0.75, 1.0]}, DecisionSettings())
    metric = verdict.metrics[0]
    assert metric.value == pytest.approx(0.8125)
    assert 0.5 <= metric.lower < 0.8125 < metric.upper <= 1.0


def test_baseline_with_other_items_is_an_error():
    with pytest.raises(VerdictError, match="baseline scored 3 items, the candidate 4"):
        decide({"m": [1, 0, 1, 1]}, DecisionSettings(), baseline={"m": [1, 0, 1]})
