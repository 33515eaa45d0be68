"""The v2 model's verifier of a cascade: "the small answer is wrong" from the prompt and the
answer, "the large tier answers well" from the prompt, and older model files' verifiers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from shoal.api.routepolicy import CascadeSpec
from shoal.router import verify as V
from shoal.router.cascade import Cascade, CascadeMetrics
from shoal.router.classifier import DifficultyModel, Example, Step, Verifier, load_model, needed_probability, train_difficulty
from shoal.router.features import answer_features, answer_tokens

from .test_classifier_v2 import synthetic

OLD_MODEL = Path(__file__).parent / "data" / "v2-model-helps-hurts-verifier.json"
PROOF = "prove lemma 77 about compact manifolds rigorously"
UNSURE = "I am not sure how to prove this."


@pytest.fixture(scope="module")
def model() -> DifficultyModel:
    return train_difficulty(synthetic(), ["small", "large"], epochs=4, calibration_folds=3)


def test_magnitude_compares_the_final_answer_with_the_prompts_largest_number():
    prompt = "James runs 3 sprints 3 times a week, 60 meters each sprint. How far does he run a week?"
    assert V.magnitude("540", prompt) == "1"  # 540 / 60: one power of ten (rounded)
    assert V.magnitude("45", prompt) == "0"
    assert V.magnitude("0.5", "a price of $1,200") == "-3"
    assert V.magnitude("60000", "60 and 1,200") == "2"
    assert V.magnitude("0", prompt) == "zero"
    assert V.magnitude(None, prompt) == "-"
    assert V.magnitude("7", "no numbers here") == "-"
    answer = "He runs 3 * 60 = <<3*60=180>>180 meters a session.\n#### 9000000"
    assert V.answer_signals(answer, prompt)["magnitude"] == "3"  # capped at three powers of ten


def test_answer_features_of_version_1_leave_the_magnitude_out():
    prompt, answer = "add 5 and 8", "5 + 8 = 13\n#### 13"
    assert {t for t in answer_tokens(prompt, answer) if t.startswith("s:magnitude")} == {f"s:magnitude=0#{i}" for i in range(12)}
    assert not [t for t in answer_tokens(prompt, answer, version=1) if t.startswith("s:magnitude")]
    assert answer_features(prompt, answer, 10, version=1) != answer_features(prompt, answer, 10)


def test_the_verifiers_gain_is_the_chance_the_answer_is_wrong_plus_the_chance_the_large_tier_is_right_minus_one(model):
    assert isinstance(model.verifier, Verifier)
    wrong, right = model.verifier.probabilities(PROOF, UNSURE, model.bits)
    assert wrong > 0.8 and right > 0.8  # the small tier never proves, the large one always does
    assert model.verifier_gain(PROOF, UNSURE) == pytest.approx(wrong + right - 1)
    # The score is the calibrated map of that gain (Step.needed), so it orders answers as the climb does.
    assert model.verifier.needed is not None
    assert model.scores(PROOF, UNSURE)["large"] == pytest.approx(needed_probability(model.verifier.needed, wrong + right - 1))
    assert model.tier_for(PROOF, UNSURE) == "large"
    assert model.tier_for("add 500 and 503 please", "The sum is 1003.\n#### 1003") == "small"
    # Riddles: the answer is wrong, but the large tier fails them too, so climbing buys nothing.
    assert model.verifier_gain("solve the riddle 777 of the sphinx", "The answer is a man.\n#### 1") < 0.05
    assert len(model.verifier_calibration) == 180


def test_the_verifier_learns_wrong_from_answers_and_right_from_every_prompt():
    # Lines without a response still teach "right"; only answered ones teach "wrong".
    examples = synthetic(30) + [Example(f"prove lemma {i} about spheres rigorously", {"small": False, "large": True}) for i in range(60)]
    model = train_difficulty(examples, ["small", "large"], epochs=4, calibration_folds=0)
    assert model.info["withResponse"] == 90
    _, right = model.verifier.probabilities("prove lemma 5 about spheres", UNSURE, model.bits)
    assert right > 0.9


def test_the_verifier_round_trips_through_its_json_file(model, tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model.to_json(), separators=(",", ":")))
    written = json.loads(path.read_text())["verifier"]
    assert sorted(written) == ["answerFeatures", "lower", "needed", "right", "threshold", "upper", "wrong"]
    assert written["answerFeatures"] == 2
    loaded = load_model(path)
    assert isinstance(loaded.verifier, Verifier)
    for example in synthetic(10):
        assert loaded.verifier_gain(example.prompt, example.response) == pytest.approx(model.verifier_gain(example.prompt, example.response), abs=0.03)
        assert loaded.tier_for(example.prompt, example.response) == model.tier_for(example.prompt, example.response)


def test_a_verifier_on_unknown_answer_features_is_refused(model):
    data = json.loads(json.dumps(model.to_json()))
    data["verifier"]["answerFeatures"] = 3
    with pytest.raises(ValueError, match="malformed shoal-router-classifier/v2 model: answerFeatures 3 outside 2..2"):
        DifficultyModel.from_json(data)


def test_a_model_file_with_the_older_helps_hurts_verifier_judges_as_the_code_that_wrote_it():
    old = load_model(OLD_MODEL)
    assert isinstance(old.verifier, Step)
    # The gains the writing code gave these answers (before the magnitude signal existed).
    assert old.verifier_gain(PROOF, UNSURE) == pytest.approx(0.9914938739150924, abs=1e-9)
    assert old.verifier_gain("add 5 and 8 please", "The sum is 13.\n#### 13") == pytest.approx(-0.054141735507867904, abs=1e-9)
    assert old.tier_for(PROOF, UNSURE) == "large"
    assert old.tier_for("add 5 and 8 please", "The sum is 13.\n#### 13") == "small"
    assert json.loads(json.dumps(old.to_json()))["verifier"].keys() == {"lower", "upper", "threshold", "helps", "hurts"}


def test_the_cascades_trained_verifier_rejects_with_the_models_gain(model):
    spec = CascadeSpec(tiers=["small"], verifiers=["trained"])
    cascade = Cascade(spec, lambda: model, CascadeMetrics(CollectorRegistry()), {})

    def body(text: str) -> bytes:
        return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()

    verdict = cascade.judge("small", {}, PROOF, body(UNSURE))
    assert (verdict.accepted, verdict.reason) == (False, V.TRAINED)
    assert verdict.detail == f"expected gain of climbing {model.verifier_gain(PROOF, UNSURE):.2f} reaches 0.05"
    assert cascade.judge("small", {}, "add 500 and 503 please", body("The sum is 1003.\n#### 1003")).accepted
