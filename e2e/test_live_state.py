"""After a promotion, no sidecar serves a cached answer of the old checkpoint for longer
than the stated bound: the proof of live state flowing one way, on the real control plane
with real sidecars.

The dev cluster's fleet (``shoal.devcluster.fleet``, what `shoal dev up` runs) backs every
pod of the two tiers with the real router sidecar and the fake engine on the pod's IP. The
fake engine answers "Answer of CHECKPOINT." with the checkpoint its pod serves, so what a
client is served says which pod generation produced it, whatever the headers claim. The
operator, the eval gate and the rolling update are the real ones; kwok finishes the
evaluation pod with the verdict the test asks for (``evaluation.podAnnotations``).

The bound comes from ``router/peers.py``: a peer's checkpoint is trusted for the cache only
while the evidence of it is younger than ``peers.staleAfterSeconds`` (5 s), so no answer
cached under the old checkpoint is served later than 5 s after the last old pod stopped
answering. Measured from the moment the Deployment reports the rollout complete, the old
pod's processes also have to be stopped (the fleet reacts on its next 1 s pass and the
router exits on SIGTERM): the test allows 10 s for both, against the minute or more a
ConfigMap takes to reach a running pod through the kubelet.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.helpers import fleet_tier, wait_for
from shoal.api.naming import CHECKPOINT_ANNOTATION, router_configmap_name
from shoal.api.routerconfig import PeersConfig
from shoal.devcluster import fleet, processes
from shoal.devcluster.cluster import FLEET, ControlPlane, stop_pod_processes
from shoal.devcluster.commands import start_fleet

pytestmark = pytest.mark.e2e

CKPT_A = "s3://acme-models/legal/ckpt-0001"
CKPT_B = "s3://acme-models/legal/ckpt-0002"
ENGINE = "answers-with-checkpoint"
# Only tiers annotated with this engine get processes: other tests' pods stay simulated.
ENGINES = f"""\
engines:
  - name: {ENGINE}
    kind: fake
    fake: {{reply: "Answer of {{checkpoint}}."}}
"""
ROUTER_PORT = 8080
PROMPT = {"messages": [{"role": "user", "content": "Summarise this contract in one line."}],
          "temperature": 0, "max_tokens": 16}
PEERS = PeersConfig()  # the defaults the rendered sidecar config uses (the policy sets none)
# From the Deployment's completion: the old pod's processes stopped (the fleet's next pass,
# SIGTERM, the router's exit) plus staleAfterSeconds.
BOUND_AFTER_ROLLOUT_SECONDS = 10.0


def _answer(checkpoint: str) -> str:
    return f"Answer of {checkpoint}."


@pytest.fixture(scope="module")
def running_fleet(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The fleet of `shoal dev up` on the session's cluster, with one engine chosen by name."""
    nodes = tmp_path_factory.mktemp("fleet") / "engines.yaml"
    nodes.write_text(ENGINES)
    start_fleet(cluster, nodes)
    try:
        wait_for(lambda: fleet.read_status(cluster.state).get("pid"), 60, "the fleet's status file")
        yield cluster.state
    finally:
        processes.stop(cluster.state, FLEET)
        stop_pod_processes(cluster.state)


def _tier(name: str, checkpoint: str, evaluation: dict | None = None) -> dict:
    return fleet_tier(name, checkpoint, policy="legal", engine=ENGINE, evaluation=evaluation)


POLICY = {
    "apiVersion": "shoal.dev/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "legal"},
    "spec": {
        "tiers": [{"name": "small", "modelTierRef": {"name": "small"}},
                  {"name": "large", "modelTierRef": {"name": "large"}}],
        "rules": [{"name": "legal", "match": {"keywords": ["contract"]}, "tier": "large"}],
        "cache": {"mode": "exactMatch", "ttlSeconds": 3600},
    },
}


def _passing_evaluation(checkpoint: str) -> dict:
    record = {"checkpoint": checkpoint, "verdict": "Passed", "items": 50,
              "metrics": [{"name": "exact_match", "value": 0.9, "lower": 0.85, "upper": 0.94}],
              "message": "exact_match 0.90 against a threshold of 0.80."}
    return {
        "dataset": {"configMapRef": {"name": "legal-dataset", "key": "items.jsonl"}},
        "scorers": [{"type": "exactMatch"}],
        "thresholds": [{"metric": "exact_match", "min": 0.8}],
        "podAnnotations": {"shoal.dev/simulate-exit-code": "0",
                           "shoal.dev/simulate-termination-message": json.dumps(record)},
    }


@dataclass(frozen=True)
class Served:
    """One probe of a sidecar: when it was sent and answered (monotonic), and what came back."""

    pod: str
    sent: float
    received: float
    status: int
    reason: str
    checkpoint: str
    content: str

    def cached_from(self, checkpoint: str) -> bool:
        return self.reason == "cache" and (self.checkpoint == checkpoint or self.content == _answer(checkpoint))


def _post(url: str) -> tuple[int, dict[str, str], dict]:
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(PROMPT).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, {}


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class Prober:
    """Asks every given sidecar for the prompt, and every given old pod whether it still
    answers, over and over in a thread, keeping everything seen."""

    def __init__(self, sidecars: dict[str, str], old_pods: dict[str, str]) -> None:
        self.sidecars, self.old_pods = sidecars, old_pods
        self.served: list[Served] = []
        self.old_answered: dict[str, float] = {}  # old pod -> send time of its last answer
        self.old_silent: dict[str, float] = {}  # old pod -> send time of the first probe it missed after that
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pod, url in self.sidecars.items():
                sent = time.monotonic()
                try:
                    status, headers, body = _post(url)
                except OSError as error:
                    status, headers, body = 0, {}, {"error": str(error)}
                content = ((body.get("choices") or [{}])[0].get("message") or {}).get("content", "")
                self.served.append(Served(pod, sent, time.monotonic(), status, headers.get("x-shoal-route-reason", ""),
                                          headers.get("x-shoal-checkpoint", ""), content))
            for pod, url in self.old_pods.items():
                sent = time.monotonic()
                if _answers(url):
                    self.old_answered[pod] = sent
                    self.old_silent.pop(pod, None)
                else:
                    self.old_silent.setdefault(pod, sent)
            self._stop.wait(0.1)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _serving_pods(state: Path, tier: str) -> list[dict]:
    return [p for p in fleet.read_status(state).get("pods", [])
            if p["kind"] == "serving" and p["name"].startswith(f"{tier}-") and all(p["pids"].values())]


def _rollout_complete(kubectl, namespace: str) -> bool:
    """The Deployment says every replica is updated, ready and the only one (no old pod left),
    and every remaining pod of the tier carries the new checkpoint."""
    deployment = kubectl("get", "deployment", "large", "-n", namespace)
    status, want = deployment.get("status") or {}, deployment["spec"]["replicas"]
    template = deployment["spec"]["template"]["metadata"].get("annotations", {}).get(CHECKPOINT_ANNOTATION)
    if template != CKPT_B or status.get("observedGeneration") != deployment["metadata"]["generation"]:
        return False
    if not (status.get("updatedReplicas") == status.get("readyReplicas") == status.get("replicas") == want):
        return False
    pods = kubectl("get", "pods", "-n", namespace, "-l", "shoal.dev/tier=large,app.kubernetes.io/component=inference")["items"]
    return {p["metadata"].get("annotations", {}).get(CHECKPOINT_ANNOTATION) for p in pods} == {CKPT_B}


def test_after_a_promotion_no_sidecar_serves_the_old_checkpoints_cached_answer_beyond_the_bound(
        kubectl, running_operator, namespace, running_fleet):
    state = running_fleet
    kubectl.run("create", "configmap", "legal-dataset", "-n", namespace,
                '--from-literal=items.jsonl={"prompt": "2+2?", "reference": "4"}')
    kubectl.run("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        POLICY, _tier("small", "s3://acme-models/small/ckpt-0001"), _tier("large", CKPT_A, _passing_evaluation(CKPT_B))]}))

    small = wait_for(lambda: _serving_pods(state, "small"), 120, "the small pod's sidecar and engine running")
    (old_large,) = wait_for(lambda: _serving_pods(state, "large"), 120, "the large pod's sidecar and engine running")
    sidecars = {p["name"]: f"http://{p['ip']}:{ROUTER_PORT}" for p in small}

    # Warm: the small sidecar sends the prompt to the large tier (rule `legal`), keeps the
    # answer under the checkpoint that produced it, and serves it from the cache next time.
    def cached_a() -> dict | None:
        for url in sidecars.values():
            status, headers, body = _post(url)
            if (status, headers.get("x-shoal-tier"), headers.get("x-shoal-route-reason")) != (200, "large", "cache"):
                return None
        return {"checkpoint": headers["x-shoal-checkpoint"], "content": body["choices"][0]["message"]["content"]}

    warm = wait_for(cached_a, 120, "the small sidecar serving the large tier's answer from its cache")
    assert warm == {"checkpoint": CKPT_A, "content": _answer(CKPT_A)}
    small_config = kubectl("get", "configmap", router_configmap_name("small"), "-n", namespace)["metadata"]["resourceVersion"]
    small_pids = {p["name"]: p["pids"] for p in small}

    with Prober(sidecars, {old_large["name"]: f"http://{old_large['ip']}:{ROUTER_PORT}"}) as prober:
        wait_for(lambda: any(s.cached_from(CKPT_A) for s in prober.served), 30, "the prober seeing A's cached answer")
        promoted_at = time.monotonic()
        kubectl.run("patch", "modeltier", "large", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"model": {"checkpoint": CKPT_B}}}))

        # The moment the rollout completed lies after the last check that found it incomplete.
        not_complete_since = time.monotonic()

        def complete() -> bool:
            nonlocal not_complete_since
            started = time.monotonic()
            if _rollout_complete(kubectl, namespace):
                return True
            not_complete_since = started
            return False

        wait_for(complete, 180, f"{CKPT_B} evaluated, promoted and rolled out", interval=0.2)
        rolled_out = not_complete_since

        def cached_b() -> Served | None:
            fresh = [s for s in prober.served if s.sent > rolled_out]
            latest = {s.pod: s for s in fresh}
            return latest if len(latest) == len(sidecars) and all(s.cached_from(CKPT_B) for s in latest.values()) else None

        wait_for(cached_b, 90, f"every small sidecar serving {CKPT_B}'s answer from its cache")
        wait_for(lambda: old_large["name"] in prober.old_silent, 30, "the old large pod's sidecar stopped")

    served = list(prober.served)
    last_a = max((s for s in served if s.content == _answer(CKPT_A)), key=lambda s: s.received)
    old_stopped_by = prober.old_silent[old_large["name"]]
    measured = {
        "lastOldAnswerAfterRolloutSeconds": round(last_a.received - rolled_out, 2),
        "lastOldAnswerAfterOldPodStoppedSeconds": round(last_a.sent - old_stopped_by, 2),
        "oldPodStoppedAfterRolloutSeconds": round(old_stopped_by - rolled_out, 2),
        "probes": len(served),
        "errorsDuringTheSwitch": sum(1 for s in served if s.status != 200),
        "answersAfterRollout": sorted({(s.status, s.reason, s.content) for s in served if s.sent > rolled_out}),
    }
    print("live-state bound:", json.dumps(measured))

    # The old checkpoint's answer was served from the cache before the promotion, so the
    # probe could have seen it after; it did not, beyond the bound.
    assert any(s.cached_from(CKPT_A) for s in served)
    late = [s for s in served if s.content == _answer(CKPT_A) and s.received > rolled_out + BOUND_AFTER_ROLLOUT_SECONDS]
    assert late == [], measured
    # The sidecar's own contract: not later than staleAfterSeconds after the last old pod stopped answering.
    assert [s for s in served if s.cached_from(CKPT_A) and s.sent > old_stopped_by + PEERS.stale_after_seconds] == []
    # Errors only while the large tier's pods changed: kwok reports a pod Ready before the
    # fleet's processes behind it listen (no readiness probe runs), so the Deployment can
    # remove the old pod before the new one answers, and a request sent then finds no
    # large sidecar (a cluster's readiness probe closes that gap). Before the promotion and
    # after the bound, every answer was a 200.
    failed = [s for s in served if s.status != 200]
    assert {s.status for s in failed} <= {502, 503}, measured
    assert [s for s in failed if s.sent < promoted_at or s.sent > rolled_out + BOUND_AFTER_ROLLOUT_SECONDS] == [], measured
    assert {s.content for s in served if s.status == 200} <= {_answer(CKPT_A), _answer(CKPT_B)}, measured
    # Nothing reached the small sidecar through its config file: its ConfigMap did not
    # change and the same processes served throughout.
    assert kubectl("get", "configmap", router_configmap_name("small"), "-n", namespace)["metadata"]["resourceVersion"] == small_config
    assert {p["name"]: p["pids"] for p in _serving_pods(state, "small")} == small_pids
