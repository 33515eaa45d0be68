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


def _hold() -> dict:
    """An evaluation whose pod never finishes (timeoutSeconds is the API's minimum)."""
    return {
        "dataset": {"configMapRef": {"name": "gated-dataset", "key": "items.jsonl"}},
        "scorers": [{"type": "exactMatch"}],
        "thresholds": [{"metric": "exact_match", "min": 0.8}],
        "timeoutSeconds": 60,
        "podAnnotations": {"shoal.dev/simulate-hold": "true"},
    }


def _jobs(kubectl, namespace: str) -> list[dict]:
    return kubectl("get", "jobs", "-n", namespace, "-l", "shoal.dev/tier=gated")["items"]


def _evaluated(kubectl, namespace: str) -> dict | None:
    return condition(_status(kubectl, namespace), C.EVALUATED)


def test_hung_evaluation_times_out_a_newer_checkpoint_supersedes_and_restarts_change_nothing(
        kubectl, running_operator, namespace, dataset):
    kubectl.apply([_tier(namespace, CKPT_A, _hold())])
    wait_for(lambda: _status(kubectl, namespace)["status"].get("servingCheckpoint") == CKPT_A,
             90, f"{CKPT_A} to serve")

    # B's evaluation starts: the Job has the spec the operator promises.
    kubectl.run("patch", "modeltier", "gated", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"model": {"checkpoint": CKPT_B}}}))
    (job,) = wait_for(lambda: _jobs(kubectl, namespace), 60, "the evaluation Job of B")
    assert job["metadata"]["annotations"][CHECKPOINT_ANNOTATION] == CKPT_B
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ModelTier"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 60
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:3] == ["eval", "--serve-checkpoint", CKPT_B]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    evaluating = wait_for(lambda: (c := _evaluated(kubectl, namespace)) and c["reason"] == C.REASON_EVALUATING and c,
                          60, "Evaluated=Unknown Evaluating")
    assert evaluating["status"] == "Unknown"
    ready = condition(_status(kubectl, namespace), C.READY)
    assert (ready["status"], ready["reason"]) == ("False", C.REASON_EVALUATING)

    # The operator dies mid-evaluation and comes back: same candidate, same single Job.
    running_operator.kill()
    running_operator.start()
    status = wait_for(lambda: (s := _status(kubectl, namespace)) and s, 30, "the tier after a restart")["status"]
    assert (status["servingCheckpoint"], status["candidateCheckpoint"]) == (CKPT_A, CKPT_B)
    assert [j["metadata"]["name"] for j in _jobs(kubectl, namespace)] == [job["metadata"]["name"]]

    # The Job never finishes: the Job's deadline ends it and the verdict is TimedOut.
    timed_out = wait_for(lambda: (c := _evaluated(kubectl, namespace)) and c["reason"] == C.REASON_TIMED_OUT and c,
                         150, "Evaluated=False TimedOut")
    assert timed_out["status"] == "False"
    got = _status(kubectl, namespace)
    assert got["status"]["servingCheckpoint"] == CKPT_A
    assert got["status"]["lastEvaluation"]["verdict"] == "TimedOut"
    assert _deployed_checkpoints(kubectl, namespace) == {CKPT_A}

    # Restarted while blocked: the verdict is recorded, not recomputed, and nothing moves.
    running_operator.kill()
    running_operator.start()
    wait_for(lambda: (c := _evaluated(kubectl, namespace)) and c["reason"] == C.REASON_TIMED_OUT, 30, "still TimedOut")
    assert _status(kubectl, namespace)["status"]["servingCheckpoint"] == CKPT_A

    # C supersedes B (which is cleaned up) and passes: C serves. The operator is killed
    # right after the commit, in the middle of C's evaluation and rollout, and restarted.
    kubectl.run("patch", "modeltier", "gated", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"model": {"checkpoint": CKPT_C},
                                           "rollout": {"evaluation": _evaluation(0, _record(CKPT_C, "Passed", 0.93))}}}))
    running_operator.kill()
    running_operator.start()
    promoted = wait_for(
        lambda: (s := _status(kubectl, namespace))["status"].get("servingCheckpoint") == CKPT_C and s,
        120, f"{CKPT_C} to be evaluated and promoted")
    assert promoted["status"]["lastEvaluation"]["checkpoint"] == CKPT_C
    assert promoted["status"].get("candidateCheckpoint") is None
    wait_for(lambda: _jobs(kubectl, namespace) == [], 60, "every evaluation Job cleaned up after the promotion")
    wait_for(lambda: _deployed_checkpoints(kubectl, namespace) == {CKPT_C}, 60, f"every serving pod on {CKPT_C}")
    deployments = kubectl("get", "deployments", "-n", namespace)["items"]
    assert [d["metadata"]["name"] for d in deployments] == ["gated"], "no duplicate objects after the restarts"
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=gated")["items"]
    reasons = {e["reason"] for e in events}
    assert {"Evaluating", "TimedOut", "Superseded", "Passed", "Promoted"} <= reasons, reasons
