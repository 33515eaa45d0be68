"""The RoutePolicy pass teaches its classifier on promotion (controller/learning.py),
over an in-memory view and a recording API server (tests/controller/fakes.py)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from typing import Any

from shoal.api.naming import CHECKPOINT_ANNOTATION, KEPT_OUTCOMES_KEY, LEARNED_MODEL_KEY
from shoal.api.outcomes import ItemOutcomes
from shoal.controller.clock import FakeClock
from shoal.controller.reconcilers import Reconcilers
from shoal.kube.view import pack, slim_config_map
from shoal.plan.learning import model_text, version_of
from shoal.router.classifier import DifficultyModel, Example, train_difficulty

from .fakes import FakeKube, policy_body, put, tier_body, view_of

PROMPTS = [f"add {i} and {i + 3} please" if i % 2 else f"prove lemma {i} about compact manifolds rigorously" for i in range(40)]
DATASET = "\n".join(json.dumps({"id": f"q{i}", "prompt": p, "reference": "x"}) for i, p in enumerate(PROMPTS)) + "\n"
DIGEST = "sha256:" + hashlib.sha256(DATASET.encode()).hexdigest()
SERVING = [i % 2 == 1 for i in range(40)]
WORSE = [i % 4 == 1 for i in range(40)]
CKPT_1, CKPT_2 = "s3://models/small/ckpt-0001", "s3://models/small/ckpt-0002"


def user_model() -> str:
    examples = [Example(p, {"small": i % 2 == 1, "large": True}) for i, p in enumerate(PROMPTS * 3)]
    return model_text(train_difficulty(examples, ["small", "large"], bits=10, epochs=3).to_json())


def slim(cm: dict[str, Any]) -> dict[str, Any]:
    """Someone else's ConfigMap as the view keeps it (key names only)."""
    return {"kind": "ConfigMap", **slim_config_map(cm)}


def config_map(name: str, data: dict[str, str], rv: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "llm", "resourceVersion": rv}, "data": data}


def promoted(checkpoint: str, job: str, serving: str | None = None) -> dict[str, Any]:
    """The small tier once `checkpoint` passed in `job`; it serves `serving` (default: that checkpoint)."""
    body = tier_body("small", rollout={"evaluation": {
        "dataset": {"configMapRef": {"name": "eval-items", "key": "items.jsonl"}},
        "scorers": [{"type": "exactMatch"}], "thresholds": [{"metric": "exact_match", "min": 0.3}], "baseline": "serving",
    }})
    body["spec"]["model"]["checkpoint"] = checkpoint
    body["spec"]["router"] = {"routePolicy": "support"}
    body["status"] = {"servingCheckpoint": serving or checkpoint, "lastEvaluation": {
        "checkpoint": checkpoint, "verdict": "Passed", "jobName": job, "datasetDigest": DIGEST, "items": 40}}
    return body


def promote(h, checkpoint: str, job: str, candidate, baseline) -> None:
    """What the cluster goes through: the candidate passes (its Job finished, the tier
    rolls it out and a policy pass runs), then the promotion deletes the Job."""
    put(h.view, promoted(checkpoint, job, serving=CKPT_1))
    eval_job(h.view, checkpoint, job, candidate, baseline)
    status = h.policy_pass()["status"]["classifier"]
    assert status["source"] == "ConfigMap"
    assert [(k["job"], k["promoted"]) for k in json.loads(h.learned()["data"][KEPT_OUTCOMES_KEY])][-1] == (job, False)
    put(h.view, promoted(checkpoint, job))
    h.view.eval_jobs[("llm", "small")] = []
    del h.view.job_pods[("llm", job)]


def eval_job(view, checkpoint: str, job: str, candidate, baseline) -> None:
    """A finished evaluation Job and its pod, whose termination message carries outcomes."""
    message = json.dumps({"checkpoint": checkpoint, "verdict": "Passed", "datasetDigest": DIGEST, "items": 40,
                          "outcomes": ItemOutcomes.encode(candidate, baseline).to_wire()})
    view.eval_jobs.setdefault(("llm", "small"), []).append(pack({
        "metadata": {"name": job, "namespace": "llm", "annotations": {CHECKPOINT_ANNOTATION: checkpoint}},
        "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    }))
    view.job_pods[("llm", job)] = [pack({"metadata": {"name": f"{job}-pod"}, "status": {"containerStatuses": [
        {"name": "eval", "state": {"terminated": {"exitCode": 0, "message": message}}}]}})]


class Harness:
    def __init__(self) -> None:
        self.model = user_model()
        policy = policy_body("support", ["small", "large"])
        policy["spec"]["classifier"] = {"mode": "enabled", "configMapRef": {"name": "router-model", "key": "model.json"}}
        self.user = config_map("router-model", {"model.json": self.model}, "7")
        dataset = config_map("eval-items", {"items.jsonl": DATASET}, "3")
        self.view = view_of(policy, promoted(CKPT_1, "small-eval-1"), tier_body("large"),
                            slim(self.user), slim(dataset))
        eval_job(self.view, CKPT_1, "small-eval-1", SERVING, None)
        self.kube = FakeKube(self.view, config_maps={("llm", "router-model"): self.user, ("llm", "eval-items"): dataset})
        self.reconcilers = Reconcilers(self.kube, self.view, FakeClock(), requeue=lambda key: None)

    def policy_pass(self) -> dict[str, Any]:
        self.kube.calls.clear()
        asyncio.run(self.reconcilers.policy("llm", "support"))
        self.kube.deliver()
        return self.view.policy("llm", "support")

    def learned(self) -> dict[str, Any] | None:
        return self.view.get("ConfigMap", "llm", "support-classifier")


def test_a_promotion_after_a_paired_evaluation_writes_a_learned_model_the_status_names():
    h = Harness()
    # First pass: the user's model is taken to describe what serves now; the serving
    # checkpoint's outcomes are kept as a reference, nothing is learned.
    status = h.policy_pass()["status"]["classifier"]
    assert status["source"] == "ConfigMap"
    assert status["version"] == version_of(h.model) and status["configMap"] == "router-model/model.json"
    assert "taken to describe the checkpoints serving now" in status["message"]
    cm = h.learned()
    assert LEARNED_MODEL_KEY not in cm["data"]
    assert [(k["job"], k["promoted"]) for k in json.loads(cm["data"][KEPT_OUTCOMES_KEY])] == [("small-eval-1", True)]
    assert cm["metadata"]["ownerReferences"][0]["name"] == "support"

    # Steady state: nothing written, nothing read.
    h.policy_pass()
    assert h.kube.calls == []

    # ckpt-0002 is promoted after an evaluation that scored it against ckpt-0001.
    promote(h, CKPT_2, "small-eval-2", WORSE, SERVING)
    status = h.policy_pass()["status"]["classifier"]
    assert ("get", "ConfigMap", "router-model") in h.kube.calls and ("get", "ConfigMap", "eval-items") in h.kube.calls
    cm = h.learned()
    learned = cm["data"][LEARNED_MODEL_KEY]
    assert status["source"] == "Learned"
    assert status["version"] == version_of(learned) != version_of(h.model)
    assert status["configMap"] == "support-classifier/model.json"
    assert status["learnedFrom"] == {
        "modelTier": "small", "rung": "small", "checkpoint": CKPT_2, "evaluationJob": "small-eval-2", "datasetDigest": DIGEST,
        "items": 40, "comparedWith": "baseline", "failureRate": 0.75, "previousFailureRate": 0.5,
        "prompts": "dataset", "meanOver": "evaluationPrompts",
    }
    # The learned model asks the large tier for help more often than the user's did.
    before, after = DifficultyModel.from_json(json.loads(h.model)), DifficultyModel.from_json(json.loads(learned))
    assert sum(after.gains(p)[0] for p in PROMPTS) > sum(before.gains(p)[0] for p in PROMPTS)
    # Outcomes and prompts never reach the status.
    assert "lemma" not in json.dumps(status) and "passed" not in json.dumps(status)

    h.policy_pass()
    assert h.kube.calls == []


def test_a_changed_user_model_drops_the_learned_one_and_opting_out_leaves_the_users():
    h = Harness()
    h.policy_pass()
    promote(h, CKPT_2, "small-eval-2", WORSE, SERVING)
    h.policy_pass()
    assert LEARNED_MODEL_KEY in h.learned()["data"]

    # The user retrains and replaces their model.
    h.user = config_map("router-model", {"model.json": h.model + " "}, "8")
    h.kube.config_maps[("llm", "router-model")] = h.user
    put(h.view, slim(h.user))
    status = h.policy_pass()["status"]["classifier"]
    assert ("apply", "ConfigMap", "support-classifier") in h.kube.calls
    assert LEARNED_MODEL_KEY not in h.learned()["data"]
    assert status["source"] == "ConfigMap" and status["version"] == version_of(h.model + " ")

    policy = copy.deepcopy(h.view.policy("llm", "support"))
    policy["spec"]["classifier"]["learnFromEvaluations"] = "disabled"
    policy["metadata"]["resourceVersion"] = "999"
    put(h.view, policy)
    status = h.policy_pass()["status"]["classifier"]
    assert status["message"] == "learnFromEvaluations is disabled: the sidecars use the configured model as it is."
    assert status["source"] == "ConfigMap"


def test_a_promotion_the_policy_pass_did_not_see_keeps_its_job_until_the_outcomes_are_kept_then_teaches():
    h = Harness()
    h.policy_pass()
    # The operator was down while ckpt-0002's Job ran and the tier rolled it out; after the
    # restart the tier pass runs first and sees ckpt-0002 serving.
    put(h.view, promoted(CKPT_2, "small-eval-2"))
    h.view.eval_jobs[("llm", "small")] = []
    eval_job(h.view, CKPT_2, "small-eval-2", WORSE, SERVING)

    def tier_pass() -> list[tuple[Any, ...]]:
        h.kube.calls.clear()
        asyncio.run(h.reconcilers.tier("llm", "small"))
        h.kube.deliver()
        return [c for c in h.kube.calls if c[0] == "delete"]

    assert tier_pass() == []  # the Job stays: the policy has not kept its outcomes
    assert tier_pass() == []
    status = h.policy_pass()["status"]["classifier"]
    assert (status["source"], status["learnedFrom"]["evaluationJob"]) == ("Learned", "small-eval-2")
    assert tier_pass() == [("delete", "Job", "small-eval-2")]
