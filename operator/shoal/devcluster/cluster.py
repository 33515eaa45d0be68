"""The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and kwok, as real processes on loopback, with all state in one directory.

Layout of a cluster's state directory::

    cluster.json          ports, versions, paths; written once the cluster is up
    kubeconfig            admin (system:masters) kubeconfig
    kubeconfigs/          one kubeconfig per component (and the operator's, with a token)
    pki/                  CA, serving and client certificates, service-account key
    etcd/                 etcd's data
    audit/                audit policy and the audit log (the operator's requests)
    logs/<component>.log  each component's output
    pids/<component>.json each running component's pid and start time

``start`` always begins from an empty directory: a development cluster is cheap to make
and a stale one is a source of confusing failures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import random
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from shoal.devcluster import pki, processes
from shoal.devcluster.build import (
    ETCD_VERSION,
    KUBERNETES_VERSION,
    KWOK_VERSION,
    Binaries,
    Progress,
    stderr_progress,
    cache_dir,
)
from shoal.devcluster.kubectl import Kubectl, KubectlError
from shoal.devcluster.nodes import KWOK_ANNOTATION, KWOK_ANNOTATION_VALUE, NodeGroup, node_manifests
from shoal.devcluster.stages import kwok_config
from shoal.devcluster.tools import Tools

# Room for 65,534 cluster IPs. Its size does not change how fast a Service is created: the
# API server (1.33 and later: one IPAddress object per cluster IP, the only allocator in
# 1.34) picks a random free address from its cache, so a wider or narrower range costs the
# same. What makes Service creation slow under load is that the API server allocates one
# cluster IP at a time: it holds one lock while it creates the IPAddress object (a full
# request to itself, through etcd) and counts every allocated address twice for its
# metrics, so N Services cost N such round trips one after the other, each a little
# longer as N grows. Measured here with little else running: 4-13 ms per Service
# (ConfigMaps: 2-3 ms, in parallel); under a load average of 8 on 2 cores, 23 ms. No flag
# changes this (MultiCIDRServiceAllocator is locked on in 1.34; DisableAllocatorDualWrite
# =false only adds the old bitmap write in front of it). The operator therefore sends its
# Service applies in a lane of their own (controller/reconcilers.py), and a production
# cluster, with the API server on its own cores, creates a thousand tiers' Services in
# about ten seconds.
SERVICE_CIDR = "10.96.0.0/16"
# Simulated pods get loopback addresses: everything that connects to a pod IP (the
# operator scraping a sidecar's /metrics, a test's fake engine standing in for a pod)
# stays on this machine, and a fake engine bound to a pod's IP answers for that pod.
# Each cluster draws its own /16 inside 127.0.0.0/8 (recorded in cluster.json), so two
# clusters on one machine (a dev cluster beside a test run) never hand out the same pod IP;
# a /16 leaves room for thousands of pods.
POD_CIDR_SECOND_OCTETS = range(100, 250)


def pick_pod_cidr() -> str:
    return f"127.{random.choice(POD_CIDR_SECOND_OCTETS)}.0.0/16"

OPERATOR_USER = "system:serviceaccount:shoal-system:shoal"

# Start order; stopped in reverse. The operator is started later by `shoal dev up`.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
OPERATOR = "operator"
# `shoal dev up`'s processes behind the simulated pods (fleet.py); pods/<ns>.<pod>.<role>.
FLEET = "fleet"
POD_PROCESSES = "pods"

T = TypeVar("T")


class ClusterError(Exception):
    """The cluster could not be started or used; the message says which part and why."""


class ComponentFailed(ClusterError):
    """A component did not become ready in time (or exited); carries its log's tail."""


def default_state_dir(name: str) -> Path:
    return cache_dir() / "clusters" / name


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Client rate of kube-controller-manager and kube-scheduler, in requests per second (and
# the burst above it). Their defaults (20/30 per controller, 50/100 for the scheduler)
# are sized for a shared production API server; here they were the cap on how fast a
# large apply turns into ready pods: 1,000 ModelTiers mean about 1,000 ReplicaSets,
# 1,000 pods, 1,000 bindings and 3,000-4,000 status updates, spread over the Deployment,
# ReplicaSet and EndpointSlice controllers and the scheduler, i.e. 50-200 seconds each at
# the default rates before the API server does any work. At 500 per second the same
# work is queued in a few seconds and the API server's own speed is what remains. A
# production cluster keeps its provider's settings (often the defaults): there, expect
# pods for a large batch of tiers to appear at about 20 ReplicaSets and 20 pods per
# second, however fast the operator writes the Deployments.
CONTROL_PLANE_CLIENT_QPS = 500
CONTROL_PLANE_CLIENT_BURST = 1000
# Workers per controller of kube-controller-manager (defaults: 5 each). A worker holds
# one object while its requests are in flight, so with the API server's latency at
# 0.5-1 s on a loaded machine five workers create at most 5-10 ReplicaSets or pods per
# second whatever the client rate; 50 keep enough requests in flight.
CONTROLLER_CONCURRENCY = {
    "concurrent-deployment-syncs": 50,
    "concurrent-replicaset-syncs": 50,
    "concurrent-service-endpoint-syncs": 20,
}


def controller_manager_tuning() -> list[str]:
    """kube-controller-manager's rate and concurrency flags (see the constants above)."""
    return [
        f"--kube-api-qps={CONTROL_PLANE_CLIENT_QPS}",
        f"--kube-api-burst={CONTROL_PLANE_CLIENT_BURST}",
        *(f"--{flag}={value}" for flag, value in CONTROLLER_CONCURRENCY.items()),
    ]


def scheduler_config(kubeconfig: Path) -> dict[str, Any]:
    """kube-scheduler's configuration file: its client (with the raised rate) and no
    leader election. The scheduler's --kube-api-qps and --kubeconfig flags are
    deprecated in favour of this file, and ignored once a file is given."""
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {
            "kubeconfig": str(kubeconfig),
            "qps": CONTROL_PLANE_CLIENT_QPS,
            "burst": CONTROL_PLANE_CLIENT_BURST,
        },
        "leaderElection": {"leaderElect": False},
    }


def audit_policy() -> dict[str, Any]:
    """Log every request of the operator's service account at Metadata level, nothing else.

    Tests count the operator's writes from this log (a steady state must have none), so
    the policy is narrow enough that the log stays small.
    """
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [
            {"level": "Metadata", "users": [OPERATOR_USER]},
            {"level": "None"},
        ],
    }


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.25,
    alive: Callable[[], str | None] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; fail with the last value seen.

    ``alive`` returns an error message when the thing being waited on has died, so a
    crashed component fails at once instead of at the deadline.
    """
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = check()
        except Exception as error:  # noqa: BLE001 - kept as the last value seen
            value, last = None, error
        else:
            last = value
        if value:
            return value
        if alive is not None and (dead := alive()):
            raise ComponentFailed(dead)
        if time.monotonic() >= deadline:
            raise ComponentFailed(f"timed out after {timeout_s:.0f}s waiting for {what}; "
                                  f"last seen: {last!r}")
        time.sleep(interval_s)


@dataclasses.dataclass
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick(cls) -> Ports:
        picked: set[int] = set()
        values = []
        for _ in dataclasses.fields(cls):
            port = free_port()
            while port in picked:
                port = free_port()
            picked.add(port)
            values.append(port)
        return cls(*values)


class ControlPlane:
    """One local cluster, identified by its state directory."""

    def __init__(self, state: Path, name: str = "shoal") -> None:
        self.state = state
        self.name = name
        self.pki = pki.Pki(state / "pki")

    # -- paths -------------------------------------------------------------------------

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def info_path(self) -> Path:
        return self.state / "cluster.json"

    @property
    def audit_log(self) -> Path:
        return self.state / "audit" / "audit.log"

    def component_kubeconfig(self, component: str) -> Path:
        return self.state / "kubeconfigs" / f"{component}.yaml"

    def info(self) -> dict[str, Any]:
        try:
            return json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def server(self) -> str:
        server = self.info().get("server")
        if not server:
            raise ClusterError(f"no cluster is recorded in {self.state}; run `shoal dev up`")
        return str(server)

    def kubectl(self, tools: Tools) -> Kubectl:
        return Kubectl(tools.kubectl, self.admin_kubeconfig)

    # -- lifecycle ---------------------------------------------------------------------

    def running_components(self) -> list[str]:
        return [c for c in (*COMPONENTS, OPERATOR, FLEET) if processes.is_running(self.state, c)]

    def start(
        self,
        binaries: Binaries,
        tools: Tools,
        nodes: list[NodeGroup],
        progress: Progress = stderr_progress,
        timeout_s: float = 180.0,
        *,
        hold_evaluation_pods: bool = False,
    ) -> dict[str, Any]:
        """Start every component from an empty state directory and wait until the cluster
        is usable: all components healthy, every node Ready, the ``default``
        ServiceAccount present. Returns the recorded cluster info (with timings).

        ``hold_evaluation_pods``: kwok leaves evaluation Job pods Running instead of
        completing them (the fleet of `shoal dev up` runs their program and finishes them).

        On any failure everything started so far is stopped again. Ports are picked free
        just before use; if another process takes one in between, the start is retried
        with new ports.
        """
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(binaries, tools, nodes, progress, timeout_s,
                                        hold_evaluation_pods)
            except ComponentFailed as error:
                if "address already in use" not in str(error) or attempt == attempts:
                    raise
                progress("a port was taken by another process meanwhile; retrying with new ports")
        raise AssertionError("unreachable")

    def _start_once(self, binaries: Binaries, tools: Tools, nodes: list[NodeGroup],
                    progress: Progress, timeout_s: float,
                    hold_evaluation_pods: bool = False) -> dict[str, Any]:
        if self.running_components():
            raise ClusterError(
                f"cluster {self.name!r} is already running ({', '.join(self.running_components())}); "
                "run `shoal dev down` first"
            )
        started = time.monotonic()
        if self.state.exists():
            self._check_wipeable()
            shutil.rmtree(self.state)
        for sub in ("kubeconfigs", "etcd", "audit", "logs", "pids"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        ports = Ports.pick()
        pod_cidr = pick_pod_cidr()
        server = f"https://127.0.0.1:{ports.apiserver}"
        pki.generate(self.pki.dir, SERVICE_CIDR)
        self._write_kubeconfigs(server)
        try:
            self._start_etcd(binaries, ports, progress, timeout_s)
            self._start_apiserver(binaries, ports, server, progress, timeout_s)
            self._start_controllers(binaries, ports, progress, timeout_s)
            self._start_kwok(binaries, ports, pod_cidr, hold_evaluation_pods)
            kubectl = self.kubectl(tools)
            progress(f"creating {sum(g.count for g in nodes)} simulated nodes")
            manifests = node_manifests(nodes)
            if manifests:
                kubectl.apply(manifests)
            self._wait_nodes_ready(kubectl, [m["metadata"]["name"] for m in manifests], timeout_s)
            wait_until(
                lambda: kubectl.json("get", "serviceaccount", "default", "-n", "default"),
                timeout_s=timeout_s, what="the default ServiceAccount",
                alive=self._dead_component,
            )
        except BaseException:
            self.stop(progress=lambda _m: None)
            raise
        info = {
            "name": self.name,
            "server": server,
            "kubeconfig": str(self.admin_kubeconfig),
            "ports": dataclasses.asdict(ports),
            "podCIDR": pod_cidr,
            "versions": {"kubernetes": KUBERNETES_VERSION, "etcd": ETCD_VERSION,
                         "kwok": KWOK_VERSION},
            "nodes": [m["metadata"]["name"] for m in manifests],
            "startSeconds": round(time.monotonic() - started, 1),
            "startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.info_path.write_text(json.dumps(info, indent=2))
        progress(f"cluster {self.name!r} is up in {info['startSeconds']}s: {server}")
        return info

    def _check_wipeable(self) -> None:
        """Refuse to delete a directory that is not (or not only) a cluster's state."""
        ours = {"cluster.json", "kubeconfig", "kubeconfigs", "pki", "etcd", "audit", "logs",
                "pids", "kwok.yaml", "pods", "fleet.json", "fleet.tmp"}
        entries = {p.name for p in self.state.iterdir()}
        if entries - ours:
            raise ClusterError(
                f"refusing to reuse {self.state}: it holds files that are not a cluster's "
                f"state ({', '.join(sorted(entries - ours)[:3])}); choose another --state-dir"
            )

    def stop(self, progress: Progress = stderr_progress) -> list[str]:
        """Stop the operator and every component (reverse start order); nothing orphaned."""
        stopped = []
        for component in (FLEET, OPERATOR, *reversed(COMPONENTS)):
            if processes.stop(self.state, component):
                stopped.append(component)
                progress(f"stopped {component}")
            if component == FLEET:
                # The fleet stops its pods' processes; these are what it left if it died.
                for name in stop_pod_processes(self.state):
                    stopped.append(name)
        return stopped

    # -- components --------------------------------------------------------------------

    def _dead_component(self) -> str | None:
        """A message for the first started component that has exited, with its log."""
        for component in COMPONENTS:
            record = processes.recorded(self.state, component)
            if record is not None and not processes.is_running(self.state, component):
                return (f"{component} exited; last lines of "
                        f"{processes.log_path(self.state, component)}:\n"
                        f"{processes.log_tail(self.state, component)}")
        return None

    def _wait_healthy(self, component: str, url: str, timeout_s: float,
                      context: ssl.SSLContext | None) -> None:
        def check() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:
                    return response.status == 200
            except (urllib.error.URLError, OSError):
                return False

        try:
            wait_until(check, timeout_s=timeout_s, what=f"{component} at {url}",
                       alive=self._dead_component)
        except ComponentFailed as error:
            raise ComponentFailed(
                f"{component} did not become ready: {error}\nlast lines of its log "
                f"({processes.log_path(self.state, component)}):\n"
                f"{processes.log_tail(self.state, component)}"
            ) from None

    def _start_etcd(self, binaries: Binaries, ports: Ports, progress: Progress,
                    timeout_s: float) -> None:
        progress(f"starting etcd {ETCD_VERSION}")
        client = f"http://127.0.0.1:{ports.etcd_client}"
        peer = f"http://127.0.0.1:{ports.etcd_peer}"
        processes.start(self.state, "etcd", [
            str(binaries.etcd),
            "--name=shoal-dev",
            f"--data-dir={self.state / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=shoal-dev={peer}",
            # A development cluster is disposable; fsync would only slow every write.
            "--unsafe-no-fsync",
            "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ])
        self._wait_healthy("etcd", f"{client}/health", timeout_s, None)

    def _start_apiserver(self, binaries: Binaries, ports: Ports, server: str,
                         progress: Progress, timeout_s: float) -> None:
        progress(f"starting kube-apiserver {KUBERNETES_VERSION} on {server}")
        policy = self.state / "audit" / "policy.yaml"
        policy.write_text(yaml.safe_dump(audit_policy(), sort_keys=False))
        p = self.pki
        processes.start(self.state, "kube-apiserver", [
            str(binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports.apiserver}",
            f"--tls-cert-file={p.apiserver_cert}",
            f"--tls-private-key-file={p.apiserver_key}",
            f"--client-ca-file={p.ca_cert}",
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.service_account_pub}",
            f"--service-account-signing-key-file={p.service_account_key}",
            # Admission plugins are left at their defaults (PodSecurity included), so the
            # cluster admits and rejects pods as a real one does.
            # --max-requests-inflight / --max-mutating-requests-inflight stay at their
            # defaults (400 / 200): with API Priority and Fairness on, they only size the
            # server's 600 seats, of which service accounts' requests (the operator's
            # and the controllers') may use about 250; the operator sends at most 64 at a
            # time (kube/client.py), so neither limit is what a large apply waits on.
            # The audit policy logs the operator's requests alone, at Metadata level (no
            # bodies): one short line per request, synchronously ("blocking") so a test
            # reads a request's line as soon as the request returned. Every other client,
            # the controllers and the API server's own requests included, is not logged.
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ])
        context = ssl.create_default_context(cafile=str(p.ca_cert))
        context.load_cert_chain(str(p.client_cert("admin")), str(p.client_key("admin")))
        self._wait_healthy("kube-apiserver", f"{server}/readyz", timeout_s, context)

    def _start_controllers(self, binaries: Binaries, ports: Ports, progress: Progress,
                           timeout_s: float) -> None:
        p = self.pki
        progress("starting kube-controller-manager and kube-scheduler")
        processes.start(self.state, "kube-controller-manager", [
            str(binaries.kube_controller_manager),
            f"--kubeconfig={self.component_kubeconfig('controller-manager')}",
            f"--authentication-kubeconfig={self.component_kubeconfig('controller-manager')}",
            f"--authorization-kubeconfig={self.component_kubeconfig('controller-manager')}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.controller_manager}",
            "--leader-elect=false",
            f"--service-account-private-key-file={p.service_account_key}",
            f"--root-ca-file={p.ca_cert}",
            f"--cluster-signing-cert-file={p.ca_cert}",
            f"--cluster-signing-key-file={p.ca_key}",
            # Each controller acts as its own service account, as kubeadm clusters run it,
            # so the built-in controller roles are exercised.
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
            *controller_manager_tuning(),
            "--v=1",
        ])
        config = self.state / "kubeconfigs" / "scheduler-config.yaml"
        config.write_text(yaml.safe_dump(scheduler_config(self.component_kubeconfig("scheduler")),
                                         sort_keys=False))
        processes.start(self.state, "kube-scheduler", [
            str(binaries.kube_scheduler),
            f"--config={config}",
            f"--authentication-kubeconfig={self.component_kubeconfig('scheduler')}",
            f"--authorization-kubeconfig={self.component_kubeconfig('scheduler')}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.scheduler}",
            "--v=1",
        ])
        # Their serving certificates are self-signed and made up at start; health
        # endpoints on loopback are checked without verifying them.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait_healthy("kube-controller-manager",
                           f"https://127.0.0.1:{ports.controller_manager}/healthz",
                           timeout_s, insecure)
        self._wait_healthy("kube-scheduler", f"https://127.0.0.1:{ports.scheduler}/healthz",
                           timeout_s, insecure)

    def _start_kwok(self, binaries: Binaries, ports: Ports, pod_cidr: str,
                    hold_evaluation_pods: bool = False) -> None:
        # kwok has no built-in behaviour: its Stages (nodes heartbeat, bound pods become
        # Ready, Job pods complete) come from the configuration built beside the binary,
        # plus Shoal's own (stages/).
        # Passing it explicitly also keeps a ~/.kwok/kwok.yaml from changing anything.
        config = self.state / "kwok.yaml"
        config.write_text(kwok_config(binaries.kwok_stages.read_text(),
                                      hold_evaluation_pods=hold_evaluation_pods))
        processes.start(self.state, "kwok", [
            str(binaries.kwok),
            f"--config={config}",
            f"--kubeconfig={self.component_kubeconfig('kwok')}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}",
            f"--cidr={pod_cidr}",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{ports.kwok}",
        ])

    def _wait_nodes_ready(self, kubectl: Kubectl, names: list[str], timeout_s: float) -> None:
        def not_ready() -> list[str]:
            listed = kubectl.json("get", "nodes")
            # Ready as kwok reports it, and schedulable: the node lifecycle controller has
            # removed the not-ready taint that every new node starts with.
            ready = {
                n["metadata"]["name"]
                for n in listed["items"]
                if any(c["type"] == "Ready" and c["status"] == "True"
                       for c in n.get("status", {}).get("conditions", []))
                and not any(t.get("key", "").startswith("node.kubernetes.io/")
                            for t in n.get("spec", {}).get("taints", []))
            }
            return [n for n in names if n not in ready]

        def check() -> bool | None:
            return True if not not_ready() else None

        try:
            wait_until(check, timeout_s=timeout_s, what="every node to be Ready",
                       alive=self._dead_component)
        except ComponentFailed as error:
            with contextlib.suppress(KubectlError):
                error = ComponentFailed(f"{error}; not ready: {', '.join(not_ready())}")
            raise ComponentFailed(
                f"{error}\nlast lines of the kwok log:\n{processes.log_tail(self.state, 'kwok')}"
            ) from None

    def _write_kubeconfigs(self, server: str) -> None:
        for identity in pki.CLIENTS:
            config = pki.kubeconfig(
                server, self.pki.ca_cert, identity.user,
                client_cert=self.pki.client_cert(identity.file_stem),
                client_key=self.pki.client_key(identity.file_stem),
                cluster_name=self.name,
            )
            path = (self.admin_kubeconfig if identity.file_stem == "admin"
                    else self.component_kubeconfig(identity.file_stem))
            pki.write_kubeconfig(path, config)

    def write_token_kubeconfig(self, component: str, user: str, token: str,
                               namespace: str | None = None) -> Path:
        """A kubeconfig that authenticates with a bearer token (a ServiceAccount's)."""
        path = self.component_kubeconfig(component)
        return pki.write_kubeconfig(path, pki.kubeconfig(
            self.server, self.pki.ca_cert, user, token=token, cluster_name=self.name,
            namespace=namespace))

    # -- audit -------------------------------------------------------------------------

    def audit_events(self, since: float | None = None, until: float | None = None,
                     user: str = OPERATOR_USER) -> list[dict[str, Any]]:
        """Audit events of ``user`` whose request was received in [since, until] (epoch s)."""
        events = []
        try:
            lines = self.audit_log.read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if event.get("user", {}).get("username") != user:
                continue
            received = _parse_time(event.get("requestReceivedTimestamp", ""))
            if since is not None and received < since:
                continue
            if until is not None and received > until:
                continue
            events.append(event)
        return events


def stop_pod_processes(state: Path) -> list[str]:
    """Stop every process recorded for a simulated pod under ``state``."""
    stopped = []
    folder = state / "pids" / POD_PROCESSES
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        name = f"{POD_PROCESSES}/{record.stem}"
        if processes.stop(state, name, grace_s=5.0):
            stopped.append(name)
    return stopped


WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def write_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("verb") in WRITE_VERBS]


def _parse_time(stamp: str) -> float:
    """RFC 3339 with microseconds (as the audit log writes it) -> epoch seconds."""
    if not stamp:
        return 0.0
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
