import random

import pytest

from shoal.evaluate.sequential import decide_sequential


def paired(both, cand_only, base_only, neither, seed=0):
    pairs = [(1.0, 1.0)] * both + [(1.0, 0.0)] * cand_only + [(0.0, 1.0)] * base_only + [(0.0, 0.0)] * neither
    random.Random(seed).shuffle(pairs)
    return [c for c, _ in pairs], [b for _, b in pairs]


def test_a_large_regression_is_blocked_at_the_first_look():
    cand, base = paired(650, 10, 140, 200)  # 1000 items, 13 points worse
    result = decide_sequential(cand, base, max_regression=0.02)
    assert (result.passed, result.look, result.items_used) == (False, 1, 250)
    assert result.interval.upper < 0


def test_an_equal_candidate_with_little_disagreement_passes_early():
    cand, base = paired(780, 10, 10, 200)  # 2% disagreement, equal
    result = decide_sequential(cand, base, max_regression=0.02)
    assert result.passed is True
    assert result.look < 4
    assert result.interval.lower >= -0.02


def test_an_unclear_case_goes_to_the_last_look_and_uses_every_item():
    cand, base = paired(700, 70, 80, 150)  # 15% disagreement, 1 point worse
    result = decide_sequential(cand, base, max_regression=0.02)
    assert (result.look, result.items_used) == (4, 1000)
    assert result.passed is True


def test_looks_must_end_at_the_whole_dataset():
    with pytest.raises(ValueError, match="looks must increase to 1.0"):
        decide_sequential([1.0], [1.0], max_regression=0.02, looks=(0.5,), spending=(0.05,))
