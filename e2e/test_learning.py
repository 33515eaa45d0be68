"""Every evaluation teaches the router: a promotion produces a recalibrated classifier that
the running sidecars load, on the real control plane with real sidecars.

The dev cluster's fleet (``shoal.devcluster.fleet``, what `shoal dev up` runs) backs every
pod of the two tiers with the real router sidecar (and the fake engine). The operator, the
eval gate, the rollout and the learning are the real ones; kwok finishes the evaluation
pod with the termination message the test asks for (``evaluation.podAnnotations``): the
record `shoal eval` writes, with per-item outcomes of the candidate and of the serving
checkpoint (``baseline: serving``), in the format tests/evaluate checks the program writes.

What the fleet does in place of the kubelet: it writes a pod's ConfigMap volumes (also
projected ones) to files and rewrites them when the ConfigMaps change, within a second;
a kubelet takes up to its sync period (about a minute). Everything after that, noticing
the new file and loading it, is the sidecar's own code.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.helpers import WaitTimeout, fleet_tier, wait_for
from shoal.api.outcomes import ItemOutcomes
from shoal.controller.metrics_source import parse_held_shares
from shoal.devcluster import fleet, processes
from shoal.devcluster.cluster import FLEET, ControlPlane, stop_pod_processes
from shoal.devcluster.commands import start_fleet
from shoal.router.classifier import DifficultyModel, Example, train_difficulty

pytestmark = pytest.mark.e2e

CKPT_A = "s3://acme-models/learn-small/ckpt-0001"
CKPT_B = "s3://acme-models/learn-small/ckpt-0002"
ENGINE = "learning-fake"
ENGINES = f"""\
engines:
  - name: {ENGINE}
    kind: fake
    fake: {{reply: "4"}}
"""
ROUTER_PORT = 8080
PROMPTS = [f"add {i} and {i + 3} please" if i % 2 else f"prove lemma {i} about compact manifolds rigorously" for i in range(40)]
DATASET = "\n".join(json.dumps({"id": f"q{i}", "prompt": p, "reference": "4"}) for i, p in enumerate(PROMPTS)) + "\n"
DIGEST = "sha256:" + hashlib.sha256(DATASET.encode()).hexdigest()
SERVING = [i % 2 == 1 for i in range(40)]  # ckpt-0001 answers the sums
CANDIDATE = [i % 4 == 1 for i in range(40)]  # ckpt-0002 answers half of them


def _version(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def running_fleet(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    nodes = tmp_path_factory.mktemp("fleet") / "engines.yaml"
    nodes.write_text(ENGINES)
    start_fleet(cluster, nodes)
    try:
        wait_for(lambda: fleet.read_status(cluster.state).get("pid"), 60, "the fleet's status file")
        yield cluster.state
    finally:
        processes.stop(cluster.state, FLEET)
        stop_pod_processes(cluster.state)


def _user_model() -> str:
    examples = [Example(p, {"small": i % 2 == 1, "large": True}) for i, p in enumerate(PROMPTS * 3)]
    return json.dumps(train_difficulty(examples, ["small", "large"], bits=10, epochs=3).to_json())


def _evaluation() -> dict:
    record = {"checkpoint": CKPT_B, "verdict": "Passed", "items": 40, "datasetDigest": DIGEST,
              "metrics": [{"name": "exact_match", "value": 0.25, "lower": 0.14, "upper": 0.4}],
              "message": "exact_match 0.25 against a threshold of 0.10.",
              "outcomes": ItemOutcomes.encode(CANDIDATE, SERVING).to_wire()}
    return {
        "dataset": {"configMapRef": {"name": "learn-dataset", "key": "items.jsonl"}},
        "scorers": [{"type": "exactMatch"}],
        "thresholds": [{"metric": "exact_match", "min": 0.1}],
        "baseline": "serving",
        "maxRegression": 1.0,
        "podAnnotations": {"shoal.dev/simulate-exit-code": "0",
                           "shoal.dev/simulate-termination-message": json.dumps(record)},
    }


def _tier(name: str, checkpoint: str, evaluation: dict | None = None) -> dict:
    return fleet_tier(name, checkpoint, policy="learn", engine=ENGINE, evaluation=evaluation)


POLICY = {
    "apiVersion": "shoal.dev/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "learn"},
    "spec": {
        "tiers": [{"name": "small", "modelTierRef": {"name": "learn-small"}},
                  {"name": "large", "modelTierRef": {"name": "learn-large"}}],
        "classifier": {"mode": "enabled", "configMapRef": {"name": "learn-router-model", "key": "model.json"}},
    },
}


def _serving_sidecars(state: Path, namespace: str) -> dict[str, str]:
    return {p["name"]: f"http://{p['ip']}:{ROUTER_PORT}" for p in fleet.read_status(state).get("pods", [])
            if p["kind"] == "serving" and p["namespace"] == namespace and p["name"].startswith("learn-") and all(p["pids"].values())}


def _loaded(url: str) -> dict | None:
    with urllib.request.urlopen(url + "/shoal/state", timeout=5) as response:
        return json.loads(response.read()).get("classifier")


def _all_loaded(state: Path, namespace: str, tiers: set[str], classifier: dict) -> dict[str, dict] | None:
    sidecars = _serving_sidecars(state, namespace)
    if {name.rsplit("-", 2)[0] for name in sidecars} != tiers:
        return None
    loaded = {name: _loaded(url) for name, url in sidecars.items()}
    return loaded if all(v == classifier for v in loaded.values()) else None


def _wait_learned(kubectl, namespace: str, what: str, observe) -> dict:
    """The policy's status.classifier once it names a learned model; on a timeout the error
    shows the last classifier status and `observe()` (what the tier was doing)."""
    seen: dict = {}

    def learned() -> dict | None:
        got = kubectl("get", "routepolicy", "learn", "-n", namespace).get("status", {}).get("classifier") or {}
        seen.update(policy=got, observed=observe())
        return got if got.get("source") == "Learned" else None

    try:
        return wait_for(learned, 180, what)
    except WaitTimeout as error:
        raise AssertionError(f"{error}; last seen: {json.dumps(seen)}") from error


def _small_status(kubectl, namespace: str):
    return lambda: kubectl("get", "modeltier", "learn-small", "-n", namespace).get("status")


def _job_gone(kubectl, namespace: str, job: str):
    return lambda: not kubectl.run("get", "job", job, "-n", namespace, "--ignore-not-found", "-o", "name").strip()


def _asks_large_more_often(user_model: str, learned_model: str) -> bool:
    """The learned model asks for the large tier's help more often on the same prompts."""
    before = DifficultyModel.from_json(json.loads(user_model))
    after = DifficultyModel.from_json(json.loads(learned_model))
    return sum(after.gains(p)[0] for p in PROMPTS) > sum(before.gains(p)[0] for p in PROMPTS)


def test_a_promotion_teaches_the_classifier_and_every_sidecar_loads_it_without_a_restart(
        kubectl, running_operator, namespace, running_fleet):
    state = running_fleet
    user_model = _user_model()
    kubectl.run("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "learn-router-model"}, "data": {"model.json": user_model}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "learn-dataset"}, "data": {"items.jsonl": DATASET}},
        POLICY, _tier("learn-small", CKPT_A, _evaluation()), _tier("learn-large", "s3://acme-models/learn-large/ckpt-0001"),
    ]}))

    # Before any promotion: the user's model, named by version, loaded by both tiers' sidecars.
    status = wait_for(lambda: kubectl("get", "routepolicy", "learn", "-n", namespace).get("status", {}).get("classifier"),
                      90, "the policy's classifier status")
    assert (status["source"], status["version"]) == ("ConfigMap", _version(user_model)), status
    wait_for(lambda: _all_loaded(state, namespace, {"learn-small", "learn-large"}, {"version": _version(user_model), "source": "configured"}),
             120, "both tiers' sidecars running the configured model")
    large_before = {p["name"]: p["pids"] for p in fleet.read_status(state)["pods"] if p["namespace"] == namespace and p["name"].startswith("learn-large-")}
    large_generation = kubectl("get", "deployment", "learn-large", "-n", namespace)["metadata"]["generation"]

    # ckpt-0002 is evaluated against ckpt-0001 (it fails half the sums the old one answered),
    # passes the gate, rolls out, and is promoted.
    kubectl.run("patch", "modeltier", "learn-small", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"model": {"checkpoint": CKPT_B}}}))

    status = _wait_learned(kubectl, namespace, f"{CKPT_B}'s promotion to teach the classifier", _small_status(kubectl, namespace))
    assert status["learnedFrom"] == {
        "modelTier": "learn-small", "rung": "small", "checkpoint": CKPT_B,
        "evaluationJob": status["learnedFrom"]["evaluationJob"], "datasetDigest": DIGEST, "items": 40,
        "comparedWith": "baseline", "failureRate": 0.75, "previousFailureRate": 0.5,
        "prompts": "dataset", "meanOver": "evaluationPrompts",
    }
    assert status["learnedFrom"]["evaluationJob"].startswith("learn-small-eval-")
    assert status["configMap"] == "learn-classifier/model.json"
    cm = kubectl("get", "configmap", "learn-classifier", "-n", namespace)
    assert _version(cm["data"]["model.json"]) == status["version"] != _version(user_model)
    assert cm["metadata"]["ownerReferences"][0]["name"] == "learn"
    assert _asks_large_more_often(user_model, cm["data"]["model.json"])
    # Outcomes stay in the ConfigMap: not in the RoutePolicy's or the ModelTier's status.
    tier = kubectl("get", "modeltier", "learn-small", "-n", namespace)
    assert "outcomes" not in json.dumps(tier["status"]) and "passed" not in json.dumps(status)
    assert json.loads(cm["data"]["evaluations.json"])[-1]["checkpoint"] == CKPT_B

    # Every sidecar of both tiers loads it: the new small pod and the large pod, whose
    # processes and Deployment did not change (the file arrived in the mounted volume).
    wait_for(lambda: _all_loaded(state, namespace, {"learn-small", "learn-large"}, {"version": status["version"], "source": "learned"}),
             90, "every sidecar reporting the learned model's version")
    assert {p["name"]: p["pids"] for p in fleet.read_status(state)["pods"]
            if p["namespace"] == namespace and p["name"].startswith("learn-large-")} == large_before
    assert kubectl("get", "deployment", "learn-large", "-n", namespace)["metadata"]["generation"] == large_generation


def test_a_promotion_evaluated_on_a_uri_dataset_teaches_the_level_without_the_prompts(
        kubectl, running_operator, namespace, running_fleet):
    state = running_fleet
    user_model = _user_model()
    # The dataset is behind a uri the Job would download (unreachable here: kwok ends the
    # pod with the record and outcomes). The operator never reads it: no ConfigMap holds it.
    evaluation = _evaluation()
    evaluation["dataset"] = {"uri": "https://eval-data.invalid/learn/items.jsonl"}
    kubectl.run("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "learn-router-model"}, "data": {"model.json": user_model}},
        POLICY, _tier("learn-small", CKPT_A, evaluation), _tier("learn-large", "s3://acme-models/learn-large/ckpt-0001"),
    ]}))
    wait_for(lambda: _all_loaded(state, namespace, {"learn-small", "learn-large"}, {"version": _version(user_model), "source": "configured"}),
             120, "both tiers' sidecars running the configured model")

    kubectl.run("patch", "modeltier", "learn-small", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"model": {"checkpoint": CKPT_B}}}))
    status = _wait_learned(kubectl, namespace, f"{CKPT_B}'s promotion on a uri dataset to teach the classifier", _small_status(kubectl, namespace))
    job = status["learnedFrom"]["evaluationJob"]
    assert job.startswith("learn-small-eval-")
    assert status["learnedFrom"] == {
        "modelTier": "learn-small", "rung": "small", "checkpoint": CKPT_B, "evaluationJob": job, "datasetDigest": DIGEST,
        "items": 40, "comparedWith": "baseline", "failureRate": 0.75, "previousFailureRate": 0.5,
        "prompts": "none", "meanOver": "trainingSample",
    }
    # 120 training prompts in 3 folds: every one is in the model's sample.
    assert "over the model's sample of 120 training prompts (the dataset is a uri" in status["message"], status["message"]
    cm = kubectl("get", "configmap", "learn-classifier", "-n", namespace)
    assert _version(cm["data"]["model.json"]) == status["version"] != _version(user_model)
    # The mean predicted need for help over that sample rose by the shrunk change, 0.25 * 40 / 60.
    before, after = (json.loads(text) for text in (user_model, cm["data"]["model.json"]))
    shift = after["steps"][0]["helps"]["bias"] - before["steps"][0]["helps"]["bias"]
    sample = [row[0] for row in before["helpsLogits"]]
    moved = sum(1 / (1 + math.exp(-(z + shift))) - 1 / (1 + math.exp(-z)) for z in sample) / len(sample)
    assert moved == pytest.approx(0.25 * 40 / 60, abs=1e-3)
    assert "outcomes" not in json.dumps(kubectl("get", "modeltier", "learn-small", "-n", namespace)["status"])
    assert "passed" not in json.dumps(status)

    wait_for(lambda: _all_loaded(state, namespace, {"learn-small", "learn-large"}, {"version": status["version"], "source": "learned"}),
             90, "every sidecar reporting the learned model's version")


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        return response.read().decode()


def _route(url: str, prompt: str) -> tuple[str, int]:
    """The tier the sidecar's classifier chose for `prompt`, and the answer's status. The
    decision counts towards the share whatever the upstream then did (the dev fleet's
    Service forwarder may drop a connection under a burst: a 502 with the same headers)."""
    request = urllib.request.Request(
        url + "/v1/chat/completions", headers={"Content-Type": "application/json"},
        data=json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": 4}).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            headers, status = response.headers, response.status
    except urllib.error.HTTPError as error:
        headers, status = error.headers, error.code
    assert headers["x-shoal-route-reason"] == "classifier", (status, dict(headers))
    return headers["x-shoal-tier"], status


def test_the_policy_status_reports_the_target_share_the_sidecars_observe_and_their_threshold(
        kubectl, running_operator, namespace, running_fleet):
    state = running_fleet
    policy = json.loads(json.dumps(POLICY))
    policy["spec"]["classifier"]["targetShares"] = {"small": 0.5}
    kubectl.run("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "learn-router-model"}, "data": {"model.json": _user_model()}},
        policy, _tier("learn-small", CKPT_A), _tier("learn-large", "s3://acme-models/learn-large/ckpt-0001"),
    ]}))
    sidecars = wait_for(lambda: (s := _serving_sidecars(state, namespace)) and len(s) == 2 and s, 120, "both tiers' sidecars running")
    small = next(url for name, url in sidecars.items() if name.startswith("learn-small-"))
    wait_for(lambda: _loaded(small), 60, "the small sidecar loading the classifier")

    # One full window (500 classifier decisions) at the small tier's sidecar, the entry.
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(500)]
    routed = [_route(small, p) for p in prompts]
    kept = round([tier for tier, _ in routed].count("small") / 500, 3)
    print("target share e2e:", json.dumps({"kept": kept, "statuses": sorted({s for _, s in routed})}))

    def reported() -> dict | None:
        shares = kubectl("get", "routepolicy", "learn", "-n", namespace).get("status", {}).get("targetShares") or []
        return shares[0] if shares and shares[0].get("sidecars") == 1 else None

    got = wait_for(reported, 120, "status.targetShares with the small sidecar's observed share")
    thresholds = [parse_held_shares(_metrics(url)).threshold["small"] for url in sidecars.values()]
    assert got == {"tier": "small", "targetShare": 0.5, "sidecars": 1, "observedShare": kept,
                   "threshold": round(sum(thresholds) / 2, 3)}, (got, thresholds, kept)
    assert 0.2 <= kept <= 0.8


def _held_evaluation() -> dict:
    """The same evaluation, but kwok never ends its pod: the test ends it (see below)."""
    evaluation = _evaluation()
    evaluation["podAnnotations"] = {"shoal.dev/simulate-hold": "true"}
    return evaluation


def test_a_promotion_while_the_operator_was_down_still_teaches_and_its_job_goes_once_its_outcomes_are_kept(
        kubectl, running_operator, namespace, running_fleet):
    user_model = _user_model()
    kubectl.run("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "learn-router-model"}, "data": {"model.json": user_model}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "learn-dataset"}, "data": {"items.jsonl": DATASET}},
        POLICY, _tier("learn-small", CKPT_A, _held_evaluation()), _tier("learn-large", "s3://acme-models/learn-large/ckpt-0001"),
    ]}))
    wait_for(lambda: kubectl.run("get", "configmap", "learn-classifier", "-n", namespace, "--ignore-not-found", "-o", "name").strip(), 90,
             "the policy's learned-classifier ConfigMap (no promotion yet)")
    # ckpt-0001 serves first (a first checkpoint is not evaluated): what ckpt-0002 replaces.
    wait_for(lambda: kubectl("get", "modeltier", "learn-small", "-n", namespace).get("status", {}).get("servingCheckpoint") == CKPT_A,
             90, f"{CKPT_A} serving")

    # ckpt-0002's evaluation starts; the operator stops while it runs.
    kubectl.run("patch", "modeltier", "learn-small", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"model": {"checkpoint": CKPT_B}}}))

    pods: list = []

    def evaluation_pod() -> dict | None:
        pods[:] = kubectl("get", "pods", "-n", namespace, "-l", "shoal.dev/tier=learn-small,app.kubernetes.io/component=evaluation")["items"]
        return next((p for p in pods if p.get("status", {}).get("phase") == "Running"), None)

    try:
        pod = wait_for(evaluation_pod, 120, "ckpt-0002's evaluation pod running")
    except WaitTimeout as error:
        raise AssertionError(f"{error}; pods: {json.dumps([p.get('status') for p in pods])}") from error
    job = pod["metadata"]["labels"]["job-name"]
    running_operator.stop()

    # While it is down the evaluation ends (the pod finishes with the record and outcomes,
    # as `shoal eval` writes them) and the Job completes. Nothing keeps the outcomes yet.
    record = json.loads(_evaluation()["podAnnotations"]["shoal.dev/simulate-termination-message"])
    kubectl.run("annotate", "pod", pod["metadata"]["name"], "-n", namespace, "--overwrite", "shoal.dev/simulate-hold-",
                "shoal.dev/simulate-exit-code=0", f"shoal.dev/simulate-termination-message={json.dumps(record)}")
    wait_for(lambda: any(c["type"] == "Complete" and c["status"] == "True"
                         for c in kubectl("get", "job", job, "-n", namespace).get("status", {}).get("conditions", [])),
             60, f"Job {job} complete while the operator is down")
    kept = json.loads(kubectl("get", "configmap", "learn-classifier", "-n", namespace)["data"]["evaluations.json"])
    assert job not in {k["job"] for k in kept}

    restarted = time.time()
    running_operator.start()
    status = _wait_learned(kubectl, namespace, f"{CKPT_B}'s promotion to teach the classifier after the restart", _small_status(kubectl, namespace))
    assert (status["learnedFrom"]["evaluationJob"], status["learnedFrom"]["checkpoint"]) == (job, CKPT_B)
    assert (status["learnedFrom"]["comparedWith"], status["learnedFrom"]["items"]) == ("baseline", 40)
    cm = kubectl("get", "configmap", "learn-classifier", "-n", namespace)
    assert _version(cm["data"]["model.json"]) == status["version"] != _version(user_model)
    assert [(k["job"], k["promoted"]) for k in json.loads(cm["data"]["evaluations.json"]) if k["job"] == job] == [(job, True)]
    assert kubectl("get", "modeltier", "learn-small", "-n", namespace)["status"]["servingCheckpoint"] == CKPT_B

    # The Job went once its outcomes were kept, and not before: the operator's delete of it
    # comes after its write of the ConfigMap that keeps them.
    wait_for(_job_gone(kubectl, namespace, job), 60, f"Job {job} deleted")
    writes = running_operator.writes(restarted)
    order = [("delete" if e["verb"] == "delete" else "keep") for e in writes
             if (e["verb"] == "delete" and e.get("objectRef", {}).get("name") == job)
             or (e["verb"] in ("patch", "update", "create") and e.get("objectRef", {}).get("name") == "learn-classifier")]
    assert "delete" in order and order.index("delete") > order.index("keep"), order


# --- an adapter rung learns from its adapter's promotions ------------------------------------

V1, V2 = "hf://acme/refunds-lora-v1", "hf://acme/refunds-lora-v2"


def _adapter_evaluation(source: str, baseline: list[bool] | None) -> dict:
    """The adapter's evaluation, ended by kwok with the record and outcomes `shoal eval
    --candidate-model` writes (`baseline`: the outcomes of what its Job compared with)."""
    evaluation = _evaluation()
    record = json.loads(evaluation["podAnnotations"]["shoal.dev/simulate-termination-message"])
    record.update(checkpoint=source, outcomes=ItemOutcomes.encode(CANDIDATE, baseline).to_wire())
    evaluation["podAnnotations"] = {"shoal.dev/simulate-exit-code": "0", "shoal.dev/simulate-termination-message": json.dumps(record)}
    return evaluation


def _refunds(source: str, baseline: list[bool] | None) -> dict:
    return {"name": "refunds", "source": source, "rollout": {"evaluation": _adapter_evaluation(source, baseline)}}


def test_an_adapter_rungs_promotion_teaches_the_step_above_it_and_every_sidecar_loads_it(
        kubectl, running_operator, namespace, running_fleet):
    state = running_fleet
    examples = [Example(p, {"refunds": i % 2 == 1, "large": True}) for i, p in enumerate(PROMPTS * 3)]
    user_model = json.dumps(train_difficulty(examples, ["refunds", "large"], bits=10, epochs=3).to_json())
    policy = json.loads(json.dumps(POLICY))
    policy["spec"]["tiers"][0] = {"name": "refunds", "modelTierRef": {"name": "learn-small", "adapter": "refunds"}}
    small = _tier("learn-small", CKPT_A)
    # The first source is compared with the base model (the adapter served nothing yet): it
    # cannot teach the rung's step, whatever its outcomes say; it is the next one's reference.
    small["spec"]["adapters"] = [_refunds(V1, [True] * 40)]
    kubectl.run("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "learn-router-model"}, "data": {"model.json": user_model}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "learn-dataset"}, "data": {"items.jsonl": DATASET}},
        policy, small, _tier("learn-large", "s3://acme-models/learn-large/ckpt-0001"),
    ]}))

    def adapter() -> dict:
        tier = kubectl("get", "modeltier", "learn-small", "-n", namespace)
        return next((a for a in tier.get("status", {}).get("adapters", []) if a["name"] == "refunds"), {})

    def kept_jobs() -> set[str]:
        cm = kubectl.run("get", "configmap", "learn-classifier", "-n", namespace, "--ignore-not-found", "-o", "json").strip()
        return {k["job"] for k in json.loads(json.loads(cm)["data"]["evaluations.json"])} if cm else set()

    wait_for(lambda: adapter().get("servingSource") == V1, 90, f"{V1} to pass and serve")
    first_job = adapter()["lastEvaluation"]["jobName"]
    assert "baselineSource" not in adapter()["lastEvaluation"]
    wait_for(lambda: first_job in kept_jobs(), 60, f"{V1}'s outcomes kept")
    status = kubectl("get", "routepolicy", "learn", "-n", namespace)["status"]["classifier"]
    assert (status["source"], status["version"]) == ("ConfigMap", _version(user_model)), status
    wait_for(lambda: _all_loaded(state, namespace, {"learn-small", "learn-large"}, {"version": _version(user_model), "source": "configured"}),
             120, "both tiers' sidecars running the configured model")

    # V2 is evaluated against V1 on the same engine (it fails half the sums V1 answered),
    # passes, and is promoted: the step above the refunds rung learns from it.
    kubectl.run("patch", "modeltier", "learn-small", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"adapters": [_refunds(V2, SERVING)]}}))
    status = _wait_learned(kubectl, namespace, f"{V2}'s promotion to teach the classifier", adapter)
    promoted = adapter()
    assert (promoted["servingSource"], promoted["lastEvaluation"]["baselineSource"]) == (V2, V1)
    job = promoted["lastEvaluation"]["jobName"]
    assert status["learnedFrom"] == {
        "modelTier": "learn-small", "adapter": "refunds", "rung": "refunds", "checkpoint": V2, "evaluationJob": job,
        "datasetDigest": DIGEST, "items": 40, "comparedWith": "baseline", "failureRate": 0.75, "previousFailureRate": 0.5,
        "prompts": "dataset", "meanOver": "evaluationPrompts",
    }
    cm = kubectl("get", "configmap", "learn-classifier", "-n", namespace)
    assert _version(cm["data"]["model.json"]) == status["version"] != _version(user_model)
    assert _asks_large_more_often(user_model, cm["data"]["model.json"])
    assert "outcomes" not in json.dumps(kubectl("get", "modeltier", "learn-small", "-n", namespace)["status"])

    wait_for(lambda: _all_loaded(state, namespace, {"learn-small", "learn-large"}, {"version": status["version"], "source": "learned"}),
             90, "every sidecar reporting the learned model's version")
    # The adapter's Job went once its outcomes were kept.
    wait_for(_job_gone(kubectl, namespace, job), 60, f"Job {job} deleted")


# --- a held evaluation Job goes as soon as no policy can learn from it ----------------------


def test_a_held_evaluation_job_goes_at_once_when_the_policys_user_model_is_deleted(
        kubectl, running_operator, namespace, running_fleet):
    # An immutable ConfigMap of the user's already has the name of the policy's
    # `learn-classifier`: the policy's pass cannot write it, so it never keeps the promoted
    # evaluation's outcomes and the ModelTier's pass holds the Job. Deleting the user's
    # model then leaves no policy that learns from the rung; nothing about the tier changes,
    # so only the ConfigMap's event can queue the pass that releases the Job.
    kubectl.run("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "learn-router-model"}, "data": {"model.json": _user_model()}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "learn-dataset"}, "data": {"items.jsonl": DATASET}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "learn-classifier"}, "immutable": True, "data": {"owner": "someone else"}},
        POLICY, _tier("learn-small", CKPT_A, _evaluation()), _tier("learn-large", "s3://acme-models/learn-large/ckpt-0001"),
    ]}))
    wait_for(lambda: kubectl("get", "modeltier", "learn-small", "-n", namespace).get("status", {}).get("servingCheckpoint") == CKPT_A,
             90, f"{CKPT_A} serving")
    kubectl.run("patch", "modeltier", "learn-small", "-n", namespace, "--type=merge",
                "-p", json.dumps({"spec": {"model": {"checkpoint": CKPT_B}}}))
    seen: dict = {}

    def promoted_and_ready() -> dict | None:
        status = kubectl("get", "modeltier", "learn-small", "-n", namespace).get("status", {})
        seen.update(status)
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        return status if ready and status.get("servingCheckpoint") == CKPT_B and status.get("candidateCheckpoint") is None else None

    try:
        status = wait_for(promoted_and_ready, 180, f"{CKPT_B} promoted and the tier Ready")
    except WaitTimeout as error:
        raise AssertionError(f"{error}; last seen: {json.dumps(seen)}") from error
    job = status["lastEvaluation"]["jobName"]
    assert kubectl.run("get", "job", job, "-n", namespace, "--ignore-not-found", "-o", "name").strip() == f"job.batch/{job}"

    deleted = time.time()
    kubectl.run("delete", "configmap", "learn-router-model", "-n", namespace)
    wait_for(_job_gone(kubectl, namespace, job), 60,
             f"Job {job} deleted once no policy learns from learn-small")
    # Released by the ConfigMap's event, not by the tier's next status write (the autoscaler
    # writes it every few seconds here, and each write queues the tier's pass too).
    order = [("delete" if e["verb"] == "delete" else "tier status") for e in running_operator.writes(deleted)
             if (e["verb"] == "delete" and e.get("objectRef", {}).get("name") == job)
             or (e.get("objectRef", {}).get("resource") == "modeltiers" and e.get("objectRef", {}).get("name") == "learn-small")]
    assert order[:1] == ["delete"], order
