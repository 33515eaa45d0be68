"""Holding a target share: thresholds from calibration, then the run-time controller under a
shifting traffic mix."""

from __future__ import annotations

import random

import pytest

from shoal.router.classifier import Example, train_difficulty
from shoal.router.share import HeldShareModel, ShareController

LEVEL_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def prompt(level: int, item: int) -> str:
    """Difficulty 0..99 as two words (tens, units), so that it reads as nearly continuous."""
    return f"task of difficulty {LEVEL_WORDS[level // 10]} and {LEVEL_WORDS[level % 10]}s item {chr(97 + item % 26)}{chr(97 + item // 26 % 26)}"


@pytest.fixture(scope="module")
def model():
    """A hundred difficulty levels in equal parts: at level L the small tier fails L in 100
    prompts, the large tier answers all. The expected gain of climbing rises with L."""
    examples = [
        Example(prompt(level, item), {"small": item % 100 >= level, "large": True})
        for level in range(100)
        for item in range(0, 100, 5)
    ]
    return train_difficulty(examples, ["small", "large"], calibration_folds=3)


def traffic(levels: list[int], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [prompt(rng.choice(levels), rng.randrange(600, 2000)) for _ in range(n)]


def share_small(decide, prompts: list[str]) -> float:
    return sum(decide(p) == "small" for p in prompts) / len(prompts)


def test_a_shifting_mix_moves_a_fixed_threshold_but_the_controller_holds_the_share(model):
    target = 0.6
    fixed = model.with_target_shares({"small": target})
    held = HeldShareModel.hold(model, {"small": target}, window=400)
    calm = traffic(list(range(100)), 4000, seed=1)  # like the training mix
    hard = traffic(list(range(40, 100)), 8000, seed=2)  # the afternoon: only the harder levels

    # On the training mix, the calibrated threshold alone is close to the target.
    assert share_small(fixed.tier_for, calm) == pytest.approx(target, abs=0.07)
    assert share_small(lambda p: held.predict(p).tier, calm) == pytest.approx(target, abs=0.07)

    # The mix shifts: the fixed threshold now keeps far less on the small tier...
    assert share_small(fixed.tier_for, hard) < 0.45
    # ...while the controller walks its effective target up, in bounded steps, and holds.
    windows, effective = [], []
    for start in range(0, len(hard), 400):
        windows.append(share_small(lambda p: held.predict(p).tier, hard[start : start + 400]))
        effective.append(held.controller.effective["small"])
    assert all(w == pytest.approx(target, abs=0.07) for w in windows[-8:]), (windows, effective)
    assert max(effective) <= target + 0.2
    # No oscillation: after the climb, every later move is smaller than the one before it
    # changed direction.
    moves = [b - a for a, b in zip(effective, effective[1:]) if b != a]
    reversals = [abs(m) for m, previous in zip(moves[1:], moves) if (m > 0) != (previous > 0)]
    assert reversals == sorted(reversals, reverse=True), moves


def test_the_controller_ignores_noise_and_respects_its_bound():
    calibration = [[i / 1000] for i in range(1000)]
    controller = ShareController(["small", "large"], calibration, {"small": 0.8}, [0.05], window=500)
    assert controller.thresholds()[0] == pytest.approx(0.7995)
    # 79 % small is within sampling noise of 80 % over 500 decisions: nothing moves.
    for i in range(500):
        controller.observe("small" if i < 395 else "large")
    assert (controller.effective, controller.adjustments, controller.last_observed) == ({"small": 0.8}, 0, {"small": 0.79})
    # Nothing at all stays small: half the error per window, never past the 0.2 bound.
    steps = []
    for _ in range(5):
        for _ in range(500):
            controller.observe("large")
        steps.append(round(controller.effective["small"], 6))
    assert steps == [1.0, 1.0, 1.0, 1.0, 1.0]
    controller = ShareController(["small", "large"], calibration, {"small": 0.5}, [0.05], window=500)
    steps = []
    for _ in range(3):
        for _ in range(500):
            controller.observe("large")
        steps.append(round(controller.effective["small"], 6))
    assert steps == [0.7, 0.7, 0.7]
    assert controller.thresholds()[0] == pytest.approx(0.6995)


def test_a_controller_needs_sane_settings_and_a_model_needs_calibration(model):
    with pytest.raises(ValueError):
        ShareController(["small", "large"], [[0.0]], {"small": 0.5}, [0.05], window=0)
    with pytest.raises(ValueError):
        ShareController(["small", "large"], [[0.0]], {"small": 0.5}, [0.05], gain=1.5)
    bare = train_difficulty([Example(prompt(1, 1), {"small": True, "large": True}), Example(prompt(9, 1), {"small": False, "large": True})], ["small", "large"], calibration_folds=0)
    with pytest.raises(ValueError, match="no calibration sample"):
        HeldShareModel.hold(bare, {"small": 0.5})
