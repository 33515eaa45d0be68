"""The dev cluster's fleet: real processes behind the simulated Shoal pods, and localhost
URLs for the Shoal Services. Dev tooling only: a process of `shoal dev up`
(``python -m shoal.devcluster.fleet --state DIR``), never part of the operator.

Every ``POLL_SECONDS`` it lists, with the cluster admin's certificate, the Shoal pods, the
Shoal Services, the ModelTiers (for the engine annotation) and the
ConfigMaps and Secrets the pods mount, and then:

- **serving pods** (Running, with an IP): starts the router sidecar and the tier's engine
  (``podrun.plan_pod``; ``engines`` chooses the engine), rewrites their configuration files
  when the ConfigMap or a Secret changes (the router reloads it, as it does in a cluster),
  restarts a process that exited (as the kubelet restarts a container) and stops both when
  the pod goes away (scale-down, rollout, deletion);
- **evaluation pods**: runs the Job's ``shoal eval`` once against the tier's engine and
  hands its exit code and termination message to kwok (the pod annotations the
  ``shoal-job-pod-exit`` Stage reads), so the Job completes as the real program decided;
- **Services**: one ``forward.Forwarder`` per Shoal Service on 127.0.0.1, following its
  ready endpoints (the ready pods its selector picks).

What it runs and where it listens is written to ``<state>/fleet.json`` (``shoal dev up``
and ``shoal dev status`` print it). Processes are started through ``processes`` (own
process group, log under ``logs/pods/``, pid under ``pids/pods/``), so `shoal dev down`
stops them even if this process died.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from shoal.api.naming import POLICY_LABEL, TIER_LABEL
from shoal.devcluster import processes
from shoal.devcluster.cluster import FLEET, ControlPlane
from shoal.devcluster.engines import Engine, choose, parse_engines
from shoal.devcluster.engines.llama import LlamaServerUnavailable, require_llama_server
from shoal.devcluster.forward import Forwarder
from shoal.devcluster.nodes import default_nodes_text
from shoal.devcluster.podrun import CannotRun, Objects, PodPlan, plan_pod, pod_kind
from shoal.devcluster.stages import (
    SIMULATE_EXIT_CODE_ANNOTATION,
    SIMULATE_HOLD_ANNOTATION,
    SIMULATE_TERMINATION_MESSAGE_ANNOTATION,
)

log = logging.getLogger("shoal.devcluster.fleet")

STATUS_FILE = "fleet.json"
POLL_SECONDS = 1.0
RESTART_BACKOFF_SECONDS = 5.0
SHOAL_SELECTOR = "app.kubernetes.io/managed-by=shoal"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# The kubelet caps a termination message at 4096 bytes; so does the fleet.
MAX_TERMINATION_MESSAGE = 4096


def status_path(state: Path) -> Path:
    return state / STATUS_FILE


def read_status(state: Path) -> dict[str, Any]:
    """What the running fleet last wrote (services with URLs, pods), or {}."""
    try:
        return json.loads(status_path(state).read_text())
    except (OSError, ValueError):
        return {}


def load_engines(nodes_file: Path | None) -> list[Engine]:
    """The engines section of the node file; the packaged default's when it has none."""
    engines = parse_engines(nodes_file.read_text()) if nodes_file else []
    return engines or parse_engines(default_nodes_text())


class Api:
    """The few API calls the fleet makes, as the cluster admin (client certificate)."""

    def __init__(self, cluster: ControlPlane) -> None:
        self.server = cluster.server
        context = ssl.create_default_context(cafile=str(cluster.pki.ca_cert))
        context.load_cert_chain(str(cluster.pki.client_cert("admin")), str(cluster.pki.client_key("admin")))
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                             timeout=aiohttp.ClientTimeout(total=20))

    async def list(self, path: str, selector: str | None = None) -> list[dict[str, Any]]:
        url = self.server + path + (f"?labelSelector={quote(selector)}" if selector else "")
        async with self.session.get(url) as response:
            if response.status == 404:
                return []  # a CRD not installed (yet)
            response.raise_for_status()
            return list((await response.json()).get("items") or [])

    async def annotate(self, namespace: str, pod: str, annotations: Mapping[str, str]) -> None:
        url = f"{self.server}/api/v1/namespaces/{namespace}/pods/{pod}"
        body = json.dumps({"metadata": {"annotations": dict(annotations)}})
        async with self.session.patch(url, data=body, headers={"Content-Type": "application/merge-patch+json"}) as r:
            if r.status != 404:
                r.raise_for_status()

    async def close(self) -> None:
        await self.session.close()


@dataclasses.dataclass
class Snapshot:
    pods: list[dict[str, Any]]
    services: list[dict[str, Any]]
    tiers: dict[tuple[str, str], dict[str, Any]]
    objects: Objects


@dataclasses.dataclass
class PodRun:
    namespace: str
    name: str
    kind: str
    ip: str
    engine: str
    workdir: Path
    plan: PodPlan
    started: dict[str, float] = dataclasses.field(default_factory=dict)  # process name -> time
    eval_process: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] | None = None

    def process_name(self, role: str) -> str:
        return f"pods/{self.namespace}.{self.name}.{role}"


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def ready_endpoints(service: Mapping[str, Any], pods: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(pod IP, target port) of every ready pod the Service selects, for its first port.

    Computed from the pods as the endpoints controller does, because the API server
    refuses loopback addresses in Endpoints and EndpointSlices, and the dev cluster's pod
    IPs are loopback addresses.
    """
    namespace = service["metadata"].get("namespace")
    spec = service.get("spec") or {}
    selector = spec.get("selector") or {}
    ports = spec.get("ports") or []
    if not selector or not ports:
        return []
    target = ports[0].get("targetPort", ports[0].get("port"))
    backends = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        labels = meta.get("labels") or {}
        if meta.get("namespace") != namespace or any(labels.get(k) != v for k, v in selector.items()):
            continue
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP") or not ready:
            continue
        if isinstance(target, int):
            number: int | None = target
        else:
            number = next((p["containerPort"] for c in pod["spec"].get("containers") or []
                           for p in c.get("ports") or [] if p.get("name") == target), None)
        if number is not None:
            backends.append((status["podIP"], int(number)))
    return backends


class Fleet:
    def __init__(self, cluster: ControlPlane, engines: list[Engine], python: str = sys.executable) -> None:
        self.cluster = cluster
        self.state = cluster.state
        self.engines = engines
        self.python = python
        self.api = Api(cluster)
        self.forwarders: dict[tuple[str, str], Forwarder] = {}
        self.runs: dict[str, PodRun] = {}  # pod uid -> what runs for it
        self.problems: dict[str, str] = {}  # pod uid -> why it runs nothing
        self.finished: dict[str, dict[str, Any]] = {}  # evaluation pod uid -> result
        self._status = ""
        # Checked once: a tier mapped to SmolLM2 without the model installed says so in
        # the status instead of restarting an engine that cannot start.
        try:
            require_llama_server()
            self.smollm2_missing: str | None = None
        except LlamaServerUnavailable as error:
            self.smollm2_missing = str(error)

    # -- observing -----------------------------------------------------------------------

    async def observe(self) -> Snapshot:
        pods, services, tiers = await asyncio.gather(
            self.api.list("/api/v1/pods", SHOAL_SELECTOR),
            self.api.list("/api/v1/services", SHOAL_SELECTOR),
            self.api.list("/apis/shoal.dev/v1alpha1/modeltiers"),
        )
        namespaces = sorted({p["metadata"]["namespace"] for p in pods})
        config_maps: dict[tuple[str, str], dict[str, str]] = {}
        secrets: dict[tuple[str, str], dict[str, str]] = {}
        for namespace in namespaces:
            cms, sec = await asyncio.gather(self.api.list(f"/api/v1/namespaces/{namespace}/configmaps"),
                                            self.api.list(f"/api/v1/namespaces/{namespace}/secrets"))
            config_maps.update({_key(c): c.get("data") or {} for c in cms})
            secrets.update({_key(s): s.get("data") or {} for s in sec})
        return Snapshot(pods, services, {_key(t): t for t in tiers}, Objects(config_maps, secrets))

    # -- services --------------------------------------------------------------------------

    def service_url(self, namespace: str, name: str) -> str:
        """The local URL of a Service's forwarder, bound now if it is new (so a router
        configuration can point at a tier whose Service does not exist yet)."""
        key = (namespace, name)
        if key not in self.forwarders:
            forwarder = Forwarder(f"{namespace}/{name}")
            forwarder.bind()
            self.forwarders[key] = forwarder
        return self.forwarders[key].url

    async def reconcile_services(self, snapshot: Snapshot) -> None:
        seen = set()
        for service in snapshot.services:
            key = _key(service)
            seen.add(key)
            self.service_url(*key)
            self.forwarders[key].set_backends(ready_endpoints(service, snapshot.pods))
            self.forwarders[key].labels = service["metadata"].get("labels") or {}
        for key, forwarder in self.forwarders.items():
            if key not in seen:
                forwarder.set_backends(())
            await forwarder.serve()

    # -- pods ----------------------------------------------------------------------------

    def engine_for(self, pod: Mapping[str, Any], snapshot: Snapshot) -> Engine | None:
        namespace = pod["metadata"]["namespace"]
        tier = pod["metadata"]["labels"][TIER_LABEL]
        annotations = (snapshot.tiers.get((namespace, tier)) or {}).get("metadata", {}).get("annotations") or {}
        product = (pod["spec"].get("nodeSelector") or {}).get(GPU_PRODUCT_LABEL)
        return choose(self.engines, tier=tier, namespace=namespace, gpu_product=product,
                      tier_annotations=annotations)

    def _wanted(self, pod: Mapping[str, Any]) -> bool:
        kind = pod_kind(pod)
        meta, status = pod["metadata"], pod.get("status") or {}
        if kind is None or meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
            return False
        if kind == "evaluation":
            annotations = meta.get("annotations") or {}
            # A test (or a user) asked kwok to simulate the outcome: nothing to run.
            if SIMULATE_EXIT_CODE_ANNOTATION in annotations or SIMULATE_HOLD_ANNOTATION in annotations:
                return False
        return True

    async def reconcile_pods(self, snapshot: Snapshot) -> None:
        wanted = {p["metadata"]["uid"]: p for p in snapshot.pods if self._wanted(p)}
        for uid in [u for u in self.runs if u not in wanted]:
            await self.stop_run(self.runs.pop(uid))
        for uid in [u for u in self.problems if u not in wanted]:
            del self.problems[uid]
        for uid, pod in wanted.items():
            if uid in self.finished:
                continue
            engine = self.engine_for(pod, snapshot)
            run = self.runs.get(uid)
            workdir = self.state / "pods" / f"{pod['metadata']['namespace']}.{pod['metadata']['name']}"
            try:
                if engine is not None and engine.kind == "smollm2" and self.smollm2_missing:
                    raise CannotRun(self.smollm2_missing)
                plan = plan_pod(pod, snapshot.objects, engine=engine, workdir=workdir,
                                service_url=self.service_url, python=self.python)
            except CannotRun as error:
                problem = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}: {error}"
                if self.problems.get(uid) != problem:
                    log.warning("pod %s", problem)
                self.problems[uid] = problem
                continue
            self.problems.pop(uid, None)
            assert engine is not None
            if run is None:
                run = PodRun(pod["metadata"]["namespace"], pod["metadata"]["name"], plan.kind, plan.ip,
                             engine.name, workdir, plan)
                self.runs[uid] = run
                _write_files(plan, initial=True)
            elif plan.files != run.plan.files:
                _write_files(plan, initial=False)
                run.plan = plan
            if plan.kind == "serving":
                self.keep_running(run)
            else:
                await self.evaluate(uid, run, pod)

    def keep_running(self, run: PodRun) -> None:
        now = time.monotonic()
        for process in run.plan.processes:
            name = run.process_name(process.role)
            if processes.is_running(self.state, name):
                continue
            if now - run.started.get(name, -1e9) < RESTART_BACKOFF_SECONDS:
                continue
            if name in run.started:
                log.warning("%s exited; restarting it. Last lines:\n%s", name, processes.log_tail(self.state, name, 10))
            processes.start(self.state, name, process.argv, env={**os.environ, **process.env}, cwd=run.workdir)
            run.started[name] = now
            log.info("started %s for pod %s/%s on %s", process.role, run.namespace, run.name, run.ip)

    async def evaluate(self, uid: str, run: PodRun, pod: Mapping[str, Any]) -> None:
        """Run the Job's program once; when it exits, hand its outcome to kwok."""
        name = run.process_name("eval")
        if run.eval_process is None:
            process = run.plan.processes[0]
            run.eval_process = processes.start(self.state, name, process.argv,
                                               env={**os.environ, **process.env}, cwd=run.workdir)
            log.info("running the evaluation of pod %s/%s", run.namespace, run.name)
            return
        code = run.eval_process.poll()
        if code is None:
            return
        message = ""
        if run.plan.termination_log is not None:
            with contextlib.suppress(OSError):
                message = run.plan.termination_log.read_text(errors="replace")[:MAX_TERMINATION_MESSAGE]
        if not message:
            # terminationMessagePolicy FallbackToLogsOnError: the log's tail.
            message = processes.log_tail(self.state, name, 20)[-MAX_TERMINATION_MESSAGE:]
        await self.api.annotate(run.namespace, run.name, {
            SIMULATE_EXIT_CODE_ANNOTATION: str(code),
            SIMULATE_TERMINATION_MESSAGE_ANNOTATION: message,
        })
        run.result = {"exitCode": code, "message": message[:300]}
        self.finished[uid] = {"namespace": run.namespace, "name": run.name, **run.result}
        processes.pid_path(self.state, name).unlink(missing_ok=True)
        self.runs.pop(uid, None)
        log.info("evaluation pod %s/%s exited with %s", run.namespace, run.name, code)

    async def stop_run(self, run: PodRun) -> None:
        names = [run.process_name(p.role) for p in run.plan.processes]
        await asyncio.gather(*(asyncio.to_thread(processes.stop, self.state, n, grace_s=5.0) for n in names))
        shutil.rmtree(run.workdir, ignore_errors=True)
        log.info("stopped the processes of pod %s/%s", run.namespace, run.name)

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        services = []
        for (namespace, name), forwarder in sorted(self.forwarders.items()):
            labels = forwarder.labels
            kind = "RoutePolicy" if POLICY_LABEL in labels else "ModelTier" if TIER_LABEL in labels else "Service"
            owner = labels.get(POLICY_LABEL) or labels.get(TIER_LABEL) or name
            services.append({"namespace": namespace, "name": name, "kind": kind, "owner": owner,
                             "url": forwarder.url + "/v1", "backends": len(forwarder.backends)})
        pods = []
        for run in sorted(self.runs.values(), key=lambda r: (r.namespace, r.name)):
            pids = {p.role: processes.running_pid(self.state, run.process_name(p.role)) for p in run.plan.processes}
            pods.append({"namespace": run.namespace, "name": run.name, "kind": run.kind, "ip": run.ip,
                         "engine": run.engine, "pids": pids,
                         "logs": {r: str(processes.log_path(self.state, run.process_name(r))) for r in pids}})
        return {"pid": os.getpid(), "services": services, "pods": pods,
                "evaluations": list(self.finished.values()),
                "problems": sorted(self.problems.values())}

    def write_status(self) -> None:
        text = json.dumps(self.status(), indent=2, sort_keys=True)
        if text != self._status:
            tmp = status_path(self.state).with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(status_path(self.state))
            self._status = text

    # -- running -------------------------------------------------------------------------

    async def step(self) -> None:
        snapshot = await self.observe()
        await self.reconcile_services(snapshot)
        await self.reconcile_pods(snapshot)
        self.write_status()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self.step()
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
                    log.warning("the apiserver did not answer: %s", error)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_SECONDS)
        finally:
            await asyncio.gather(*(self.stop_run(r) for r in list(self.runs.values())))
            self.runs.clear()
            for forwarder in self.forwarders.values():
                await forwarder.close()
            await self.api.close()
            status_path(self.state).unlink(missing_ok=True)


def _write_files(plan: PodPlan, *, initial: bool) -> None:
    """Write the pod's volumes; each file replaced atomically, so a reader sees old or new."""
    if initial:
        shutil.rmtree(plan.directories[0], ignore_errors=True)
    for directory in plan.directories:
        directory.mkdir(parents=True, exist_ok=True)
    for path, (content, mode) in plan.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.chmod(tmp, mode)
        tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.devcluster.fleet")
    parser.add_argument("--state", type=Path, required=True, help="the cluster's state directory")
    parser.add_argument("--name", default="shoal")
    parser.add_argument("--nodes", type=Path, default=None, help="node file whose engines section to use")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cluster = ControlPlane(args.state, name=args.name)
    engines = load_engines(args.nodes)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Fleet(cluster, engines).run(stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
