"""The v2 routing model: outcome lines, the expected gain per step, target shares, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.router import features as F
from shoal.router.classifier import (
    DifficultyModel,
    Example,
    fit_averaged,
    load_model,
    read_examples,
    step_labels,
    thresholds_for_shares,
    train_difficulty,
)


def synthetic(n_per_kind: int = 60) -> list[Example]:
    """Three kinds of prompt: sums both tiers get right (the large one slips on every tenth),
    proofs only the large tier gets right, and riddles neither gets right."""
    examples = []
    for i in range(n_per_kind):
        examples.append(Example(f"add {i} and {i + 3} please", {"small": True, "large": i % 10 != 0}, f"The sum is {2 * i + 3}.\n#### {2 * i + 3}"))
        examples.append(Example(f"prove lemma {i} about compact manifolds rigorously", {"small": False, "large": True}, "I am not sure how to prove this."))
        examples.append(Example(f"solve the riddle {i} of the sphinx", {"small": False, "large": False}, "The answer is a man.\n#### 1"))
    return examples


@pytest.fixture(scope="module")
def model() -> DifficultyModel:
    return train_difficulty(synthetic(), ["small", "large"], epochs=4, calibration_folds=3)


def test_outcome_and_tier_lines_become_per_tier_outcomes(tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_text(
        '{"prompt": "a", "outcomes": {"small": false, "medium": true, "large": true}, "response": "x"}\n'
        "\n"
        '{"prompt": "b", "tier": "medium"}\n'
        '{"prompt": "c", "outcomes": {"large": true}}\n'
    )
    examples, order = read_examples(data)
    assert order == ["small", "medium", "large"]
    assert examples == [
        Example("a", {"small": False, "medium": True, "large": True}, "x"),
        Example("b", {"small": False, "medium": True, "large": True}),
        Example("c", {"large": True}),
    ]
    assert step_labels(examples[0], "small", "medium") == (1.0, 0.0)
    assert step_labels(examples[0], "medium", "large") == (0.0, 0.0)
    assert step_labels(examples[2], "small", "medium") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "data.jsonl:1: not JSON"),
        ('{"prompt": 3, "tier": "small"}', 'data.jsonl:1: expected an object with a string "prompt"'),
        ('{"prompt": "x", "outcomes": {"small": "yes"}}', 'data.jsonl:1: "outcomes" must map tier names to true or false'),
        ('{"prompt": "x", "outcomes": {}}', 'data.jsonl:1: "outcomes" must map tier names to true or false'),
        ('{"prompt": "x"}', 'data.jsonl:1: expected {"prompt", "tier"} or {"prompt", "outcomes": {TIER: true|false}}'),
        ('{"prompt": "x", "tier": "small", "response": 5}', 'data.jsonl:1: "response" must be a string'),
        ('{"prompt": "x", "tier": "small"}', "at least two tiers are needed to learn where to route"),
    ],
)
def test_bad_training_lines_are_named(tmp_path, line, message):
    data = tmp_path / "data.jsonl"
    data.write_text(line + "\n")
    with pytest.raises(ValueError) as caught:
        read_examples(data)
    assert str(caught.value).endswith(message)


def test_the_model_climbs_only_where_climbing_helps(model):
    # Unseen numbers and lemma indices: the words carry the difficulty.
    assert model.tier_for("add 500 and 503 please") == "small"
    assert model.tier_for("prove lemma 999 about compact manifolds rigorously") == "large"
    # Both tiers fail riddles: climbing buys nothing, so they stay small.
    assert model.tier_for("solve the riddle 777 of the sphinx") == "small"
    scores = model.scores("prove lemma 999 about compact manifolds rigorously")
    assert scores["small"] == 1.0
    assert scores["large"] > 0.8
    assert model.scores("add 500 and 503 please")["large"] < 0.1
    assert model.predict("prove lemma 1 about compact manifolds rigorously").tier == "large"
    assert model.predict("prove lemma 1 about compact manifolds rigorously").confidence == 1.0


def test_the_verifier_reads_the_small_tiers_answer(model):
    assert model.verifier is not None
    prompt = "add 500 and 503 please"
    assert model.tier_for(prompt, "The sum is 1003.\n#### 1003") == "small"
    assert model.tier_for(prompt, "I am not sure how to prove this.") == "large"


def test_thresholds_for_shares_split_the_calibration_sample_in_order():
    calibration = [[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6], [0.5, 0.5]]
    classes = ["small", "medium", "large"]
    assert thresholds_for_shares(classes, calibration, {"small": 0.6}, [0.0, 0.0]) == pytest.approx([0.35, 0.0])
    # 40% stop at small; of the 3 that climb (gains 0.7, 0.6, 0.5 at the next step) one
    # more fifth stops at medium: the one with the least gain.
    assert thresholds_for_shares(classes, calibration, {"small": 0.4, "medium": 0.2}, [0.0, 0.0]) == pytest.approx([0.25, 0.55])
    assert thresholds_for_shares(classes, calibration, {"small": 1.0}, [0.0, 0.0])[0] == float("inf")
    assert thresholds_for_shares(classes, calibration, {"small": 0.0}, [0.0, 0.0])[0] == float("-inf")
    assert thresholds_for_shares(classes, [], {"small": 0.5}, [0.1, 0.2]) == [0.1, 0.2]
    with pytest.raises(ValueError, match="outside the model"):
        thresholds_for_shares(classes, calibration, {"huge": 0.5}, [0.0, 0.0])


def test_a_target_share_from_calibration_holds_on_the_training_mix(model):
    # Three kinds of prompt in equal parts: the shares the data can express are thirds.
    assert len(model.calibration) == 180
    kept = {}
    for target in (0.0, 2 / 3, 1.0):
        shaped = model.with_target_shares({"small": target})
        kept[target] = sum(shaped.tier_for(e.prompt) == "small" for e in synthetic()) / 180
    assert kept == {0.0: 0.0, 2 / 3: pytest.approx(2 / 3), 1.0: 1.0}


def test_the_model_round_trips_through_its_json_file_under_a_mebibyte(model, tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model.to_json(), separators=(",", ":")))
    assert path.stat().st_size < 1 << 20
    loaded = load_model(path)
    assert isinstance(loaded, DifficultyModel)
    for example in synthetic(20):
        assert loaded.tier_for(example.prompt) == model.tier_for(example.prompt)
        assert loaded.gains(example.prompt)[0] == pytest.approx(model.gains(example.prompt)[0], abs=0.03)
    assert loaded.calibration == [[pytest.approx(v, abs=1e-4) for v in row] for row in model.calibration]


def test_a_corrupt_model_file_is_refused_with_a_reason(model, tmp_path):
    data = model.to_json()
    data["steps"][0]["helps"]["weights"] = "AAAA"
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="a weight array has 3 entries, expected 65536"):
        load_model(path)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal.cli", "router", *args], capture_output=True, text=True)


def test_train_on_outcome_lines_then_classify_writes_one_line_per_input(tmp_path):
    data = tmp_path / "outcomes.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "outcomes": e.outcomes, "response": e.response}) + "\n" for e in synthetic()))
    out = tmp_path / "model.json"
    done = run("train", "--data", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("trained a v2 model on 180 examples (180 with responses); tiers small, large; thresholds small->large ")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"id": "p1", "prompt": "prove lemma 4242 about compact manifolds rigorously"}\n'
        '{"prompt": "add 7 and 9 please"}\n'
        '{"id": 3, "prompt": "add 7 and 9 please", "response": "I am not sure how to prove this."}\n'
    )
    done = run("classify", "--model", str(out), "--data", str(prompts))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(x["id"], x["tier"]) for x in lines] == [("p1", "large"), (2, "small"), (3, "large")]
    assert [sorted(x["scores"]) for x in lines] == [["large", "small"]] * 3
    assert [x["scores"]["small"] for x in lines] == [1.0, 1.0, 1.0]
    assert lines[0]["scores"]["large"] > 0.8 > 0.1 > lines[1]["scores"]["large"]
    # Every prompt to large when small may keep none of the traffic.
    done = run("classify", "--model", str(out), "--data", str(prompts), "--target-shares", "small=0")
    assert [json.loads(line)["tier"] for line in done.stdout.splitlines()] == ["large", "large", "large"]


def test_classify_with_a_v1_model_scores_the_class_probabilities(tmp_path):
    data = tmp_path / "tiers.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "tier": "small" if e.outcomes["small"] else "large"}) + "\n" for e in synthetic(20)))
    out = tmp_path / "model.json"
    assert run("train", "--data", str(data), "--out", str(out)).returncode == 0
    assert json.loads(out.read_text())["format"] == "shoal-router-classifier/v1"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "prove lemma 4242 about compact manifolds rigorously"}\n')
    line = json.loads(run("classify", "--model", str(out), "--data", str(prompts)).stdout)
    assert (line["id"], line["tier"]) == ("a", "large")
    assert line["scores"]["small"] + line["scores"]["large"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("command", "data", "message"),
    [
        ("classify", '{"prompt": "x"}\nnot json\n', "shoal router classify: {data}:2: not JSON"),
        ("classify", '{"id": 1}\n', 'shoal router classify: {data}:1: expected an object with a string "prompt"'),
        ("classify", '{"prompt": "x", "response": 1}\n', 'shoal router classify: {data}:1: "response" must be a string'),
        ("train", '{"prompt": "x", "outcomes": {"small": 1}}\n', 'shoal router train: {data}:1: "outcomes" must map tier names to true or false'),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, model, command, data, message):
    model_path = tmp_path / "model.json"
    model_path.write_text(json.dumps(model.to_json()))
    path = tmp_path / "data.jsonl"
    path.write_text(data)
    args = ["--model", str(model_path), "--data", str(path)] if command == "classify" else ["--data", str(path), "--out", str(tmp_path / "m.json")]
    done = run(command, *args)
    assert done.returncode == 1
    assert done.stderr == message.format(data=path) + "\n"


def test_classify_refuses_a_file_that_is_not_a_model_in_one_line(tmp_path):
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"format": "shoal-router-classifier/v2", "bits": 16}')
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    done = run("classify", "--model", str(bogus), "--data", str(prompts))
    assert done.returncode == 1
    assert done.stderr.startswith(f"shoal router classify: {bogus} is not a model written by shoal router train (")
    assert "Traceback" not in done.stderr
    done = run("classify", "--model", str(tmp_path / "missing.json"), "--data", str(prompts))
    assert (done.returncode, done.stderr.count("\n"), "Traceback" in done.stderr) == (1, 1, False)


def test_the_averaged_trainer_separates_two_prompt_groups_and_scores_unknown_words_at_the_base_rate():
    # 60 prompts of one kind, all positive, 140 of another, all negative: a base rate of 0.3.
    rows = [F.prompt_features(f"prove lemma {i} about compact manifolds", 10) for i in range(60)]
    rows += [F.prompt_features(f"add {i} and {i + 1} please", 10) for i in range(140)]
    labels = [1.0] * 60 + [0.0] * 140
    model = fit_averaged(rows, labels, 10)
    assert model.bias == pytest.approx(math.log(0.3 / 0.7))
    assert model.probability({}) == pytest.approx(0.3)
    assert model.probability(F.prompt_features("prove lemma 77 about compact manifolds", 10)) > 0.9
    assert model.probability(F.prompt_features("add 77 and 78 please", 10)) < 0.1
    # The penalty holds the weights back: a hundred times stronger, the groups blur.
    held = fit_averaged(rows, labels, 10, l2=1.0)
    assert 0.3 < held.probability(F.prompt_features("prove lemma 77 about compact manifolds", 10)) < 0.5


def test_a_model_file_from_the_adagrad_trainer_loads_and_scores_as_it_did():
    model = load_model(Path(__file__).parent / "data" / "v2-model-adagrad.json")
    assert isinstance(model, DifficultyModel)
    assert (model.bits, model.classes, model.info["epochs"], model.prompt_features) == (8, ["small", "large"], 4, 1)
    # The values the trainer of the time computed from this file.
    assert model.gains("prove lemma 999 about compact manifolds rigorously")[0] == pytest.approx(0.9922374655020926, abs=1e-9)
    assert model.gains("add 500 and 503 please")[0] == pytest.approx(-0.2091758564739604, abs=1e-9)
    assert model.scores("add 500 and 503 please", "I am not sure how to prove this.")["large"] == pytest.approx(0.6818666229714128, abs=1e-9)
    assert model.with_target_shares({"small": 0.5}).steps[0].threshold == pytest.approx(0.05795)
    assert model.tier_for("prove lemma 999 about compact manifolds rigorously") == "large"
    assert model.tier_for("add 500 and 503 please") == "small"


def test_version_2_prompt_features_add_the_opening_words_and_the_shape_of_each_number():
    text = "What is 12.5 plus 3 plus 40?"
    assert F.shape_tokens(text) == ["f:what", "f:is", "f:12", "f:5", "f:plus", "f:3", "n:4.", "n:1", "n:2", "nn:2"]
    assert F.prompt_features(text, 12, version=1) == F.hashed(F.prompt_tokens(text), 12)
    assert F.prompt_features(text, 12) == F.hashed(F.prompt_tokens(text) + F.shape_tokens(text), 12)


def test_a_trained_model_records_its_prompt_features_and_a_newer_version_is_refused(model):
    data = model.to_json()
    assert data["promptFeatures"] == F.PROMPT_FEATURES == 2
    assert DifficultyModel.from_json(json.loads(json.dumps(data))).prompt_features == 2
    with pytest.raises(ValueError, match="promptFeatures 3 outside 1..2"):
        DifficultyModel.from_json({**data, "promptFeatures": 3})
    # A file without the field was written before versions existed: version 1.
    del data["promptFeatures"]
    assert DifficultyModel.from_json(data).prompt_features == 1


def _with(data: dict, path: tuple, value) -> dict:
    data = json.loads(json.dumps(data))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("promptFeatures",), 1.7, "promptFeatures 1.7 is not an integer"),
        (("promptFeatures",), 2.0, "promptFeatures 2.0 is not an integer"),
        (("promptFeatures",), True, "promptFeatures True is not an integer"),
        (("promptFeatures",), "2", "promptFeatures '2' is not an integer"),
        (("verifier", "answerFeatures"), 2.9, "answerFeatures 2.9 is not an integer"),
        (("verifier", "answerFeatures"), True, "answerFeatures True is not an integer"),
        (("steps", 0, "needed"), [float("nan"), 0.1], r"steps\[0\].needed \[nan, 0.1\] is not \[slope, intercept\] of two finite numbers"),
        (("steps", 0, "needed"), [1.0, float("inf")], r"steps\[0\].needed \[1.0, inf\] is not \[slope, intercept\]"),
        (("steps", 0, "needed"), [1.0], r"steps\[0\].needed \[1.0\] is not \[slope, intercept\]"),
        (("steps", 0, "needed"), [True, 0.0], r"steps\[0\].needed \[True, 0.0\] is not \[slope, intercept\]"),
        (("steps", 0, "needed"), "1,2", r"steps\[0\].needed '1,2' is not \[slope, intercept\]"),
        (("steps", 0, "needed"), [-1.0, 0.0], r"steps\[0\].needed slope -1.0 is not positive"),
        (("verifier", "needed"), [float("-inf"), 0.0], r"verifier.needed \[-inf, 0.0\] is not \[slope, intercept\]"),
        (("helpsLogits", 0), [0.1, 0.2], r"helpsLogits\[0\] \[0.1, 0.2\] is not a row of 1 numbers \(one per step\)"),
        (("helpsLogits", 1), [float("nan")], r"helpsLogits\[1\] holds nan, not a finite number"),
        (("calibration", 2), [], r"calibration\[2\] \[\] is not a row of 1 numbers"),
        (("helpsLogits",), [[0.1]], "helpsLogits has 1 rows, calibration 180"),
    ],
)
def test_a_model_file_with_a_malformed_field_is_refused_naming_it(model, path, value, message):
    data = model.to_json()
    data.setdefault("helpsLogits", [[0.0] for _ in data["calibration"]])
    assert DifficultyModel.from_json(json.loads(json.dumps(data))).steps  # the untouched file loads
    with pytest.raises(ValueError, match="malformed shoal-router-classifier/v2 model: " + message):
        DifficultyModel.from_json(_with(data, path, value))


def test_a_malformed_model_file_is_one_line_from_classify_and_the_sidecar(model, tmp_path):
    from shoal.router.config import InvalidConfig, load_config
    from shoal.router.server import Snapshot

    path = tmp_path / "model.json"
    path.write_text(json.dumps(_with(model.to_json(), ("promptFeatures",), 1.7)))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    done = run("classify", "--model", str(path), "--data", str(prompts))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"shoal router classify: {path} is not a model written by shoal router train "
        "(malformed shoal-router-classifier/v2 model: promptFeatures 1.7 is not an integer)"
    ]
    config = tmp_path / "router.json"
    config.write_text(json.dumps({
        "modelTier": "smol", "localTier": "small", "classifier": {"path": str(path)},
        "tiers": [{"name": "small", "kind": "local", "url": "http://127.0.0.1:8000/v1", "model": "m"}],
    }))
    with pytest.raises(InvalidConfig) as raised:
        Snapshot.build(load_config(config))
    assert str(raised.value) == f"classifier {path}: malformed shoal-router-classifier/v2 model: promptFeatures 1.7 is not an integer"
