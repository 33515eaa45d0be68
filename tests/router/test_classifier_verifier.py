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


HUGE = "9" * 400  # reads as inf as a float
HUGE_ANSWER = "Adding them all up gives the total.\n#### " + HUGE


def test_magnitude_of_numbers_too_long_for_a_float_or_of_zero_is_no_signal():
    assert V.magnitude(HUGE, "a price of $1,200") == "-"
    assert V.magnitude("12", f"the numbers 5 and {HUGE}") == "-"
    assert V.magnitude(HUGE, f"the number {HUGE}") == "-"
    assert V.magnitude("12", "0 apples and 0.0 pears") == "-"
    # Finite, but their ratio overflows (or underflows) a float: still powers of ten.
    assert V.magnitude("1" + "0" * 300, "a share of 0." + "0" * 100 + "1") == "3"
    assert V.magnitude("0." + "0" * 300 + "1", "1" + "0" * 300) == "-3"
    assert V.answer_signals(HUGE_ANSWER, "add 5 and 8")["magnitude"] == "-"


def test_calculations_with_numbers_too_long_for_a_float_or_a_division_by_zero_are_not_checked():
    assert V.arithmetic_checks(f"<<{HUGE}*2=5>>5 and <<5/0=7>>7 and <<1e400-1=inf>>inf and <<3*4=12>>12") == (1, 0)
    assert V.arithmetic_checks(f"<<2*3=nan>>nan and <<2*3=inf>> and <<2*3=7>>7") == (1, 1)
    assert V.arithmetic_checks(f"{HUGE} * 2 = 5 then 6 / 0 = 1 then 2 + 2 = 4") == (1, 0)
    assert V.verify_arithmetic(f"<<{HUGE}/{HUGE}=1>>1").accepted
    signals = V.answer_signals(f"<<5/0=inf>>inf\n#### {HUGE}", f"{HUGE} apples")
    assert (signals["final_is_last"], signals["checked"], signals["magnitude"]) == ("False", "0", "-")


def test_answer_features_of_version_1_never_compute_the_magnitude(monkeypatch):
    def boom(*_):
        raise AssertionError("magnitude computed")

    monkeypatch.setattr(V, "magnitude", boom)
    assert not [t for t in answer_tokens("add 5 and 8", HUGE_ANSWER, version=1) if t.startswith("s:magnitude")]


def test_training_on_an_answer_too_long_for_a_float_works(tmp_path):
    from .test_classifier_v2 import run

    data = tmp_path / "outcomes.jsonl"
    lines = [{"prompt": e.prompt, "outcomes": e.outcomes, "response": e.response} for e in synthetic()]
    lines.append({"prompt": "add 5 and 8 please", "outcomes": {"small": False, "large": True}, "response": HUGE_ANSWER})
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "model.json"
    done = run("train", "--data", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("trained a v2 model on 181 examples (181 with responses)")
    assert load_model(out).tier_for("add 5 and 8 please", HUGE_ANSWER) in ("small", "large")


def test_an_older_model_file_routes_an_answer_too_long_for_a_float():
    old = load_model(OLD_MODEL)
    assert old.tier_for("add 5 and 8 please", HUGE_ANSWER) in ("small", "large")
    assert old.tier_for(f"add 5 and {HUGE} please", HUGE_ANSWER) in ("small", "large")


@pytest.mark.parametrize("prompt", ["add 5 and 8 please", f"add 5 and {HUGE} please", "add 0 and 0"])
def test_the_cascade_judges_an_answer_too_long_for_a_float(model, prompt):
    spec = CascadeSpec(tiers=["small"], verifiers=["trained", "refusal"])
    cascade = Cascade(spec, lambda: model, CascadeMetrics(CollectorRegistry()), {})
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": HUGE_ANSWER}}]}).encode()
    verdict = cascade.judge("small", {}, prompt, body)
    gain = model.verifier_gain(prompt, HUGE_ANSWER)
    assert (verdict.accepted, verdict.reason) == ((True, V.ACCEPT) if gain < model.verifier.threshold else (False, V.TRAINED))
    # And the refusal verifier after it runs.
    refused = json.dumps({"choices": [{"message": {"role": "assistant", "content": "I cannot say.\n#### " + HUGE}}]}).encode()
    if cascade.judge("small", {}, prompt, refused).reason != V.TRAINED:
        assert cascade.judge("small", {}, prompt, refused).reason == V.REFUSAL


def test_the_cascade_judges_with_the_routing_decisions_prompt_features_and_the_models_exact_gain(model, monkeypatch):
    import asyncio
    import math
    from types import SimpleNamespace

    from shoal.router import features as F

    hashed = []
    real = F.prompt_features
    monkeypatch.setattr(F, "prompt_features", lambda text, *a, **k: hashed.append(text) or real(text, *a, **k))
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": UNSURE}}]}).encode()
    gain = model.verifier_gain(PROOF, UNSURE)

    def verdict(min_gain: float, snap_model) -> str | None:
        spec = CascadeSpec(tiers=["small"], verifiers=["trained"], trained_min_gain=min_gain)
        cascade = Cascade(spec, lambda: model, CascadeMetrics(CollectorRegistry()), {})
        predicted = snap_model.predict(PROOF)  # the routing decision
        call = SimpleNamespace(
            features=SimpleNamespace(text=PROOF, prompt_tokens=0), body={}, attempts=[],
            snap=SimpleNamespace(classifier=snap_model), decision=SimpleNamespace(predicted=predicted),
        )
        answer = SimpleNamespace(tier=SimpleNamespace(name="small"), status=200, body=body, streamed=False, logprobs=None)
        hashed.clear()
        result = asyncio.run(cascade(call, answer))
        assert hashed == ([] if snap_model is model else [PROOF])  # the decision's features, when its model judges
        return result

    # Rejected at a limit of exactly the model's gain, accepted just above it: the same number.
    assert verdict(gain, model) == f"trained: expected gain of climbing {gain:.2f} reaches {gain:.2f}"
    assert verdict(math.nextafter(gain, math.inf), model) is None
    # A model reloaded since the decision: its own features, the same verdict.
    other = DifficultyModel.from_json(model.to_json())
    assert verdict(gain, other) == f"trained: expected gain of climbing {gain:.2f} reaches {gain:.2f}"
    assert verdict(math.nextafter(gain, math.inf), other) is None
    assert model.predict(PROOF) == other.predict(PROOF)
