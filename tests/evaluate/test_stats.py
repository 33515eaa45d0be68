import random

import pytest

from shoal.evaluate import stats


def test_wilson_for_8_of_10_at_95_percent_matches_the_published_value():
    interval = stats.wilson(8, 10, 0.95)
    assert interval.value == 0.8
    assert interval.lower == pytest.approx(0.4902, abs=1e-4)
    assert interval.upper == pytest.approx(0.9433, abs=1e-4)


def test_wilson_at_the_edges_stays_inside_zero_and_one():
    none = stats.wilson(0, 20)
    every = stats.wilson(20, 20)
    assert (none.value, none.lower) == (0.0, 0.0)
    assert none.upper == pytest.approx(0.1611, abs=1e-4)
    assert (every.value, every.upper) == (1.0, 1.0)
    assert every.lower == pytest.approx(0.8389, abs=1e-4)


def test_wilson_widens_with_a_higher_confidence_level():
    at_90 = stats.wilson(30, 50, 0.90)
    at_99 = stats.wilson(30, 50, 0.99)
    assert at_99.lower < at_90.lower < 0.6 < at_90.upper < at_99.upper


def test_wilson_rejects_more_successes_than_trials():
    with pytest.raises(ValueError, match="successes <= n"):
        stats.wilson(11, 10)


def test_newcombe_paired_matches_the_papers_first_example():
    # Newcombe (1998), paired example (a): 36 both, 12 first only, 2 second only, 0 neither.
    interval = stats.newcombe_paired(stats.PairedCounts(36, 12, 2, 0), 0.95)
    assert interval.value == pytest.approx(0.2)
    assert interval.lower == pytest.approx(0.0569, abs=1e-4)
    assert interval.upper == pytest.approx(0.3404, abs=1e-4)


def test_newcombe_paired_matches_the_papers_second_example():
    interval = stats.newcombe_paired(stats.PairedCounts(263, 15, 21, 511), 0.95)
    assert interval.value == pytest.approx(-6 / 810)
    assert interval.lower == pytest.approx(-0.0222, abs=1e-4)
    assert interval.upper == pytest.approx(0.0073, abs=1e-4)


def test_paired_interval_is_narrower_than_treating_the_runs_as_independent():
    # 200 items, the two agree on 180: the difference is estimated from 20 discordant items.
    counts = stats.PairedCounts(both=160, candidate_only=5, baseline_only=15, neither=20)
    paired = stats.newcombe_paired(counts)
    cand = stats.wilson(165, 200)
    base = stats.wilson(175, 200)
    independent_half_width = ((cand.upper - cand.lower) ** 2 + (base.upper - base.lower) ** 2) ** 0.5 / 2
    assert paired.value == pytest.approx(-0.05)
    assert paired.upper == pytest.approx(-0.0052, abs=1e-4)  # paired: the drop is real
    assert independent_half_width == pytest.approx(0.0698, abs=1e-4)
    assert (paired.upper - paired.lower) / 2 == pytest.approx(0.0459, abs=1e-4)


def test_paired_counts_tally_each_cell():
    counts = stats.PairedCounts.from_scores([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    assert counts == stats.PairedCounts(both=2, candidate_only=1, baseline_only=1, neither=1)


def test_bootstrap_with_the_same_seed_gives_the_same_interval():
    scores = [1.0] * 30 + [0.0] * 10
    first = stats.bootstrap_mean(scores, rng=random.Random(7))
    second = stats.bootstrap_mean(scores, rng=random.Random(7))
    assert first == second
    assert first.value == 0.75
    # The percentile bootstrap of a proportion lands near the Wilson interval.
    wilson = stats.wilson(30, 40)
    assert first.lower == pytest.approx(wilson.lower, abs=0.05)
    assert first.upper == pytest.approx(wilson.upper, abs=0.05)


def test_paired_bootstrap_centres_on_the_mean_difference():
    candidate = [1.0] * 80 + [0.0] * 20
    baseline = [1.0] * 70 + [0.0] * 10 + [1.0] * 20
    interval = stats.bootstrap_paired_difference(candidate, baseline, rng=random.Random(1))
    assert interval.value == pytest.approx(-0.10)
    assert interval.lower < -0.15
    assert interval.upper == pytest.approx(0.0, abs=0.02)


def test_quantile_interval_brackets_the_median_with_order_statistics():
    values = [float(v) for v in range(1, 101)]  # 1..100
    interval = stats.quantile_interval(values, 0.5)
    assert interval.value == pytest.approx(50.5)
    assert interval.lower == 40.0
    assert interval.upper == 61.0


def test_quantile_interval_of_few_values_widens_to_the_maximum():
    interval = stats.quantile_interval([0.2, 0.3, 0.4], 0.95)
    assert interval.value == pytest.approx(0.39)
    assert (interval.lower, interval.upper) == (0.3, 0.4)
