"""A promotion's evaluation Job stays until the policies learning from it kept its outcomes
(plan/learning.py ``held_for_learning``, applied by plan/tier.py ``plan_tier``)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from shoal.api.modeltier import ModelTier
from shoal.api.naming import eval_job_name
from shoal.api.outcomes import ItemOutcomes
from shoal.plan.learning import Learner, held_for_learning
from shoal.plan.rollout import EvalJobObservation
from shoal.plan.tier import TierObservation, plan_tier

NOW = datetime(2026, 11, 30, 2, 0, tzinfo=timezone.utc)
A = "s3://models/small/ckpt-0001"
B = "s3://models/small/ckpt-0002"
C = "s3://models/small/ckpt-0003"
JOB_B = eval_job_name("small", B)
DIGEST = "sha256:" + "ab" * 32
EVALUATION = {
    "dataset": {"configMapRef": {"name": "eval-items", "key": "items.jsonl"}},
    "scorers": [{"type": "exactMatch"}],
    "thresholds": [{"metric": "exact_match", "min": 0.1}],
    "baseline": "serving",
}
RECORD = {"checkpoint": B, "verdict": "Passed", "items": 8, "datasetDigest": DIGEST}
WITH_OUTCOMES = json.dumps({**RECORD, "outcomes": ItemOutcomes.encode([True, False] * 4, [True] * 8).to_wire()})
WITHOUT_OUTCOMES = json.dumps(RECORD)


def tier(checkpoint: str, status: dict[str, Any]) -> ModelTier:
    return ModelTier.from_body({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "ModelTier",
        "metadata": {"name": "small", "namespace": "llm", "uid": "u-1", "generation": 3},
        "spec": {"model": {"name": "m", "source": "hf://org/m", "checkpoint": checkpoint},
                 "resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}}, "rollout": {"evaluation": EVALUATION}},
        "status": status,
    })


def deployment(checkpoint: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "small", "generation": 2},
        "spec": {"replicas": 1, "template": {"metadata": {"annotations": {"shoal.dev/checkpoint": checkpoint}}}},
        "status": {"observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
                   "conditions": [{"type": "Available", "status": "True"}]},
    }


def finished_job(name: str, checkpoint: str, message: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    job = {"metadata": {"name": name, "annotations": {"shoal.dev/checkpoint": checkpoint}},
           "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    pod = {"metadata": {"name": f"{name}-x"},
           "status": {"containerStatuses": [{"name": "eval", "state": {"terminated": {"exitCode": 0, "message": message}}}]}}
    return job, [pod]


PASSED_B = {"checkpoint": B, "verdict": "Passed", "jobName": JOB_B, "datasetDigest": DIGEST, "items": 8}
ROLLED_OUT = ({"servingCheckpoint": A, "candidateCheckpoint": B, "lastEvaluation": PASSED_B}, B)  # this pass promotes B
SERVING_B = ({"servingCheckpoint": B, "lastEvaluation": PASSED_B}, B)  # a later pass: B serves
LEARNER = Learner(policy="support", rungs=frozenset({None}), kept_jobs=frozenset())


@pytest.mark.parametrize(
    ("case", "state", "message", "learners", "deleted"),
    [
        ("the promotion pass, before the policy kept the outcomes", ROLLED_OUT, WITH_OUTCOMES, (LEARNER,), ()),
        ("a later pass, still not kept (the operator was down)", SERVING_B, WITH_OUTCOMES, (LEARNER,), ()),
        ("kept as a candidate before the promotion", ROLLED_OUT, WITH_OUTCOMES,
         (Learner(policy="support", rungs=frozenset({None}), kept_jobs=frozenset({JOB_B})),), (JOB_B,)),
        ("kept by one policy, not yet by another", SERVING_B, WITH_OUTCOMES,
         (LEARNER, Learner(policy="other", rungs=frozenset({None}), kept_jobs=frozenset({JOB_B}))), ()),
        ("no policy learns from the tier", SERVING_B, WITH_OUTCOMES, (), (JOB_B,)),
        ("the only learner learns from an adapter rung of the tier", SERVING_B, WITH_OUTCOMES,
         (Learner(policy="support", rungs=frozenset({"refunds"}), kept_jobs=frozenset()),), (JOB_B,)),
        ("the evaluation wrote no outcomes: nothing to learn from", SERVING_B, WITHOUT_OUTCOMES, (LEARNER,), (JOB_B,)),
    ],
)
def test_a_promoted_evaluation_job_stays_until_every_learning_policy_kept_its_outcomes(case, state, message, learners, deleted):
    status, deployed = state
    observed = TierObservation(deployment=deployment(deployed), eval_jobs=[finished_job(JOB_B, B, message)], learners=learners)
    plan = plan_tier(tier(B, status), observed, NOW, previous_status=status)
    assert plan.status["servingCheckpoint"] == B, case
    assert plan.delete_jobs == deleted, case


def test_a_newer_candidate_releases_the_held_job_of_the_version_it_replaces():
    status = {"servingCheckpoint": B, "lastEvaluation": PASSED_B}
    observed = TierObservation(deployment=deployment(B), eval_jobs=[finished_job(JOB_B, B, WITH_OUTCOMES)], learners=(LEARNER,))
    plan = plan_tier(tier(C, status), observed, NOW, previous_status=status)
    assert plan.create_job_for == C
    assert plan.delete_jobs == (JOB_B,)


def test_held_jobs_are_the_promoted_ones_with_outcomes_a_learner_of_that_rung_has_not_kept():
    jobs = (
        EvalJobObservation(name="small-eval-b", checkpoint=B, state="Succeeded", termination_message=WITH_OUTCOMES),
        EvalJobObservation(name="small-refunds-v2", checkpoint="hf://acme/refunds-v2", state="Succeeded",
                           termination_message=WITH_OUTCOMES, adapter="refunds"),
        EvalJobObservation(name="small-triage-v2", checkpoint="hf://acme/triage-v2", state="Succeeded",
                           termination_message=WITH_OUTCOMES, adapter="triage"),
    )
    promoted = {None: "small-eval-b", "refunds": "small-refunds-v2", "triage": "small-triage-v2"}
    learners = (Learner(policy="support", rungs=frozenset({None, "refunds"}), kept_jobs=frozenset({"small-eval-b"})),)
    assert held_for_learning(promoted, jobs, learners) == frozenset({"small-refunds-v2"})
    assert held_for_learning(promoted, jobs, ()) == frozenset()


def test_an_adapters_promoted_job_stays_until_the_policy_learning_from_its_rung_kept_its_outcomes():
    v2 = "hf://acme/refunds-lora-v2"
    name = "small-refunds-eval-v2"
    body = tier(B, {"servingCheckpoint": B, "adapters": [{"name": "refunds", "servingSource": v2, "lastEvaluation": {
        "checkpoint": v2, "verdict": "Passed", "jobName": name, "datasetDigest": DIGEST, "baseCheckpoint": B}}]}).to_wire()
    body["spec"]["adapters"] = [{"name": "refunds", "source": v2, "rollout": {"evaluation": EVALUATION}}]
    the_tier = ModelTier.from_body(body)
    job, pods = finished_job(name, v2, WITH_OUTCOMES)
    job["metadata"]["annotations"] = {"shoal.dev/adapter": "refunds", "shoal.dev/adapter-source": v2, "shoal.dev/base-checkpoint": B}

    def deleted(kept: frozenset[str]) -> tuple[str, ...]:
        learner = Learner(policy="support", rungs=frozenset({"refunds"}), kept_jobs=kept)
        observed = TierObservation(deployment=deployment(B), eval_jobs=[(job, pods)], learners=(learner,))
        plan = plan_tier(the_tier, observed, NOW, previous_status=body["status"])
        return plan.delete_jobs + plan.adapters.delete_jobs

    assert deleted(frozenset()) == ()
    assert deleted(frozenset({name})) == (name,)
