"""RouteLLM's routing measurement (decile sweep, APGR, CPT) on outcomes worked out by hand."""

import pytest

from shoal.sim.quality import Outcome, decile_edges, evaluate, oracle_curve, route_quality

# Weak right on 5 of 10, strong on 8; only the strong model is right on 3 (prompts 5..7).
OUTCOMES = [Outcome(True, True)] * 5 + [Outcome(False, True)] * 3 + [Outcome(False, False)] * 2


def test_the_oracle_recovers_the_gap_with_the_fewest_strong_calls():
    curve = oracle_curve(OUTCOMES)
    assert curve.shares[:5] == pytest.approx((0.0, 0.1, 0.2, 0.3, 0.4))
    assert curve.quality[:5] == pytest.approx((0.5, 0.6, 0.7, 0.8, 0.8))
    quality = evaluate(OUTCOMES, curve)
    # Area 0.755 over the weak-only 0.5, per gap 0.3.
    assert (quality.weak, quality.strong) == (0.5, 0.8)
    assert quality.apgr == pytest.approx(0.85)
    assert quality.cpt50 == pytest.approx(0.15)
    assert quality.cpt80 == pytest.approx(0.24)


def test_a_router_that_ranks_the_helped_prompts_first_matches_the_oracle():
    scores = [0.0] * 5 + [1.0] * 3 + [0.0] * 2
    assert decile_edges(scores) == pytest.approx([0, 0, 0, 0, 0, 0, 0, 0.3, 1, 1, 1])
    quality = route_quality(OUTCOMES, scores)
    assert sorted(set(zip(quality.curve.shares, quality.curve.quality))) == [(0.0, 0.5), (0.3, 0.8), (1.0, 0.8)]
    assert quality.apgr == pytest.approx(0.85)
    assert quality.cpt50 == pytest.approx(0.15)


def test_a_router_without_information_scores_one_half_and_a_backwards_one_less():
    assert route_quality(OUTCOMES, [0.5] * 10).apgr == pytest.approx(0.5)
    assert route_quality(OUTCOMES, [0.5] * 10).cpt50 == pytest.approx(0.5)
    backwards = route_quality(OUTCOMES, [1.0] * 5 + [0.0] * 3 + [1.0] * 2)
    assert backwards.apgr < 0.5
    assert backwards.cpt80 == pytest.approx(0.94)


def test_on_a_curve_that_dips_the_cost_is_the_smallest_share_that_recovers_enough():
    # Weak right on 4 (where strong fails), strong on the other 6: weak 0.4, strong 0.6.
    # Sending the 4 first drops quality to 0 at 40% strong; it climbs back to 0.6 at 100%.
    dips = [Outcome(True, False)] * 4 + [Outcome(False, True)] * 6
    quality = route_quality(dips, [1.0] * 4 + [0.0] * 6)
    assert sorted(set(zip(quality.curve.shares, quality.curve.quality))) == [(0.0, 0.4), (0.4, 0.0), (1.0, 0.6)]
    assert quality.cpt50 == pytest.approx(0.9)
    assert evaluate(dips, oracle_curve(dips)).cpt80 == pytest.approx(0.16)
    with pytest.raises(ValueError):
        route_quality([], [])
