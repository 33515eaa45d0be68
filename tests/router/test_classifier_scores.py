"""`DifficultyModel.scores` (what `shoal router classify` writes): per tier, a calibrated
probability that is an increasing function of the gain of the step into that tier, so anyone
who ranks requests by the second tier's score (a routing benchmark on a two-tier ladder)
measures the router itself."""

from __future__ import annotations

import json
import math
import random

import pytest

from shoal.router.classifier import MIN_NEEDED_SLOPE, DifficultyModel, Example, fit_needed, needed_probability, train_difficulty
from shoal.router.features import prompt_features

from .test_classifier_v2 import run

HARD = ["integral", "manifold", "eigenvalue", "lemma", "topology", "theorem"]


def graded(n: int, seed: int) -> list[Example]:
    """Prompts with 0..5 hard words; the more, the likelier the small tier fails where the
    large one answers (drawn at random, so gains vary smoothly rather than in three kinds)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = i % 6
        words = rng.sample(HARD, k) + [f"item{rng.randrange(40)}", "please", "answer"]
        rng.shuffle(words)
        small = rng.random() > 0.12 * k + 0.05
        large = rng.random() > 0.05
        out.append(Example(" ".join(words), {"small": small, "large": large}, None))
    return out


@pytest.fixture(scope="module")
def model() -> DifficultyModel:
    return train_difficulty(graded(600, 1), ["small", "large"], epochs=6, calibration_folds=3)


def test_fit_needed_recovers_a_known_logistic_map_and_keeps_the_slope_positive():
    rng = random.Random(7)
    pairs = []
    for _ in range(4000):
        x = rng.uniform(-1, 1)
        pairs.append((x, 1.0 if rng.random() < 1 / (1 + math.exp(-(3.0 * x - 0.5))) else 0.0))
    slope, intercept = fit_needed(pairs)
    assert slope == pytest.approx(3.0, abs=0.35)
    assert intercept == pytest.approx(-0.5, abs=0.15)
    # No signal, or a reversed one: still increasing (never a flat or falling map), at the base rate.
    flat = fit_needed([(rng.uniform(-1, 1), 1.0 if i % 4 == 0 else 0.0) for i in range(400)])
    assert flat is not None and flat[0] >= MIN_NEEDED_SLOPE
    assert needed_probability(flat, 0.0) == pytest.approx(0.25, abs=0.05)
    reversed_ = fit_needed([(x, 1.0 - y) for x, y in pairs])
    assert reversed_ is not None and reversed_[0] == MIN_NEEDED_SLOPE
    assert fit_needed([]) is None


def test_scores_order_prompts_exactly_as_the_gain_and_are_calibrated(model):
    assert model.steps[0].needed is not None and model.steps[0].needed[0] > 1.0
    held_out = graded(300, 2)
    gains = [model.gains(e.prompt)[0] for e in held_out]
    scores = [model.scores(e.prompt)["large"] for e in held_out]
    assert len(set(round(g, 9) for g in gains)) > 20  # the prompts do not collapse into a few kinds
    for (g1, s1), (g2, s2) in zip(sorted(zip(gains, scores)), sorted(zip(gains, scores))[1:]):
        assert s2 >= s1 if g2 > g1 else s2 == pytest.approx(s1)
    # Calibrated: the mean score is the share of prompts where climbing helped (within noise).
    helped = sum(1 for e in held_out if not e.outcomes["small"] and e.outcomes["large"]) / len(held_out)
    assert sum(scores) / len(scores) == pytest.approx(helped, abs=0.06)
    # The hardest prompts score far above the easiest.
    by_kind = {k: [s for e, s in zip(held_out, scores) if sum(w in e.prompt for w in HARD) == k] for k in (0, 5)}
    assert sum(by_kind[5]) / len(by_kind[5]) > 2 * sum(by_kind[0]) / len(by_kind[0])


def test_the_map_survives_the_model_file_and_target_shares(model, tmp_path):
    loaded = DifficultyModel.from_json(json.loads(json.dumps(model.to_json())))
    assert loaded.steps[0].needed == pytest.approx(model.steps[0].needed, abs=1e-6)
    assert loaded.with_target_shares({"small": 0.5}).steps[0].needed == loaded.steps[0].needed
    bad = model.to_json()
    bad["steps"][0]["needed"] = [0.0, 0.1]
    with pytest.raises(ValueError, match="needed slope 0.0 is not positive"):
        DifficultyModel.from_json(bad)
    # A file written before the map scores with the helps model alone, as it did.
    old = model.to_json()
    del old["steps"][0]["needed"]
    before = DifficultyModel.from_json(old)
    prompt = "lemma manifold item3 please answer"
    assert before.scores(prompt)["large"] == pytest.approx(before.steps[0].helps.probability(prompt_features(prompt, before.bits)))


def test_classify_writes_scores_in_the_order_of_the_routers_gain(tmp_path):
    data = tmp_path / "outcomes.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "outcomes": e.outcomes}) + "\n" for e in graded(600, 1)))
    out = tmp_path / "model.json"
    assert run("train", "--data", str(data), "--out", str(out)).returncode == 0
    prompts = [e.prompt for e in graded(120, 3)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    done = run("classify", "--model", str(out), "--data", str(tmp_path / "p.jsonl"))
    assert done.returncode == 0, done.stderr
    written = {x["id"]: x["scores"]["large"] for x in map(json.loads, done.stdout.splitlines())}
    loaded = DifficultyModel.from_json(json.loads(out.read_text()))
    gains = {i: loaded.gains(p)[0] for i, p in enumerate(prompts)}
    pairs = [(i, j) for i in gains for j in gains if gains[i] > gains[j] + 1e-6]
    assert len(pairs) > 1000
    assert all(written[i] >= written[j] for i, j in pairs)
