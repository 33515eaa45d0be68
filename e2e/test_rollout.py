"""The eval-gated checkpoint rollout on the real control plane.

The evaluation Job's pod does not run vLLM here: kwok finishes it with the exit code and
termination message the test asks for through ``evaluation.podAnnotations`` (Shoal's kwok
stage, devcluster/stages/job-pod-exit.yaml). Everything else is real: the operator
creates the Job as the chart's ServiceAccount, reads the verdict off the pod, and moves
(or does not move) the Deployment.
"""

from __future__ import annotations

import json

import pytest

from e2e.helpers import condition, wait_for
from shoal.api import conditions as C
from shoal.api.naming import CHECKPOINT_ANNOTATION

pytestmark = pytest.mark.e2e

CKPT_A = "s3://acme-models/gated/ckpt-0001"
CKPT_B = "s3://acme-models/gated/ckpt-0002"
CKPT_C = "s3://acme-models/gated/ckpt-0003"


def _record(checkpoint: str, verdict: str, exact_match: float) -> str:
    """The EvaluationRecord `shoal eval` writes as its termination message."""
    return json.dumps({
        "checkpoint": checkpoint, "verdict": verdict, "items": 200,
        "metrics": [{"name": "exact_match", "value": exact_match,
                     "lower": exact_match - 0.05, "upper": exact_match + 0.04}],
        "message": f"exact_match {exact_match:.2f} against a threshold of 0.80.",
    })


def _evaluation(exit_code: int, message: str) -> dict:
    return {
        "dataset": {"configMapRef": {"name": "gated-dataset", "key": "items.jsonl"}},
        "scorers": [{"type": "exactMatch"}],
        "thresholds": [{"metric": "exact_match", "min": 0.8}],
        "podAnnotations": {"shoal.dev/simulate-exit-code": str(exit_code),
                           "shoal.dev/simulate-termination-message": message},
    }


def _tier(namespace: str, checkpoint: str, evaluation: dict) -> dict:
    return {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "ModelTier",
        "metadata": {"name": "gated", "namespace": namespace},
        "spec": {
            "model": {"name": "gated-8b", "source": "hf://org/base-8b", "checkpoint": checkpoint},
            "resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}, "cpu": "1", "memory": "4Gi"},
            "replicas": {"min": 1, "max": 1},
            "rollout": {"evaluation": evaluation},
        },
    }


def _status(kubectl, namespace: str) -> dict:
    return kubectl("get", "modeltier", "gated", "-n", namespace)


def _deployed_checkpoints(kubectl, namespace: str) -> set[str]:
    """Checkpoints of the tier's serving pods that are not being deleted."""
    pods = kubectl("get", "pods", "-n", namespace, "-l", "shoal.dev/tier=gated")["items"]
    return {p["metadata"].get("annotations", {}).get(CHECKPOINT_ANNOTATION)
            for p in pods if not p["metadata"].get("deletionTimestamp")
            and p["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "evaluation"}


@pytest.fixture
def dataset(kubectl, namespace) -> str:
    kubectl.run("create", "configmap", "gated-dataset", "-n", namespace,
                '--from-literal=items.jsonl={"prompt": "2+2?", "reference": "4"}')
    return "gated-dataset"


def test_a_passing_checkpoint_is_promoted_and_a_failing_one_is_blocked(
        kubectl, running_operator, namespace, dataset):
    # The first checkpoint serves without an evaluation (firstCheckpoint: serve).
    kubectl.apply([_tier(namespace, CKPT_A, _evaluation(0, _record(CKPT_B, "Passed", 0.9)))])
    wait_for(lambda: _status(kubectl, namespace)["status"].get("servingCheckpoint") == CKPT_A,
             90, f"{CKPT_A} to serve")

    # B passes: it is evaluated, then rolled out, then serves.
    kubectl.run("patch", "modeltier", "gated", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"model": {"checkpoint": CKPT_B}}}))
    promoted = wait_for(
        lambda: (s := _status(kubectl, namespace))["status"].get("servingCheckpoint") == CKPT_B and s,
        120, f"{CKPT_B} to be evaluated and promoted")
    evaluated = condition(promoted, C.EVALUATED)
    assert (evaluated["status"], evaluated["reason"]) == ("True", C.REASON_PASSED), evaluated
    last = promoted["status"]["lastEvaluation"]
    assert (last["checkpoint"], last["verdict"]) == (CKPT_B, "Passed")
    assert last["metrics"][0]["name"] == "exact_match"
    assert last["metrics"][0]["value"] == pytest.approx(0.9)
    wait_for(lambda: _deployed_checkpoints(kubectl, namespace) == {CKPT_B}, 90,
             f"every serving pod to run {CKPT_B}")

    # C fails its evaluation: B keeps serving, and the status says why and what to do.
    failing = _evaluation(1, _record(CKPT_C, "Failed", 0.6))
    kubectl.run("patch", "modeltier", "gated", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"model": {"checkpoint": CKPT_C},
                                           "rollout": {"evaluation": failing}}}))

    def blocked():
        got = _status(kubectl, namespace)
        cond = condition(got, C.EVALUATED)
        return got if cond and cond["reason"] == C.REASON_FAILED else None

    got = wait_for(blocked, 120, f"{CKPT_C} to be blocked by its evaluation")
    assert got["status"]["servingCheckpoint"] == CKPT_B
    assert got["status"]["lastEvaluation"]["verdict"] == "Failed"
    assert condition(got, C.EVALUATED)["status"] == "False"
    assert CKPT_B in condition(got, C.EVALUATED)["message"]
    assert _deployed_checkpoints(kubectl, namespace) == {CKPT_B}
