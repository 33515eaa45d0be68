"""Autoscaling on queue depth against the real control plane.

The simulated pods have loopback IPs, so each Running pod of the tier gets real stand-ins
for what runs inside it: a fake engine (vLLM-style /metrics with a settable queue) and the
real `shoal router` sidecar bound to the pod's IP and the sidecar port. The operator scrapes
those sidecars exactly as it would in a cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.testing.fake_engine import FakeEngineProcess, start_fake_engine

from .helpers import Watch, condition, unique_name, wait_for

pytestmark = pytest.mark.e2e

SIDECAR_PORT = 8080


def tier_manifest(name: str, namespace: str, *, min_replicas: int, max_replicas: int, idle_seconds: int = 900) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "shoal.dev/v1alpha1",
            "kind": "ModelTier",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "model": {"name": "auto-8b", "source": "hf://org/auto-8b"},
                "resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}, "cpu": "1", "memory": "2Gi"},
                "replicas": {"min": min_replicas, "max": max_replicas},
                "autoscaling": {
                    "targetQueueDepth": 4,
                    "metricsPeriodSeconds": 1,
                    "scaleDownWindowSeconds": 6,
                    "scaleToZeroIdleSeconds": idle_seconds,
                },
            },
        }
    )


class PodSidecars:
    """A fake engine and a real router sidecar for every Running pod of a tier."""

    def __init__(self, kubectl: Any, namespace: str, tier: str, workdir: Path, peers: list[dict[str, Any]] | None = None) -> None:
        """`peers`: rungs of the ladder (router config tiers) below this pod's own engine."""
        self.peers = peers or []
        self.kubectl = kubectl
        self.namespace = namespace
        self.tier = tier
        self.workdir = workdir
        self.waiting = 0
        self.enabled = True
        self.pods: dict[str, tuple[FakeEngineProcess, subprocess.Popen[bytes], str]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> PodSidecars:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for name in list(self.pods):
            self._drop(name)

    def set_waiting(self, waiting: int) -> None:
        """Queue depth each pod's engine reports (vllm:num_requests_waiting)."""
        with self._lock:
            self.waiting = waiting
            for engine, _, _ in list(self.pods.values()):
                engine.configure(waiting=waiting)

    def vanish(self) -> None:
        """Every sidecar stops answering: the operator's scrapes fail."""
        with self._lock:
            self.enabled = False
            for name in list(self.pods):
                self._drop(name)

    def restore(self) -> None:
        self.enabled = True

    def _drop(self, name: str) -> None:
        entry = self.pods.pop(name, None)
        if entry is None:
            return
        engine, router, _ = entry
        router.terminate()
        try:
            router.wait(timeout=10)
        except subprocess.TimeoutExpired:
            router.kill()
        engine.stop()

    def _running_pods(self) -> dict[str, str]:
        pods = self.kubectl("get", "pods", "-n", self.namespace, "-l", f"shoal.dev/tier={self.tier}")["items"]
        return {
            p["metadata"]["name"]: p["status"]["podIP"]
            for p in pods
            if p["status"].get("phase") == "Running" and p["status"].get("podIP") and not p["metadata"].get("deletionTimestamp")
        }

    def _start(self, name: str, ip: str) -> None:
        engine = start_fake_engine(name=name, waiting=self.waiting)
        config = {
            "version": 1,
            "modelTier": self.tier,
            "localTier": self.tier,
            # The ladder as the operator renders it: the policy's order, smaller tiers first.
            "tiers": self.peers + [{"name": self.tier, "kind": "local", "url": engine.base_url, "model": "fake-model"}],
            "engine": {"metricsUrl": f"{engine.root}/metrics", "scrapeIntervalSeconds": 0.2},
        }
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(config))
        log = open(self.workdir / f"{name}.log", "wb")
        router = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli", "router", "--config", str(path), "--host", ip, "--port", str(SIDECAR_PORT)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        self.pods[name] = (engine, router, ip)

    def url(self) -> str:
        """Base URL of one running sidecar."""
        with self._lock:
            _, _, ip = next(iter(self.pods.values()))
        return f"http://{ip}:{SIDECAR_PORT}/v1"

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                running = self._running_pods()
                with self._lock:
                    if not self.enabled:
                        running = {}
                    for name in list(self.pods):
                        if name not in running:
                            self._drop(name)
                    for name, ip in running.items():
                        if name not in self.pods:
                            self._start(name, ip)
            except Exception as exc:  # noqa: BLE001 - reported by the test on failure
                self.errors.append(repr(exc))
            self._stop.wait(0.5)


def replicas(kubectl: Any, namespace: str, name: str) -> int:
    return kubectl("get", "deployment", name, "-n", namespace)["spec"]["replicas"]


def tier(kubectl: Any, namespace: str, name: str) -> dict[str, Any]:
    return kubectl("get", "modeltier", name, "-n", namespace)


def test_tier_scales_up_on_queue_depth_holds_when_metrics_vanish_and_scales_back_down(kubectl, namespace, running_operator, tmp_path):
    name = unique_name("auto")
    kubectl.run("apply", "-f", "-", input=tier_manifest(name, namespace, min_replicas=1, max_replicas=4))
    with PodSidecars(kubectl, namespace, name, tmp_path) as sidecars:
        wait_for(lambda: len(sidecars.pods) == 1, 120, "the first pod running with its sidecar")
        wait_for(
            lambda: (condition(tier(kubectl, namespace, name), "ScalingActive") or {}).get("reason") == "MetricsFresh",
            60, "ScalingActive=True with fresh metrics",
        )
        assert replicas(kubectl, namespace, name) == 1

        # A burst: 12 waiting on one pod is 3x its target of 4 -> panic, straight up.
        sidecars.set_waiting(12)
        wait_for(lambda: replicas(kubectl, namespace, name) >= 3, 60, "a scale-up to at least 3 replicas")
        wait_for(lambda: replicas(kubectl, namespace, name) == 4, 90, "the tier at replicas.max (4)")
        status = tier(kubectl, namespace, name)["status"]
        assert status["autoscaler"]["desiredReplicas"] == 4
        assert status["autoscaler"]["reason"] in {"AtMax", "Panic", "ScaleUp"}
        events = kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name},reason=ScaledUp")["items"]
        assert events, "a ScaledUp Event for the scale-up"
        messages = sorted(e["message"] for e in events)
        assert any(m.startswith("Scaled up from 1 to 3 replicas (Panic)") for m in messages), messages

        # The sidecars go silent: the size is held and ScalingActive says why.
        wait_for(lambda: len(sidecars.pods) == 4, 120, "four pods with sidecars")
        sidecars.set_waiting(0)
        sidecars.vanish()
        wait_for(
            lambda: (condition(tier(kubectl, namespace, name), "ScalingActive") or {}).get("reason") == "MetricsMissing",
            30, "ScalingActive=False MetricsMissing",
        )
        held_since = time.monotonic()
        while time.monotonic() - held_since < 15:  # more than two scale-down windows
            assert replicas(kubectl, namespace, name) == 4, "missing metrics must never shrink the tier"
            time.sleep(1)
        assert condition(tier(kubectl, namespace, name), "ScalingActive")["status"] == "False"

        # Metrics back with no load: one replica at a time, down to replicas.min.
        sidecars.restore()
        seen: list[int] = []

        def at_min() -> bool:
            seen.append(replicas(kubectl, namespace, name))
            return seen[-1] == 1

        wait_for(at_min, 180, "the tier back at replicas.min (1)", interval=0.5)
        steps = [b - a for a, b in zip(seen, seen[1:]) if b != a]
        assert all(step == -1 for step in steps), f"scale-down steps of one replica, saw sizes {seen}"
        down_events = kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name},reason=ScaledDown")["items"]
        assert len(down_events) >= 3
        assert sidecars.errors == [] or all("NotFound" in e for e in sidecars.errors)


def test_idle_tier_scales_to_zero_and_reports_it(kubectl, namespace, running_operator, tmp_path):
    name = unique_name("sleepy")
    kubectl.run("apply", "-f", "-", input=tier_manifest(name, namespace, min_replicas=0, max_replicas=2, idle_seconds=30))
    with PodSidecars(kubectl, namespace, name, tmp_path) as sidecars:
        wait_for(lambda: len(sidecars.pods) == 1, 120, "the first pod running with its sidecar")
        wait_for(lambda: replicas(kubectl, namespace, name) == 0, 120, "the idle tier scaled to zero")
        obj = wait_for(
            lambda: (t := tier(kubectl, namespace, name)) and (condition(t, "Ready") or {}).get("reason") == "ScaledToZero" and t,
            60, "Ready=True ScaledToZero",
        )
        assert condition(obj, "Ready")["status"] == "True"
        # Once at zero the autoscaler reports the tier asleep until a request arrives.
        assert obj["status"]["autoscaler"]["reason"] in {"ScaleToZero", "Asleep"}
        events = kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name},reason=ScaledDown")["items"]
        assert any(e["message"].startswith("Scaled down from 1 to 0 replicas (ScaleToZero)") for e in events), [e["message"] for e in events]


def test_sleeping_tier_wakes_on_the_first_spilled_request_and_the_entry_service_follows(kubectl, namespace, running_operator, tmp_path):
    import httpx

    small, large = unique_name("small"), unique_name("large")
    policy = {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "RoutePolicy",
        "metadata": {"name": "ladder", "namespace": namespace},
        "spec": {"tiers": [{"name": "small", "modelTierRef": {"name": small}}, {"name": "large", "modelTierRef": {"name": large}}]},
    }
    manifests = [yaml.safe_load(tier_manifest(small, namespace, min_replicas=0, max_replicas=2, idle_seconds=30)),
                 yaml.safe_load(tier_manifest(large, namespace, min_replicas=1, max_replicas=1)), policy]
    for m in manifests[:2]:
        m["spec"]["router"] = {"routePolicy": "ladder"}
    kubectl.run("apply", "-f", "-", input=yaml.safe_dump_all(manifests))

    def entry_selects() -> str:
        return kubectl("get", "service", "ladder-route", "-n", namespace)["spec"]["selector"]["shoal.dev/tier"]

    # large's sidecar routes like the real one: small first, itself next.
    # Nothing listens at the small tier's "Service": its sidecar cannot be reached, so the
    # large tier's sidecar takes it for asleep (router/peers.py) and spills over it.
    peer = [{"name": "small", "kind": "service", "url": "http://127.0.0.1:9/v1", "model": "fake-model"}]
    (tmp_path / "large").mkdir()
    (tmp_path / "small").mkdir()
    with PodSidecars(kubectl, namespace, large, tmp_path / "large", peers=peer) as large_pods, \
            PodSidecars(kubectl, namespace, small, tmp_path / "small"):
        wait_for(lambda: replicas(kubectl, namespace, small) == 0, 150, "the small tier asleep")
        wait_for(lambda: entry_selects() == large, 60, "the entry Service selecting the large tier's pods")
        wait_for(lambda: len(large_pods.pods) == 1, 60, "the large tier's sidecar")
        # The small tier's rung comes first in large's config: it is skipped (asleep), the
        # large tier answers, and the skip is counted for the small tier.
        response = httpx.post(f"{large_pods.url()}/chat/completions", json={"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        assert response.status_code == 200
        assert (response.headers["x-shoal-tier"], response.headers["x-shoal-route-reason"]) == (large, "spillover")
        wait_for(lambda: replicas(kubectl, namespace, small) >= 1, 60, "the small tier woken by the spilled request")
        status = tier(kubectl, namespace, small)["status"]["autoscaler"]
        # Awake: whatever the autoscaler says next (the new pod's sidecar may not answer
        # yet: MetricsMissing), it is not asleep; the WakeUp itself is the Event below.
        assert status["desiredReplicas"] >= 1 and status["reason"] not in {"Asleep", "ScaleToZero"}, status
        events = kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={small},reason=ScaledUp")["items"]
        assert any("(WakeUp)" in e["message"] for e in events), [e["message"] for e in events]
        wait_for(lambda: entry_selects() == small, 90, "the entry Service back on the small tier once it is ready")


def replica_changes(versions: list[dict[str, Any]], name: str) -> list[int]:
    """The Deployment `name`'s spec.replicas after each change among the watched versions."""
    sizes = [v["spec"]["replicas"] for v in versions if v["metadata"]["name"] == name]
    return [b for a, b in zip(sizes, sizes[1:]) if b != a]


def test_kubectl_scale_sets_a_floor_the_autoscaler_honours_and_the_size_when_autoscaling_is_off(kubectl, namespace, running_operator, tmp_path, tools):
    """One owner per mode: no tug of war between `kubectl scale` and the autoscaler."""
    idle, busy, fixed = unique_name("idle"), unique_name("busy"), unique_name("fixed")
    manifests = [yaml.safe_load(tier_manifest(n, namespace, min_replicas=1, max_replicas=4)) for n in (idle, busy, fixed)]
    manifests[2]["spec"]["autoscaling"]["engine"] = "none"
    kubectl.run("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    (tmp_path / "idle").mkdir()
    (tmp_path / "busy").mkdir()
    with PodSidecars(kubectl, namespace, idle, tmp_path / "idle") as idle_pods, \
            PodSidecars(kubectl, namespace, busy, tmp_path / "busy") as busy_pods:
        busy_pods.set_waiting(12)  # 12 waiting per pod: three times the target of 4
        wait_for(lambda: len(idle_pods.pods) == 1, 120, "the idle tier's first sidecar")
        wait_for(lambda: replicas(kubectl, namespace, busy) == 4, 120, "the busy tier at replicas.max (4)")
        kubectl.run("scale", "modeltier", idle, "-n", namespace, "--replicas=3")
        kubectl.run("scale", "modeltier", busy, "-n", namespace, "--replicas=2")
        kubectl.run("scale", "modeltier", fixed, "-n", namespace, "--replicas=3")
        # A floor above max is refused by the API server, naming the field.
        with pytest.raises(Exception) as refused:
            kubectl.run("scale", "modeltier", idle, "-n", namespace, "--replicas=9")
        assert "replicas.desired must lie between replicas.min and replicas.max" in str(getattr(refused.value, "stderr", refused.value))
        wait_for(lambda: replicas(kubectl, namespace, idle) == 3, 60, "the idle tier raised to its new floor (3)")
        wait_for(lambda: replicas(kubectl, namespace, fixed) == 3, 60, "the fixed tier at 3")
        wait_for(lambda: len(idle_pods.pods) == 3, 120, "three idle sidecars")
        argv = [str(tools.kubectl), f"--kubeconfig={kubectl.kubeconfig}", "get", "deployments", "-n", namespace, "-o", "json", "--watch"]
        with Watch(argv) as watch:
            wait_for(lambda: len(watch.objects) >= 3, 30, "the watch's first objects")
            start = len(watch.objects)
            time.sleep(60)  # the measurement window itself: every change in it is counted
            seen = list(watch.objects)[start:]
        changes = {n: replica_changes(seen, n) for n in (idle, busy, fixed)}
        assert changes == {idle: [], busy: [], fixed: []}, changes
        assert (replicas(kubectl, namespace, idle), replicas(kubectl, namespace, busy), replicas(kubectl, namespace, fixed)) == (3, 4, 3)
        status = tier(kubectl, namespace, idle)["status"]["autoscaler"]
        assert (status["desiredReplicas"], status["reason"]) == (3, "AtMin")
        assert "replicas.desired (the scale subresource) is 3" in status["message"]
        assert tier(kubectl, namespace, busy)["status"]["autoscaler"]["desiredReplicas"] == 4
        # The busy tier's load goes away: it shrinks to its floor (2), not to min (1).
        busy_pods.set_waiting(0)
        wait_for(lambda: replicas(kubectl, namespace, busy) == 2, 120, "the busy tier down to its floor (2)")
        assert idle_pods.errors == [] or all("NotFound" in e for e in idle_pods.errors)
