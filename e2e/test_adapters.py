"""LoRA adapters on the real control plane: the API server enforces the adapter rules, and
re-pointing an adapter reaches the sidecars through their ConfigMap without restarting a pod."""

from __future__ import annotations

import json

import pytest

from e2e.helpers import condition, wait_for
from e2e.test_modeltier import ready_tier, tier, tier_pods
from shoal.devcluster.kubectl import KubectlError

pytestmark = pytest.mark.e2e

# Hub sources: a pvc:// source would need a claim, which kwok nodes cannot bind.
ADAPTERS = [{"name": "refunds", "source": "hf://acme/refunds-lora-v1"}, {"name": "triage", "source": "hf://acme/triage-lora"}]


@pytest.mark.parametrize(
    ("adapters", "message"),
    [
        ([{"name": "a", "source": "pvc://x/a"}, {"name": "a", "source": "pvc://x/b"}], "adapter names must be unique"),
        ([{"name": "m", "source": "pvc://x/a"}], "an adapter's name must differ from spec.model.name"),
        ([{"name": f"a{i}", "source": "pvc://x/a"} for i in range(65)], "spec.adapters: Too many: 65: must have at most 64 items"),
        ([{"name": "a", "source": "ftp://x/a"}], "spec.adapters[0].source"),
    ],
    ids=["duplicate", "base-name", "too-many", "bad-source"],
)
def test_invalid_adapters_are_rejected_by_the_apiserver(kubectl, operator_installed, namespace, adapters, message):
    with pytest.raises(KubectlError) as rejected:
        kubectl.apply([tier("lora", namespace, adapters=adapters)])
    assert "is invalid" in rejected.value.stderr
    assert message in rejected.value.stderr


def test_repointing_an_adapter_updates_the_sidecar_config_and_restarts_no_pod(kubectl, running_operator, namespace):
    kubectl.apply([tier("lora", namespace, replicas=2, adapters=ADAPTERS)])
    ready_tier(kubectl, "lora", namespace)
    pods = {p["metadata"]["uid"] for p in tier_pods(kubectl, "lora", namespace)}
    deployment = kubectl("get", "deployment", "lora", "-n", namespace)
    engine = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "engine")
    assert engine["args"][-5:] == ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "16"]

    kubectl.run("patch", "modeltier", "lora", "-n", namespace, "--type=merge", "-p",
                json.dumps({"spec": {"adapters": [{"name": "refunds", "source": "hf://acme/refunds-lora-v2"}, ADAPTERS[1]]}}))

    def config_adapters():
        data = kubectl("get", "configmap", "lora-router", "-n", namespace)["data"]["router.json"]
        return [(a["name"], a["source"], a.get("path")) for a in json.loads(data).get("adapters", [])]

    wait_for(lambda: config_adapters()[0] == ("refunds", "hf://acme/refunds-lora-v2", "acme/refunds-lora-v2"), 60,
             "the router ConfigMap to carry the new source")
    ready_tier(kubectl, "lora", namespace)
    after = kubectl("get", "deployment", "lora", "-n", namespace)
    assert after["metadata"]["generation"] == deployment["metadata"]["generation"]
    assert {p["metadata"]["uid"] for p in tier_pods(kubectl, "lora", namespace)} == pods


def test_a_policy_rung_on_an_adapter_resolves_once_the_tier_lists_it(kubectl, namespace, running_operator):

    policy = {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "tasks", "namespace": namespace},
        "spec": {"tiers": [
            {"name": "refunds", "modelTierRef": {"name": "base", "adapter": "refunds"}},
            {"name": "base", "modelTierRef": {"name": "base"}},
        ]},
    }
    base = tier("base", namespace, router={"routePolicy": "tasks"})
    kubectl.apply([policy, base])

    def refs():
        return condition(kubectl("get", "routepolicy", "tasks", "-n", namespace), "ResolvedRefs") or {}

    missing = wait_for(lambda: refs().get("reason") == "AdapterNotFound" and refs(), 60, "ResolvedRefs=False AdapterNotFound")
    assert missing["message"] == (
        "spec.tiers[0] (refunds) refers to adapter 'refunds' of ModelTier 'base', which lists no such adapter in spec.adapters."
    )

    kubectl.run("patch", "modeltier", "base", "-n", namespace, "--type=merge", "-p",
                json.dumps({"spec": {"adapters": [ADAPTERS[0]]}}))
    wait_for(lambda: refs().get("reason") == "Resolved", 90, "the adapter found")

    def ladder():
        config = json.loads(kubectl("get", "configmap", "base-router", "-n", namespace)["data"]["router.json"])
        return [(t["name"], t["kind"], t["model"]) for t in config["tiers"]]

    wait_for(lambda: ladder() == [("refunds", "local", "refunds"), ("base", "local", "m")], 60, "the adapter rung in the sidecar config")


# --- eval-gated promotion (plan/adapters.py) ---------------------------------------------
# The adapter's evaluation Job does not run vLLM here: kwok finishes its pod with the exit
# code and termination message the test asks for (devcluster/stages/job-pod-exit.yaml), as
# in e2e/test_rollout.py. The operator, the Jobs, the ConfigMap and the pods are real.

V1, V2, V3, V4 = (f"hf://acme/refunds-lora-v{i}" for i in (1, 2, 3, 4))


def _gate(exit_code: int | None, source: str = "", verdict: str = "", exact_match: float = 0.0) -> dict:
    """An adapter evaluation whose pod kwok ends with `exit_code` (None: never ends)."""
    if exit_code is None:
        annotations = {"shoal.dev/simulate-hold": "true"}
    else:
        record = json.dumps({
            "checkpoint": source, "verdict": verdict, "items": 200,
            "metrics": [{"name": "exact_match", "value": exact_match, "lower": exact_match - 0.05, "upper": exact_match + 0.04}],
            "message": f"exact_match {exact_match:.2f} against a threshold of 0.80.",
        })
        annotations = {"shoal.dev/simulate-exit-code": str(exit_code), "shoal.dev/simulate-termination-message": record}
    return {
        "dataset": {"configMapRef": {"name": "refunds-dataset", "key": "items.jsonl"}},
        "scorers": [{"type": "exactMatch"}],
        "thresholds": [{"metric": "exact_match", "min": 0.8}],
        "baseline": "serving",
        "timeoutSeconds": 60,
        "podAnnotations": annotations,
    }


def _gated(source: str, evaluation: dict) -> dict:
    return {"name": "refunds", "source": source, "rollout": {"evaluation": evaluation}}


@pytest.fixture
def refunds_dataset(kubectl, namespace) -> str:
    kubectl.run("create", "configmap", "refunds-dataset", "-n", namespace,
                '--from-literal=items.jsonl={"prompt": "Refund order 7?", "reference": "yes"}')
    return "refunds-dataset"


def _adapter_status(kubectl, namespace: str) -> dict:
    got = kubectl("get", "modeltier", "lora", "-n", namespace)
    return next((a for a in got.get("status", {}).get("adapters", []) if a["name"] == "refunds"), {})


def _adapter_condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def _config_sources(kubectl, namespace: str) -> dict[str, str]:
    data = kubectl("get", "configmap", "lora-router", "-n", namespace)["data"]["router.json"]
    return {a["name"]: a["source"] for a in json.loads(data).get("adapters", [])}


def _serving_pods(kubectl, namespace: str) -> set[str]:
    return {p["metadata"]["uid"] for p in tier_pods(kubectl, "lora", namespace)
            if p["metadata"]["labels"].get("app.kubernetes.io/component") == "inference"}


def _adapter_jobs(kubectl, namespace: str) -> list[dict]:
    return kubectl("get", "jobs", "-n", namespace, "-l", "shoal.dev/tier=lora")["items"]


def _patch_adapters(kubectl, namespace: str, *adapters: dict) -> None:
    kubectl.run("patch", "modeltier", "lora", "-n", namespace, "--type=merge", "-p",
                json.dumps({"spec": {"adapters": list(adapters)}}))


def test_an_adapter_source_serves_only_after_its_evaluation_passes_and_a_failing_one_stays_blocked_without_restarts(
        kubectl, running_operator, namespace, refunds_dataset):
    # A new adapter with an evaluation serves nothing until its first source passes.
    kubectl.apply([tier("lora", namespace, replicas=2, adapters=[_gated(V1, _gate(0, V1, "Passed", 0.9)), ADAPTERS[1]])])
    wait_for(lambda: _adapter_status(kubectl, namespace).get("servingSource") == V1, 90, f"{V1} to pass and serve")
    assert _config_sources(kubectl, namespace) == {"refunds": V1, "triage": "hf://acme/triage-lora"}
    ready_tier(kubectl, "lora", namespace)
    pods = _serving_pods(kubectl, namespace)
    generation = kubectl("get", "deployment", "lora", "-n", namespace)["metadata"]["generation"]

    # V2 passes: the ConfigMap lists it, the same pods serve it.
    _patch_adapters(kubectl, namespace, _gated(V2, _gate(0, V2, "Passed", 0.92)), ADAPTERS[1])
    promoted = wait_for(lambda: (s := _adapter_status(kubectl, namespace)).get("servingSource") == V2 and s, 90, f"{V2} to be promoted")
    assert "candidateSource" not in promoted
    assert (promoted["lastEvaluation"]["checkpoint"], promoted["lastEvaluation"]["verdict"]) == (V2, "Passed")
    assert promoted["lastEvaluation"]["metrics"][0]["value"] == pytest.approx(0.92)
    assert (_adapter_condition(promoted, "Ready")["status"], _adapter_condition(promoted, "Evaluated")["reason"]) == ("True", "Passed")
    wait_for(lambda: _config_sources(kubectl, namespace)["refunds"] == V2, 30, "the router ConfigMap to list the new source")
    wait_for(lambda: _adapter_jobs(kubectl, namespace) == [], 60, "the promoted source's Job cleaned up")

    # V3 fails: V2 keeps serving, the status says why.
    _patch_adapters(kubectl, namespace, _gated(V3, _gate(1, V3, "Failed", 0.6)), ADAPTERS[1])
    blocked = wait_for(lambda: (s := _adapter_status(kubectl, namespace)) and _adapter_condition(s, "Evaluated").get("reason") == "Failed" and s,
                       90, f"{V3} to be blocked")
    assert (blocked["servingSource"], blocked["candidateSource"]) == (V2, V3)
    assert blocked["lastEvaluation"]["verdict"] == "Failed"
    ready = _adapter_condition(blocked, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Failed")
    assert f"{V3} is blocked: its evaluation ended Failed. exact_match 0.60 against a threshold of 0.80. {V2} keeps serving." in ready["message"]
    got = kubectl("get", "modeltier", "lora", "-n", namespace)
    tier_level = condition(got, "AdaptersReady")
    assert (tier_level["status"], tier_level["reason"]) == ("False", "Failed")
    assert _config_sources(kubectl, namespace)["refunds"] == V2

    assert _serving_pods(kubectl, namespace) == pods
    assert kubectl("get", "deployment", "lora", "-n", namespace)["metadata"]["generation"] == generation
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=lora")["items"]
    reasons = {e["reason"] for e in events}
    assert {"AdapterEvaluating", "AdapterPromoted", "AdapterBlocked"} <= reasons, reasons


def test_an_adapter_evaluation_resumes_after_an_operator_restart_and_a_newer_source_supersedes_it(
        kubectl, running_operator, namespace, refunds_dataset):
    kubectl.apply([tier("lora", namespace, adapters=[_gated(V1, _gate(0, V1, "Passed", 0.9))])])
    wait_for(lambda: _adapter_status(kubectl, namespace).get("servingSource") == V1, 90, f"{V1} to pass and serve")
    ready_tier(kubectl, "lora", namespace)
    pods = _serving_pods(kubectl, namespace)

    # V2's evaluation never ends; its Job is the one the operator promises.
    _patch_adapters(kubectl, namespace, _gated(V2, _gate(None)))
    (job,) = wait_for(lambda: [j for j in _adapter_jobs(kubectl, namespace) if j["metadata"]["annotations"].get("shoal.dev/adapter-source") == V2],
                      60, "the evaluation Job of V2")
    assert job["metadata"]["annotations"]["shoal.dev/adapter"] == "refunds"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:5] == ["eval", "--serve-checkpoint", "hf://org/model", "--checkpoint", V2]
    assert args[args.index("--candidate-model") + 1] == "refunds"
    assert "--engine-arg=refunds=acme/refunds-lora-v2" in args
    # baseline: serving compares with V1, loaded beside V2 in the Job's own engine.
    assert "--engine-arg=refunds@serving=acme/refunds-lora-v1" in args
    assert args[args.index("--baseline-model") + 1] == "refunds@serving"
    assert args[args.index("--baseline-endpoint") + 1] == "http://127.0.0.1:8000/v1"
    wait_for(lambda: _adapter_condition(_adapter_status(kubectl, namespace), "Evaluated").get("reason") == "Evaluating", 30, "Evaluating")

    # The operator dies mid-evaluation and comes back: same candidate, the same single Job.
    running_operator.kill()
    running_operator.start()
    status = _adapter_status(kubectl, namespace)
    assert (status["servingSource"], status["candidateSource"]) == (V1, V2)
    assert [j["metadata"]["name"] for j in _adapter_jobs(kubectl, namespace)] == [job["metadata"]["name"]]
    assert _config_sources(kubectl, namespace) == {"refunds": V1}

    # V3 supersedes V2 (its Job goes) and passes.
    _patch_adapters(kubectl, namespace, _gated(V3, _gate(0, V3, "Passed", 0.95)))
    wait_for(lambda: _adapter_status(kubectl, namespace).get("servingSource") == V3, 90, f"{V3} to be promoted")
    wait_for(lambda: _config_sources(kubectl, namespace) == {"refunds": V3}, 30, "the router ConfigMap on V3")
    wait_for(lambda: _adapter_jobs(kubectl, namespace) == [], 60, "every adapter Job cleaned up")
    assert _serving_pods(kubectl, namespace) == pods
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=lora")["items"]
    assert "AdapterSuperseded" in {e["reason"] for e in events}


# --- a base checkpoint change re-evaluates the serving adapters (plan/adapters.py) ---------

BASE_A, BASE_B = "s3://acme-models/lora-base/ckpt-a", "s3://acme-models/lora-base/ckpt-b"


def test_a_new_base_checkpoint_is_blocked_while_a_serving_adapter_fails_on_it_and_promoted_once_the_adapter_passes(
        kubectl, running_operator, namespace, refunds_dataset):
    # The checkpoint's own evaluation always passes; the adapter's Jobs end as its evaluation says.
    checkpoint_gate = {**_gate(0, BASE_B, "Passed", 0.9), "baseline": "none"}
    model = {"name": "m", "source": "hf://org/model", "checkpoint": BASE_A}
    kubectl.apply([tier("lora", namespace, model=model, rollout={"evaluation": checkpoint_gate},
                        adapters=[_gated(V1, _gate(0, V1, "Passed", 0.9))])])
    wait_for(lambda: _adapter_status(kubectl, namespace).get("servingSource") == V1, 90, f"{V1} to pass and serve")
    ready_tier(kubectl, "lora", namespace)
    assert _adapter_status(kubectl, namespace)["servingBase"] == BASE_A
    pods = _serving_pods(kubectl, namespace)
    generation = kubectl("get", "deployment", "lora", "-n", namespace)["metadata"]["generation"]

    # B: the checkpoint passes, V1's evaluation on B fails (a changed evaluation does not
    # re-evaluate what serves; only the base change does).
    kubectl.run("patch", "modeltier", "lora", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {
        "model": {**model, "checkpoint": BASE_B}, "adapters": [_gated(V1, _gate(1, V1, "Failed", 0.6))]}}))

    def evaluated():
        return condition(kubectl("get", "modeltier", "lora", "-n", namespace), "Evaluated") or {}

    blocked = wait_for(lambda: evaluated().get("reason") == "AdapterFailed" and evaluated(), 120, "the checkpoint blocked by the adapter")
    assert blocked["status"] == "False"
    assert blocked["message"].startswith(
        f"{BASE_B} is blocked: adapter refunds ({V1}) serves on {BASE_A}, and its evaluation on {BASE_B} ended Failed. "
        f"exact_match 0.60 against a threshold of 0.80. {BASE_A} keeps serving with its adapters unchanged.")
    got = kubectl("get", "modeltier", "lora", "-n", namespace)
    assert (got["status"]["servingCheckpoint"], got["status"]["candidateCheckpoint"]) == (BASE_A, BASE_B)
    assert got["status"]["lastEvaluation"]["verdict"] == "Passed"
    assert (condition(got, "Progressing")["reason"], condition(got, "Ready")["reason"]) == ("AdapterFailed", "AdapterFailed")
    adapter = _adapter_status(kubectl, namespace)
    assert (adapter["servingSource"], adapter["servingBase"]) == (V1, BASE_A)
    assert (adapter["baseEvaluation"]["baseCheckpoint"], adapter["baseEvaluation"]["verdict"]) == (BASE_B, "Failed")
    on_b = [j for j in _adapter_jobs(kubectl, namespace) if j["metadata"]["annotations"].get("shoal.dev/base-checkpoint") == BASE_B]
    assert [j["metadata"]["annotations"]["shoal.dev/adapter-source"] for j in on_b] == [V1]
    deployment = kubectl("get", "deployment", "lora", "-n", namespace)
    assert deployment["metadata"]["generation"] == generation
    assert deployment["spec"]["template"]["metadata"]["annotations"]["shoal.dev/checkpoint"] == BASE_A
    assert _serving_pods(kubectl, namespace) == pods
    assert _config_sources(kubectl, namespace) == {"refunds": V1}
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=lora")["items"]
    assert {"AdapterEvaluatingOnBase", "AdapterFailed"} <= {e["reason"] for e in events}

    # The fix: V2 passes on A (it is promoted there), then on B, and B is promoted.
    _patch_adapters(kubectl, namespace, _gated(V2, _gate(0, V2, "Passed", 0.92)))
    promoted = wait_for(lambda: (s := kubectl("get", "modeltier", "lora", "-n", namespace)["status"]).get("servingCheckpoint") == BASE_B and s,
                        180, f"{BASE_B} to be promoted once {V2} passes on it")
    adapter = next(a for a in promoted["adapters"] if a["name"] == "refunds")
    assert (adapter["servingSource"], adapter["servingBase"]) == (V2, BASE_B)
    ready_tier(kubectl, "lora", namespace)
    assert kubectl("get", "deployment", "lora", "-n", namespace)["spec"]["template"]["metadata"]["annotations"]["shoal.dev/checkpoint"] == BASE_B
    assert _config_sources(kubectl, namespace) == {"refunds": V2}
    wait_for(lambda: _adapter_jobs(kubectl, namespace) == [], 90, "every evaluation Job cleaned up")
