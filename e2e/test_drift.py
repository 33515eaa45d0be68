"""Shadow evaluation and drift on the real control plane, with a real small model.

The small tier is SmolLM2-135M-Instruct on llama.cpp (CPU); the reference rung of its
RoutePolicy is the same model correctly configured, so a healthy small tier agrees with
it. The simulated pod has a loopback IP, so the test plays the kubelet's part for what runs
inside it: the real `shoal router` sidecar bound to the pod's IP and port, started with the
router.json the operator rendered into the tier's ConfigMap (only the local engine's URL
is pointed at the model on loopback). The operator scrapes that sidecar as in a cluster.

The shift: the sidecar's engine is swapped for the same model served with a wrong chat
template (a degraded configuration); the restore swaps it back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.testing.llama_server import llama_server, require_llama_server

from .helpers import condition, unique_name, wait_for

pytestmark = pytest.mark.e2e

SIDECAR_PORT = 8080
QUESTIONS = [
    "What is the capital of France? Answer with one word.",
    "What is 2 + 2? Answer with a number only.",
    "What color is the sky on a clear day? Answer with one word.",
    "How many days are in a week? Answer with a number only.",
    "What is the opposite of hot? Answer with one word.",
    "What animal says moo? Answer with one word.",
]


def manifests(tier: str, policy: str, namespace: str, reference_url: str, reference_model: str) -> str:
    return yaml.safe_dump_all([
        {
            "apiVersion": "shoal.dev/v1alpha1", "kind": "ModelTier",
            "metadata": {"name": tier, "namespace": namespace},
            "spec": {
                "model": {"name": "smol", "source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
                "resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}, "cpu": "1", "memory": "2Gi"},
                "replicas": {"min": 1, "max": 1},
                "autoscaling": {"engine": "none"},
                "router": {"routePolicy": policy},
            },
        },
        {
            "apiVersion": "shoal.dev/v1alpha1", "kind": "RoutePolicy",
            "metadata": {"name": policy, "namespace": namespace},
            "spec": {
                "tiers": [
                    {"name": "small", "modelTierRef": {"name": tier}},
                    {"name": "reference", "external": {"url": reference_url, "model": reference_model}},
                ],
                # Cache hits are the same answer again: they are not shadow samples, and the
                # test asks the same questions over and over.
                "cache": {"mode": "disabled"},
                "shadow": {
                    # Every request is a sample; the baseline is given (a healthy tier agrees
                    # with itself), and the test is tuned to a 60-point drop so that a handful
                    # of CPU-bound requests decide it (5 disagreements fire it, 12
                    # agreements clear it).
                    "tiers": [{"tier": "small", "reference": "reference", "samplePercent": 100, "baselineAgreement": 0.95}],
                    "grading": {"type": "exactMatch"},
                    "exclusions": {"requests": "deterministicOnly"},
                    "detection": {"minDropPercent": 60},
                },
            },
        },
    ])


class Sidecar:
    """The real router sidecar of the tier's one pod, on the pod's IP."""

    def __init__(self, config: dict[str, Any], ip: str, workdir: Path) -> None:
        self.config = config
        self.ip = ip
        self.path = workdir / "router.json"
        self.log = workdir / "router.log"
        self.root = f"http://{ip}:{SIDECAR_PORT}"
        self.process: subprocess.Popen[bytes] | None = None

    def engine(self, url: str, model: str) -> None:
        """Point the local rung at an engine (written then renamed, as a ConfigMap swaps)."""
        for rung in self.config["tiers"]:
            if rung["kind"] == "local":
                rung.update(url=url, model=model)
        self.config.pop("engine", None)  # llama.cpp has no Prometheus endpoint
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config))
        tmp.replace(self.path)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli", "router", "--config", str(self.path), "--host", self.ip,
             "--port", str(SIDECAR_PORT), "--reload-interval", "0.2"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self._get("/readyz")[0] == 200, 60, "the sidecar ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.root + path, timeout=5) as response:
                return response.status, response.read().decode()
        except OSError:
            return 0, ""

    def ask(self, question: str) -> str:
        body = {"model": "small", "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 8}
        request = urllib.request.Request(self.root + "/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
            return json.loads(response.read())["choices"][0]["message"]["content"]

    def metric(self, name: str, labels: dict[str, str]) -> float:
        return metric_value(self._get("/metrics")[1], name, labels)


def metric_value(text: str, name: str, labels: dict[str, str]) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def drifting(kubectl: Any, namespace: str, tier: str) -> dict[str, Any]:
    return condition(kubectl("get", "modeltier", tier, "-n", namespace), "Drifting") or {}


def events(kubectl: Any, namespace: str, tier: str, reason: str) -> list[dict[str, Any]]:
    return kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={tier},reason={reason}")["items"]


def test_drifting_goes_true_when_the_small_tier_is_degraded_and_clears_when_restored(kubectl, namespace, running_operator, tmp_path):
    require_llama_server()
    tier, policy = unique_name("smol"), unique_name("drift")
    with llama_server(n_threads=1, log_path=tmp_path / "good.log") as good, \
            llama_server(n_threads=1, chat_format="llama-2", log_path=tmp_path / "degraded.log") as degraded:
        kubectl.run("apply", "-f", "-", input=manifests(tier, policy, namespace, good.base_url, good.model))

        def pod_ip() -> str | None:
            """The IP of the tier's one pod, once its rollout is complete (the first pod is
            replaced when the policy's configuration reaches the Deployment)."""
            obj = kubectl("get", "modeltier", tier, "-n", namespace)
            if (condition(obj, "Progressing") or {}).get("reason") != "RolloutComplete" or (condition(obj, "Ready") or {}).get("status") != "True":
                return None
            pods = kubectl("get", "pods", "-n", namespace, "-l", f"shoal.dev/tier={tier}")["items"]
            running = [p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")
                       and not p["metadata"].get("deletionTimestamp")]
            return running[0]["status"]["podIP"] if len(running) == 1 and len(pods) == 1 else None

        ip = wait_for(pod_ip, 180, "the tier's one pod running after its rollout")
        # The operator renders the policy's shadow spec into the sidecar's configuration.
        rendered = wait_for(lambda: kubectl("get", "configmap", f"{tier}-router", "-n", namespace)["data"].get("router.json"),
                            60, "the router ConfigMap")
        config = json.loads(rendered)
        assert config["shadow"]["tiers"] == [{"tier": "small", "reference": "reference", "samplePercent": 100.0, "baselineAgreement": 0.95}]
        sidecar = Sidecar(config, ip, tmp_path)
        sidecar.engine(good.base_url, good.model)
        sidecar.start()
        try:
            # Healthy: the small tier agrees with its reference, Drifting is False and stays so.
            for question in QUESTIONS:
                sidecar.ask(question)
            wait_for(lambda: sidecar.metric("shoal_shadow_samples_total", {"tier": "small", "outcome": "agree"}) >= len(QUESTIONS), 300,
                     "every healthy answer graded as agreeing")
            stable = wait_for(lambda: drifting(kubectl, namespace, tier).get("reason") == "AgreementStable" and drifting(kubectl, namespace, tier),
                              90, "Drifting=False AgreementStable")
            assert stable["status"] == "False"
            assert "baseline of 95.0% (configured)" in stable["message"]
            quiet_until = time.monotonic() + 65  # two more drift checks, with healthy traffic
            while time.monotonic() < quiet_until:
                sidecar.ask(QUESTIONS[int(time.monotonic()) % len(QUESTIONS)])
                assert drifting(kubectl, namespace, tier)["status"] == "False"
            assert operator_metric(running_operator, tier, namespace) == 0.0

            # Shift: the same tier now answers through a wrong chat template.
            sidecar.engine(degraded.base_url, degraded.model)
            wait_for(lambda: sidecar.metric("shoal_config_reloads_total", {"outcome": "ok"}) >= 1, 30, "the sidecar's reload")
            asked = 0
            deadline = time.monotonic() + 400
            while drifting(kubectl, namespace, tier).get("status") != "True":
                assert time.monotonic() < deadline, f"Drifting never went True: {drifting(kubectl, namespace, tier)}"
                sidecar.ask(QUESTIONS[asked % len(QUESTIONS)])
                asked += 1
            fired = drifting(kubectl, namespace, tier)
            assert fired["reason"] == "AgreementDropped"
            assert "against a baseline of 95.0% (configured); cusum test fired after" in fired["message"]
            assert sidecar.metric("shoal_shadow_samples_total", {"tier": "small", "outcome": "disagree"}) >= 5
            warning = wait_for(lambda: events(kubectl, namespace, tier, "AgreementDropped"), 30, "the AgreementDropped Event")
            assert warning[0]["type"] == "Warning"
            assert operator_metric(running_operator, tier, namespace) == 1.0

            # Restore: the healthy configuration again; the recovery test clears Drifting.
            sidecar.engine(good.base_url, good.model)
            wait_for(lambda: sidecar.metric("shoal_config_reloads_total", {"outcome": "ok"}) >= 2, 30, "the second reload")
            deadline = time.monotonic() + 500
            while drifting(kubectl, namespace, tier).get("status") != "False":
                assert time.monotonic() < deadline, f"Drifting never cleared: {drifting(kubectl, namespace, tier)}"
                sidecar.ask(QUESTIONS[asked % len(QUESTIONS)])
                asked += 1
            assert drifting(kubectl, namespace, tier)["reason"] == "AgreementStable"
            # One Normal AgreementStable Event when watching began, one when the drift cleared.
            stable_events = wait_for(
                lambda: [e for e in events(kubectl, namespace, tier, "AgreementStable") if e["type"] == "Normal"][1:], 30,
                "a second AgreementStable Event",
            )
            assert stable_events
        finally:
            sidecar.stop()


def operator_metric(operator: Any, tier: str, namespace: str) -> float:
    """The operator's shoal_modeltier_drifting gauge for the tier (from its /metrics)."""
    assert operator.metrics_url, "the operator was started by this session"
    with urllib.request.urlopen(operator.metrics_url, timeout=10) as response:
        return metric_value(response.read().decode(), "shoal_modeltier_drifting", {"namespace": namespace, "modeltier": tier})
