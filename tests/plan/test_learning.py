"""Pure decisions about a RoutePolicy's learned classifier (plan/learning.py)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import pytest

from shoal.api.modeltier import ModelTier
from shoal.api.outcomes import ItemOutcomes
from shoal.api.routepolicy import RoutePolicy
from shoal.plan.learning import (
    KEEP_PER_TIER,
    DatasetPrompts,
    LearnedState,
    base_of,
    classifier_status,
    evaluated_dataset,
    evaluations,
    keep,
    learn,
    model_text,
    note,
    reseed,
    status_patch_field,
    version_of,
)
from shoal.render.evaljob import EvalJobContext, render_eval_job
from shoal.router.classifier import Example, train_difficulty

NOW = datetime(2026, 11, 29, 23, 0, tzinfo=timezone.utc)
DIGEST = "sha256:" + "ab" * 32
PROMPTS = tuple(f"add {i} and {i + 3} please" if i % 2 else f"prove lemma {i} about compact manifolds rigorously" for i in range(40))


def policy(**classifier) -> RoutePolicy:
    return RoutePolicy.from_body({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "RoutePolicy",
        "metadata": {"name": "support", "namespace": "llm", "uid": "uid-support"},
        "spec": {
            "tiers": [{"name": "small", "modelTierRef": {"name": "small-8b"}}, {"name": "large", "modelTierRef": {"name": "large-70b"}}],
            "classifier": {"mode": "enabled", "configMapRef": {"name": "router-model", "key": "model.json"}, **classifier},
        },
    })


URI = "https://example.com/items.jsonl"


def tier(
    name: str, *, serving: str, evaluated: str, verdict: str = "Passed", job: str = "small-8b-eval-0002", dataset: bool = True, gate: bool = True
) -> ModelTier:
    evaluation = {
        "dataset": {"configMapRef": {"name": "eval-items", "key": "items.jsonl"}} if dataset else {"uri": URI},
        "scorers": [{"type": "exactMatch"}],
        "thresholds": [{"metric": "exact_match", "min": 0.5}],
    }
    return ModelTier.from_body({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "ModelTier",
        "metadata": {"name": name, "namespace": "llm"},
        "spec": {
            "model": {"name": "m", "source": "hf://org/m", "checkpoint": serving},
            "resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}},
            "rollout": {"evaluation": evaluation} if gate else {},
        },
        "status": {
            "servingCheckpoint": serving,
            "lastEvaluation": {"checkpoint": evaluated, "verdict": verdict, "jobName": job, "datasetDigest": DIGEST, "items": 40},
        },
    })


def message(candidate, baseline=None) -> str:
    record = {"checkpoint": "s3://models/ckpt-0002", "verdict": "Passed", "datasetDigest": DIGEST, "items": 40}
    return json.dumps({**record, "outcomes": ItemOutcomes.encode(candidate, baseline).to_wire()})


@pytest.fixture(scope="module")
def model() -> str:
    examples = [Example(p, {"small": i % 2 == 1, "large": True}) for i, p in enumerate(PROMPTS * 3)]
    return model_text(train_difficulty(examples, ["small", "large"], bits=10, epochs=3).to_json())


SERVING = [i % 2 == 1 for i in range(40)]  # the replaced checkpoint: the sums only
WORSE = [i % 4 == 1 for i in range(40)]  # the promoted one: half of the sums


def ran_on(evaluated_tier: ModelTier) -> dict:
    """The Job that evaluated the tier's candidate, as rendered."""
    return render_eval_job(evaluated_tier, EvalJobContext(checkpoint="s3://models/ckpt-0002", serving_checkpoint="s3://models/ckpt-0001"))


def the_promotion(candidate=WORSE, baseline=SERVING, **tier_args):
    small = tier("small-8b", serving="s3://models/ckpt-0002", evaluated="s3://models/ckpt-0002", **tier_args)
    key = ("small-8b", "small-8b-eval-0002")
    found = evaluations(policy(), {"small-8b": small}, {key: message(candidate, baseline)}, LearnedState(), {key: evaluated_dataset(ran_on(small))})
    assert len(found) == 1 and found[0].promoted
    return found[0]


def test_a_passed_evaluation_of_the_serving_checkpoint_is_a_promotion_with_its_outcomes():
    promotion = the_promotion()
    assert (promotion.model_tier, promotion.rung, promotion.checkpoint, promotion.job) == ("small-8b", "small", "s3://models/ckpt-0002", "small-8b-eval-0002")
    assert promotion.dataset.name == "eval-items" and promotion.dataset_digest == DIGEST
    assert promotion.outcomes.candidate() == WORSE


def test_a_passed_candidates_outcomes_are_kept_before_the_promotion_deletes_its_job(model):
    rolling_out = tier("small-8b", serving="s3://models/ckpt-0001", evaluated="s3://models/ckpt-0002")
    jobs = {("small-8b", "small-8b-eval-0002"): message(WORSE, SERVING)}
    (candidate,) = evaluations(policy(), {"small-8b": rolling_out}, jobs, LearnedState())
    assert not candidate.promoted
    state = note(candidate, LearnedState(base="router-model/model.json@7", message="seeded"))
    assert state.entry("small-8b-eval-0002")["promoted"] is False and state.model is None
    assert state.handled(candidate)
    # Promoted, and the Job is gone: the kept outcomes are what teaches.
    serving = tier("small-8b", serving="s3://models/ckpt-0002", evaluated="s3://models/ckpt-0002")
    (promotion,) = evaluations(policy(), {"small-8b": serving}, {}, state)
    assert promotion.promoted and promotion.outcomes.candidate() == WORSE and not state.handled(promotion)
    learned = learn(promotion, state, base_model=model, dataset=DatasetPrompts(DIGEST, PROMPTS), now=NOW)
    assert learned.model is not None and learned.entry("small-8b-eval-0002")["promoted"] is True
    assert learned.handled(promotion) and len(learned.kept) == 1


@pytest.mark.parametrize(
    ("case", "tiers", "messages"),
    [
        ("still rolling out", {"small-8b": tier("small-8b", serving="s3://models/ckpt-0001", evaluated="s3://models/ckpt-0002")}, None),
        ("failed", {"small-8b": tier("small-8b", serving="s3://models/ckpt-0002", evaluated="s3://models/ckpt-0002", verdict="Failed")}, None),
        ("job gone", {"small-8b": tier("small-8b", serving="s3://models/ckpt-0002", evaluated="s3://models/ckpt-0002")}, {}),
        ("no outcomes", {"small-8b": tier("small-8b", serving="s3://models/ckpt-0002", evaluated="s3://models/ckpt-0002")},
         {("small-8b", "small-8b-eval-0002"): json.dumps({"checkpoint": "s3://models/ckpt-0002", "verdict": "Passed"})}),
        ("largest rung", {"large-70b": tier("large-70b", serving="s3://models/ckpt-0002", evaluated="s3://models/ckpt-0002")}, None),
    ],
)
def test_what_is_not_a_promotion_to_learn_from(case, tiers, messages):
    if messages is None:
        messages = {(name, "small-8b-eval-0002"): message(WORSE) for name in tiers}
    assert [e for e in evaluations(policy(), tiers, messages, LearnedState()) if e.promoted] == [], case


def test_a_new_user_model_is_taken_to_describe_the_checkpoints_serving_now():
    state = reseed(policy(), "router-model/model.json@7", [the_promotion()], LearnedState())
    assert state.model is None and state.base == "router-model/model.json@7"
    assert [k["job"] for k in state.kept] == ["small-8b-eval-0002"]
    assert state.handled(the_promotion())
    assert "taken to describe the checkpoints serving now" in state.message


def test_a_promotion_with_a_baseline_recalibrates_the_step_and_says_from_what(model):
    state = LearnedState(base="router-model/model.json@7", message="seeded")
    learned = learn(the_promotion(), state, base_model=model, dataset=DatasetPrompts(DIGEST, PROMPTS), now=NOW)
    assert learned.model is not None and learned.model != model
    assert learned.learned_from == {
        "modelTier": "small-8b", "rung": "small", "checkpoint": "s3://models/ckpt-0002", "evaluationJob": "small-8b-eval-0002",
        "datasetDigest": DIGEST, "items": 40, "comparedWith": "baseline", "failureRate": 0.75, "previousFailureRate": 0.5,
        "prompts": "dataset", "meanOver": "evaluationPrompts",
    }
    assert learned.learned_at == "2026-11-29T23:00:00Z"
    assert learned.message.startswith("Recalibrated the step above small from Job small-8b-eval-0002: s3://models/ckpt-0002 failed 75.0% of 40 items against 50.0%")
    # The status names the version the sidecars will report for the same bytes.
    status = classifier_status(policy(), learned, "sha256:0000000000000000")
    assert status["version"] == version_of(learned.model.encode())
    assert (status["source"], status["configMap"]) == ("Learned", "support-classifier/model.json")
    assert status["learnedFrom"]["comparedWith"] == "baseline"
    # No prompt text anywhere in what is kept or reported.
    assert "lemma" not in json.dumps(learned.kept) + json.dumps(status)


def test_without_a_baseline_the_kept_outcomes_of_the_tiers_previous_evaluation_are_the_reference(model):
    earlier = {"modelTier": "small-8b", "checkpoint": "s3://models/ckpt-0001", "job": "small-8b-eval-0001", "datasetDigest": DIGEST,
               "outcomes": ItemOutcomes.encode(SERVING).to_wire(), "promoted": True}
    # A candidate that passed but was superseded before its promotion is no reference.
    superseded = {**earlier, "job": "small-8b-eval-000x", "outcomes": ItemOutcomes.encode([False] * 40).to_wire(), "promoted": False}
    state = LearnedState(base="router-model/model.json@7", kept=[earlier, superseded], message="seeded")
    learned = learn(the_promotion(baseline=None), state, base_model=model, dataset=DatasetPrompts(DIGEST, PROMPTS), now=NOW)
    assert learned.learned_from["comparedWith"] == "previousEvaluation"
    assert learned.learned_from["previousFailureRate"] == 0.5
    assert [(k["job"], k["promoted"]) for k in learned.kept] == [("small-8b-eval-0001", True), ("small-8b-eval-0002", True)]
    assert not any(k["job"] == "small-8b-eval-000x" for k in learned.kept)


@pytest.mark.parametrize(
    ("kwargs", "dataset", "why"),
    [
        ({"baseline": None}, DatasetPrompts(DIGEST, PROMPTS), "no evaluation of the checkpoint it replaced on the same dataset is kept"),
        ({}, DatasetPrompts("sha256:" + "cd" * 32, PROMPTS), "changed since the evaluation"),
        ({}, DatasetPrompts(problem="ConfigMap eval-items has no key items.jsonl"), "has no key items.jsonl"),
        ({"dataset": False, "baseline": None}, None, "no evaluation of the checkpoint it replaced on the same dataset is kept"),
    ],
)
def test_a_promotion_that_cannot_teach_keeps_its_outcomes_and_says_why(model, kwargs, dataset, why):
    state = LearnedState(base="router-model/model.json@7", message="seeded")
    after = learn(the_promotion(**kwargs), state, base_model=model, dataset=dataset, now=NOW)
    assert after.model is None and after.learned_from is None
    assert [k["job"] for k in after.kept] == ["small-8b-eval-0002"]
    assert why in after.message
    assert after.message.startswith("small-8b promoted s3://models/ckpt-0002 (Job small-8b-eval-0002): its outcomes are kept, the classifier is unchanged")


def test_a_configmap_datasets_promotion_still_learns_over_the_evaluations_prompts(model):
    # The same outcomes through the level alone move the intercept differently: the
    # ConfigMap dataset's prompts are what it moved over.
    state = LearnedState(base="router-model/model.json@7", message="seeded")
    with_prompts = learn(the_promotion(), state, base_model=model, dataset=DatasetPrompts(DIGEST, PROMPTS), now=NOW)
    level_only = learn(the_promotion(dataset=False), state, base_model=model, dataset=None, now=NOW)
    assert (with_prompts.learned_from["prompts"], with_prompts.learned_from["meanOver"]) == ("dataset", "evaluationPrompts")
    assert with_prompts.message.endswith("on the evaluation's prompts.")
    bias = [json.loads(m)["steps"][0]["helps"]["bias"] for m in (model, with_prompts.model, level_only.model)]
    assert bias[1] != bias[2] and bias[1] > bias[0] and bias[2] > bias[0]


def test_a_uri_datasets_promotion_learns_the_level_over_the_models_training_sample(model):
    promotion = the_promotion(dataset=False)
    assert promotion.dataset is None
    state = LearnedState(base="router-model/model.json@7", message="seeded")
    learned = learn(promotion, state, base_model=model, dataset=None, now=NOW)
    assert learned.learned_from == {
        "modelTier": "small-8b", "rung": "small", "checkpoint": "s3://models/ckpt-0002", "evaluationJob": "small-8b-eval-0002",
        "datasetDigest": DIGEST, "items": 40, "comparedWith": "baseline", "failureRate": 0.75, "previousFailureRate": 0.5,
        "prompts": "none", "meanOver": "trainingSample",
    }
    # 120 training prompts, 3 folds: every one is in the sample.
    assert "over the model's sample of 120 training prompts (the dataset is a uri" in learned.message
    assert "the level alone was learned" in learned.message
    # The mean P(helps) over that sample moved by the shrunk change: 0.25 * 40 / 60.
    before, after = (json.loads(m) for m in (model, learned.model))
    shift = after["steps"][0]["helps"]["bias"] - before["steps"][0]["helps"]["bias"]

    def mean(logits, by=0.0):
        return sum(1 / (1 + math.exp(-(z + by))) for z in logits) / len(logits)

    sample = [row[0] for row in before["helpsLogits"]]
    assert len(sample) == 120
    assert mean(sample, shift) - mean(sample) == pytest.approx(0.25 * 40 / 60, abs=1e-3)
    status = classifier_status(policy(), learned, "sha256:0000000000000000")
    assert (status["source"], status["learnedFrom"]["prompts"], status["learnedFrom"]["meanOver"]) == ("Learned", "none", "trainingSample")
    # Numbers only: no prompt text and no outcome bitmap in what is reported.
    reported = json.dumps(status)
    assert "lemma" not in reported and promotion.outcomes.passed not in reported


def test_a_uri_datasets_promotion_with_an_older_model_file_learns_at_the_intercept_and_says_so(model):
    older = json.loads(model)
    del older["helpsLogits"]
    state = LearnedState(base="router-model/model.json@7", message="seeded")
    learned = learn(the_promotion(dataset=False), state, base_model=model_text(older), dataset=None, now=NOW)
    assert (learned.learned_from["prompts"], learned.learned_from["meanOver"]) == ("none", "interceptOnly")
    assert "at the step's intercept alone" in learned.message and "retrain it with shoal router train" in learned.message
    bias = older["steps"][0]["helps"]["bias"]
    new_bias = json.loads(learned.model)["steps"][0]["helps"]["bias"]
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert sigmoid(new_bias) - sigmoid(bias) == pytest.approx(0.25 * 40 / 60, abs=1e-3)


def test_the_dataset_an_evaluation_ran_on_is_read_off_its_job():
    on_config_map = evaluated_dataset(ran_on(tier("small-8b", serving="s3://models/ckpt-0001", evaluated="s3://models/ckpt-0002")))
    on_uri = evaluated_dataset(ran_on(tier("small-8b", serving="s3://models/ckpt-0001", evaluated="s3://models/ckpt-0002", dataset=False)))
    assert on_config_map.to_wire() == {"configMapRef": {"name": "eval-items", "key": "items.jsonl"}}
    assert on_uri.to_wire() == {"uri": URI}
    assert evaluated_dataset({"spec": {"template": {"spec": {"containers": [{"name": "eval", "env": []}]}}}}) is None


def test_a_promotion_evaluated_on_a_configmap_reads_that_configmap_after_the_spec_switched_to_a_uri(model):
    evaluated_on = tier("small-8b", serving="s3://models/ckpt-0002", evaluated="s3://models/ckpt-0002")
    switched = tier("small-8b", serving="s3://models/ckpt-0002", evaluated="s3://models/ckpt-0002", dataset=False)
    key = ("small-8b", "small-8b-eval-0002")
    (promotion,) = evaluations(policy(), {"small-8b": switched}, {key: message(WORSE, SERVING)}, LearnedState(),
                               {key: evaluated_dataset(ran_on(evaluated_on))})
    assert (promotion.dataset.name, promotion.dataset_uri) == ("eval-items", None)
    state = LearnedState(base="router-model/model.json@7", message="seeded")
    learned = learn(promotion, state, base_model=model, dataset=DatasetPrompts(DIGEST, PROMPTS), now=NOW)
    assert learned.learned_from["prompts"] == "dataset"
    assert learned.entry("small-8b-eval-0002")["dataset"] == {"configMapRef": {"name": "eval-items", "key": "items.jsonl"}}


@pytest.mark.parametrize("now", ["gate removed", "dataset switched to a uri"])
def test_a_promotion_whose_evaluated_dataset_is_no_longer_known_keeps_its_outcomes_only(model, now):
    # Kept before the evaluated dataset was recorded with the outcomes; its Job is gone.
    current = tier("small-8b", serving="s3://models/ckpt-0002", evaluated="s3://models/ckpt-0002",
                   **({"gate": False} if now == "gate removed" else {"dataset": False}))
    entry = {"modelTier": "small-8b", "checkpoint": "s3://models/ckpt-0002", "job": "small-8b-eval-0002", "datasetDigest": DIGEST,
             "outcomes": ItemOutcomes.encode(WORSE, SERVING).to_wire(), "promoted": False}
    state = LearnedState(base="router-model/model.json@7", kept=[entry], message="seeded")
    (promotion,) = evaluations(policy(), {"small-8b": current}, {}, state)
    assert promotion.promoted and (promotion.dataset, promotion.dataset_uri) == (None, None)
    after = learn(promotion, state, base_model=model, dataset=None, now=NOW)
    assert after.model is None and after.learned_from is None
    assert after.entry("small-8b-eval-0002")["promoted"] is True
    assert after.message == (
        "small-8b promoted s3://models/ckpt-0002 (Job small-8b-eval-0002): its outcomes are kept, the classifier is unchanged: "
        "which dataset its evaluation ran on is no longer known (its Job is gone and the tier's evaluation no longer names a "
        "dataset ConfigMap whose digest can be checked), so neither prompts nor a uri's level can be matched with it."
    )


def test_a_uri_evaluation_kept_before_its_promotion_learns_the_level_after_the_gate_was_removed(model):
    rolling_out = tier("small-8b", serving="s3://models/ckpt-0001", evaluated="s3://models/ckpt-0002", dataset=False)
    key = ("small-8b", "small-8b-eval-0002")
    (candidate,) = evaluations(policy(), {"small-8b": rolling_out}, {key: message(WORSE, SERVING)}, LearnedState(),
                               {key: evaluated_dataset(ran_on(rolling_out))})
    state = note(candidate, LearnedState(base="router-model/model.json@7", message="seeded"))
    assert state.entry("small-8b-eval-0002")["dataset"] == {"uri": URI}
    ungated = tier("small-8b", serving="s3://models/ckpt-0002", evaluated="s3://models/ckpt-0002", gate=False)
    (promotion,) = evaluations(policy(), {"small-8b": ungated}, {}, state)
    assert (promotion.dataset, promotion.dataset_uri) == (None, URI)
    learned = learn(promotion, state, base_model=model, dataset=None, now=NOW)
    assert (learned.learned_from["prompts"], learned.learned_from["meanOver"]) == ("none", "trainingSample")


def test_outcomes_are_kept_per_tier_and_bounded():
    entries = [{"modelTier": "a" if i % 3 else "b", "job": f"j{i}", "promoted": i % 5 != 0} for i in range(20)]
    kept = keep(entries)
    # Per tier: the last four promoted, and a newer one not promoted (j10 of tier a and j15
    # of tier b are older than their tier's last promotion: superseded, dropped).
    assert [e["job"] for e in kept if e["modelTier"] == "a"] == ["j14", "j16", "j17", "j19"]
    assert [e["job"] for e in kept if e["modelTier"] == "b"] == ["j6", "j9", "j12", "j18"]
    entries.append({"modelTier": "b", "job": "j20", "promoted": False})
    assert [e["job"] for e in keep(entries) if e["modelTier"] == "b"] == ["j6", "j9", "j12", "j18", "j20"]
    assert len(keep(entries)) == 2 * KEEP_PER_TIER + 1


def test_status_without_learning_names_the_users_model_and_why():
    disabled = classifier_status(policy(learnFromEvaluations="disabled"), LearnedState(), "sha256:1111111111111111")
    assert disabled == {
        "source": "ConfigMap", "configMap": "router-model/model.json", "version": "sha256:1111111111111111",
        "message": "learnFromEvaluations is disabled: the sidecars use the configured model as it is.",
    }
    assert classifier_status(policy(mode="disabled", configMapRef=None), LearnedState(), None) is None
    assert base_of(policy(), "42") == "router-model/model.json@42"


def test_a_status_field_that_is_gone_is_removed_by_the_merge_patch():
    stored = {"source": "Learned", "version": "sha256:1", "learnedFrom": {"items": 3}, "learnedAt": "x", "configMap": "a"}
    wanted = {"source": "ConfigMap", "version": "sha256:2", "configMap": "b"}
    assert status_patch_field(wanted, stored) == {"learnedFrom": None, "learnedAt": None, **wanted}


# --- adapter rungs ------------------------------------------------------------------------

V1, V2 = "hf://acme/refunds-lora-v1", "hf://acme/refunds-lora-v2"
ADAPTER_JOB = "small-8b-refunds-eval-v2"


def adapter_policy() -> RoutePolicy:
    return RoutePolicy.from_body({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "RoutePolicy",
        "metadata": {"name": "support", "namespace": "llm", "uid": "uid-support"},
        "spec": {
            "tiers": [{"name": "refunds", "modelTierRef": {"name": "small-8b", "adapter": "refunds"}},
                      {"name": "large", "modelTierRef": {"name": "large-70b"}}],
            "classifier": {"mode": "enabled", "configMapRef": {"name": "router-model", "key": "model.json"}},
        },
    })


def adapter_tier(*, serving: str = V2, evaluated: str = V2, baseline_source: str | None = V1) -> ModelTier:
    evaluation = {
        "dataset": {"configMapRef": {"name": "refunds-items", "key": "items.jsonl"}},
        "scorers": [{"type": "exactMatch"}], "thresholds": [{"metric": "exact_match", "min": 0.1}], "baseline": "serving",
    }
    record = {"checkpoint": evaluated, "verdict": "Passed", "jobName": ADAPTER_JOB, "datasetDigest": DIGEST, "items": 40,
              "baseCheckpoint": "s3://models/ckpt-0001"}
    if baseline_source is not None:
        record["baselineSource"] = baseline_source
    return ModelTier.from_body({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "ModelTier",
        "metadata": {"name": "small-8b", "namespace": "llm"},
        "spec": {
            "model": {"name": "m", "source": "hf://org/m", "checkpoint": "s3://models/ckpt-0001"},
            "resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}},
            "adapters": [{"name": "refunds", "source": evaluated, "rollout": {"evaluation": evaluation}}],
        },
        "status": {"servingCheckpoint": "s3://models/ckpt-0001",
                   "adapters": [{"name": "refunds", "servingSource": serving, "lastEvaluation": record}]},
    })


@pytest.fixture(scope="module")
def adapter_model() -> str:
    examples = [Example(p, {"refunds": i % 2 == 1, "large": True}) for i, p in enumerate(PROMPTS * 3)]
    return model_text(train_difficulty(examples, ["refunds", "large"], bits=10, epochs=3).to_json())


def adapter_promotion(**kwargs):
    messages = {("small-8b", ADAPTER_JOB): message(WORSE, SERVING)}
    return evaluations(adapter_policy(), {"small-8b": adapter_tier(**kwargs)}, messages, LearnedState())


def test_an_adapter_rungs_promoted_source_is_an_evaluation_of_that_rung_with_the_adapters_dataset():
    (promotion,) = adapter_promotion()
    assert (promotion.model_tier, promotion.adapter, promotion.rung, promotion.checkpoint, promotion.job) == (
        "small-8b", "refunds", "refunds", V2, ADAPTER_JOB)
    assert promotion.promoted and promotion.dataset.name == "refunds-items"
    assert promotion.outcomes.baseline() == SERVING
    (candidate,) = adapter_promotion(serving=V1)
    assert not candidate.promoted


def test_an_adapter_promotion_recalibrates_the_step_above_its_rung_and_names_the_adapter_and_source(adapter_model):
    (promotion,) = adapter_promotion()
    state = LearnedState(base="router-model/model.json@7", message="seeded")
    learned = learn(promotion, state, base_model=adapter_model, dataset=DatasetPrompts(DIGEST, PROMPTS), now=NOW)
    assert learned.model is not None and learned.model != adapter_model
    assert learned.learned_from == {
        "modelTier": "small-8b", "adapter": "refunds", "rung": "refunds", "checkpoint": V2, "evaluationJob": ADAPTER_JOB,
        "datasetDigest": DIGEST, "items": 40, "comparedWith": "baseline", "failureRate": 0.75, "previousFailureRate": 0.5,
        "prompts": "dataset", "meanOver": "evaluationPrompts",
    }
    assert learned.message.startswith(f"Recalibrated the step above refunds from Job {ADAPTER_JOB}: adapter refunds {V2} failed 75.0%")
    assert [(k["job"], k["adapter"], k["promoted"]) for k in learned.kept] == [(ADAPTER_JOB, "refunds", True)]


def test_an_adapters_first_source_compared_with_the_base_model_only_keeps_its_outcomes(adapter_model):
    # Its Job compared it with the base model, not with what the rung served: no reference,
    # even though the base model's own evaluation of the same tier is kept.
    (promotion,) = adapter_promotion(baseline_source=None)
    assert promotion.outcomes.baseline() is None
    base_entry = {"modelTier": "small-8b", "checkpoint": "s3://models/ckpt-0001", "job": "small-8b-eval-0001",
                  "datasetDigest": DIGEST, "outcomes": ItemOutcomes.encode(SERVING).to_wire(), "promoted": True}
    state = LearnedState(base="router-model/model.json@7", kept=[base_entry], message="seeded")
    after = learn(promotion, state, base_model=adapter_model, dataset=DatasetPrompts(DIGEST, PROMPTS), now=NOW)
    assert after.model is None
    assert "without a baseline of a serving source and no evaluation of the source it replaced" in after.message
    # ... and they are the next source's reference, kept apart from the base model's.
    assert [(k["job"], k.get("adapter")) for k in after.kept] == [("small-8b-eval-0001", None), (ADAPTER_JOB, "refunds")]
