"""Recalibrating a v2 step from evaluation outcomes (router/learning.py), on real outcomes.

The data: GSM8K questions with RouteLLM's published per-prompt outcomes of a weak and a
strong model (tests/router/data/README.md). The model is trained on 200 of them; the
other 100 play the evaluation dataset, whose "serving checkpoint" outcomes are the weak
model's and whose candidate outcomes are changed on purpose.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from shoal.router.classifier import DifficultyModel, Example, read_examples, train, train_difficulty
from shoal.router.learning import PRIOR_ITEMS, CannotLearn, recalibrate

from .conftest import ladder_config, wait_for
from .test_classifier_router import EASY, HARD, tiers_for
from .test_classifier_v2 import synthetic

DATA = Path(__file__).parent / "data" / "gsm8k-outcomes-sample.jsonl"


@pytest.fixture(scope="module")
def examples():
    examples, order = read_examples(DATA)
    assert order == ["small", "large"] and len(examples) == 300
    return examples


@pytest.fixture(scope="module")
def model_json(examples) -> dict:
    # Half kept small: on 200 prompts the regularised model's gains sit mostly above the
    # default threshold (climbing helps a quarter of GSM8K prompts), which would leave no
    # room to show a share falling.
    return train_difficulty(examples[:200], ["small", "large"], bits=12).with_target_shares({"small": 0.5}).to_json()


def share_kept_small(model: dict, prompts: list[str]) -> float:
    parsed = DifficultyModel.from_json(model)
    return sum(parsed.tier_for(p) == "small" for p in prompts) / len(prompts)


def evaluation(examples):
    items = examples[200:]
    return [e.prompt for e in items], [e.outcomes["small"] for e in items]


def test_a_checkpoint_that_fails_more_items_keeps_fewer_requests_on_its_tier(examples, model_json):
    prompts, serving = evaluation(examples)
    # The candidate loses every second item the serving checkpoint answered well.
    right = 0
    worse = []
    for ok in serving:
        right += ok
        worse.append(ok and right % 2 == 1)
    traffic = [e.prompt for e in examples]
    before = share_kept_small(model_json, traffic)
    learned, summary = recalibrate(model_json, "small", prompts, worse, serving)
    after = share_kept_small(learned, traffic)
    assert summary.items == 100
    assert summary.previous_failure_rate == pytest.approx(sum(not ok for ok in serving) / 100)
    assert summary.failure_rate == pytest.approx(sum(not ok for ok in worse) / 100)
    assert summary.failure_rate > summary.previous_failure_rate + 0.2
    # The predicted need for help rises by the shrunk change in failure rate...
    change = (summary.failure_rate - summary.previous_failure_rate) * 100 / (100 + PRIOR_ITEMS)
    assert summary.mean_helps_after - summary.mean_helps_before == pytest.approx(change, abs=1e-6)
    assert summary.intercept_after > summary.intercept_before
    # ...and at the same threshold clearly fewer requests stay on the small tier.
    assert after < before - 0.15, (before, after)
    # Only the helps intercept of that step moved.
    assert learned["steps"][0]["helps"]["weights"] == model_json["steps"][0]["helps"]["weights"]
    assert learned["steps"][0]["hurts"] == model_json["steps"][0]["hurts"]
    assert learned["steps"][0]["threshold"] == model_json["steps"][0]["threshold"]
    assert learned["info"]["recalibrated"]["items"] == 100


def test_a_checkpoint_that_fails_fewer_items_keeps_more_requests_and_an_equal_one_changes_nothing(examples, model_json):
    prompts, serving = evaluation(examples)
    traffic = [e.prompt for e in examples]
    better = [True] * len(serving)
    learned, summary = recalibrate(model_json, "small", prompts, better, serving)
    assert summary.failure_rate == 0.0
    assert share_kept_small(learned, traffic) > share_kept_small(model_json, traffic) + 0.1
    same, unchanged = recalibrate(model_json, "small", prompts, serving, serving)
    assert unchanged.intercept_after == pytest.approx(unchanged.intercept_before, abs=1e-6)
    assert share_kept_small(same, traffic) == share_kept_small(model_json, traffic)


def test_few_items_move_the_model_less_than_many_with_the_same_rates(examples, model_json):
    prompts, serving = evaluation(examples)
    ten = recalibrate(model_json, "small", prompts[:10], [False] * 10, [True] * 10)[1]
    hundred = recalibrate(model_json, "small", prompts, [False] * 100, [True] * 100)[1]
    assert ten.mean_helps_after - ten.mean_helps_before == pytest.approx(10 / 30, abs=1e-6)
    # 100 items would move it by 100/120 = 0.83: past certainty, so it stops at the bound.
    assert hundred.mean_helps_before + 100 / 120 > 1
    assert hundred.mean_helps_after == pytest.approx(0.999, abs=1e-6)


def test_unscored_items_are_left_out_of_the_comparison(examples, model_json):
    prompts, serving = evaluation(examples)
    candidate = [None if i % 2 else ok for i, ok in enumerate(serving)]
    previous = [None if i % 5 == 0 else ok for i, ok in enumerate(serving)]
    summary = recalibrate(model_json, "small", prompts, candidate, previous)[1]
    assert summary.items == sum(1 for i in range(100) if i % 2 == 0 and i % 5 != 0) == 40


def test_what_cannot_be_learned_says_why(examples, model_json):
    prompts, serving = evaluation(examples)
    v1 = train([("add 2 and 2", "small"), ("prove it", "large")], ["small", "large"], epochs=1).to_json()
    with pytest.raises(CannotLearn, match="not a v2 model"):
        recalibrate(v1, "small", prompts, serving, serving)
    with pytest.raises(CannotLearn, match="no step above 'large'"):
        recalibrate(model_json, "large", prompts, serving, serving)
    with pytest.raises(CannotLearn, match="no evaluation item has an outcome for both"):
        recalibrate(model_json, "small", prompts, [None] * 100, serving)


def test_the_learned_model_is_a_loadable_v2_model_with_calibration_moved_along(examples, model_json, tmp_path):
    prompts, serving = evaluation(examples)
    learned, summary = recalibrate(model_json, "small", prompts, [False] * 100, serving)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(learned))
    loaded = DifficultyModel.from_json(json.loads(path.read_text()))
    moved = summary.mean_helps_after - summary.mean_helps_before
    assert loaded.calibration[0][0] == pytest.approx(model_json["calibration"][0][0] + moved, abs=1e-3)


def mean_helps(logits: list[float], shift: float = 0.0) -> float:
    return sum(1 / (1 + math.exp(-(z + shift))) for z in logits) / len(logits)


def test_without_prompts_the_mean_helps_over_the_models_training_sample_moves_by_the_shrunk_change(examples, model_json):
    prompts, serving = evaluation(examples)
    worse = [ok and i % 2 == 0 for i, ok in enumerate(serving)]
    learned, summary = recalibrate(model_json, "small", None, worse, serving)
    assert (summary.reference, summary.reference_size, summary.items) == ("trainingSample", 200, 100)
    sample = [row[0] for row in model_json["helpsLogits"]]
    shift = summary.intercept_after - summary.intercept_before
    change = (summary.failure_rate - summary.previous_failure_rate) * 100 / (100 + PRIOR_ITEMS)
    assert change > 0.1
    assert mean_helps(sample, shift) - mean_helps(sample) == pytest.approx(change, abs=1e-3)
    # The learned model carries its own logits, moved by the same shift, for the next one.
    assert [row[0] for row in learned["helpsLogits"]] == pytest.approx([z + shift for z in sample], abs=1e-4)
    assert learned["info"]["recalibrated"]["reference"] == "trainingSample"
    # Weights and the hurts model as trained; at the same threshold fewer requests stay
    # small, as they do when the same outcomes come with their prompts.
    assert learned["steps"][0]["helps"]["weights"] == model_json["steps"][0]["helps"]["weights"]
    assert learned["steps"][0]["hurts"] == model_json["steps"][0]["hurts"]
    traffic = [e.prompt for e in examples]
    with_prompts = recalibrate(model_json, "small", prompts, worse, serving)[0]
    assert share_kept_small(learned, traffic) < share_kept_small(model_json, traffic) - 0.15
    assert share_kept_small(learned, traffic) == pytest.approx(share_kept_small(with_prompts, traffic), abs=0.05)


def test_without_prompts_a_model_file_without_the_training_sample_learns_at_the_intercept(examples, model_json):
    _, serving = evaluation(examples)
    older = {k: v for k, v in model_json.items() if k != "helpsLogits"}
    learned, summary = recalibrate(older, "small", None, [False] * 100, serving)
    assert (summary.reference, summary.reference_size) == ("interceptOnly", 1)
    change = (1 - summary.previous_failure_rate) * 100 / (100 + PRIOR_ITEMS)
    before, after = (1 / (1 + math.exp(-b)) for b in (summary.intercept_before, summary.intercept_after))
    assert after - before == pytest.approx(change, abs=1e-3)
    assert "helpsLogits" not in learned
    assert DifficultyModel.from_json(learned).helps_logits == []


def test_the_sidecar_switches_to_the_learned_model_when_its_file_appears_and_reports_its_version(fresh_engines, start_router, tmp_path):
    examples = [Example(e.prompt, {"small": e.outcomes["small"], "frontier": e.outcomes["large"]}) for e in synthetic()]
    configured = json.dumps(train_difficulty(examples, ["small", "frontier"], epochs=4).to_json())
    user_path, learned_path = tmp_path / "model.json", tmp_path / "learned" / "model.json"
    user_path.write_text(configured)
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], classifier={"path": str(user_path), "learnedPath": str(learned_path)}))
    state = json.loads(router.get("/shoal/state")[1])
    assert state["classifier"] == {"version": "sha256:" + hashlib.sha256(configured.encode()).hexdigest()[:16], "source": "configured"}
    assert tiers_for(router, [HARD, EASY]) == [("frontier", "classifier"), ("small", "classifier")]

    # A promoted small checkpoint failed every sum the one before answered: the learned
    # model sends the easy prompt up too.
    sums = [e.prompt for e in synthetic() if e.prompt.startswith("add")]
    learned, _ = recalibrate(json.loads(configured), "small", sums, [False] * len(sums), [True] * len(sums))
    text = json.dumps(learned)
    learned_path.parent.mkdir()
    learned_path.write_text(text)
    version = "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    wait_for(lambda: json.loads(router.get("/shoal/state")[1])["classifier"]["version"] == version, "the learned model loaded", timeout=30)
    assert json.loads(router.get("/shoal/state")[1])["classifier"]["source"] == "learned"
    assert tiers_for(router, [HARD, EASY]) == [("frontier", "classifier"), ("frontier", "classifier")]
