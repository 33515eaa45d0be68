"""Putting Shoal on the local cluster the way a user's cluster gets it: the CRDs, the
chart's ServiceAccount and RBAC, and the operator running as that ServiceAccount.

The operator is started as its own process with a token of the chart's ServiceAccount, so
anything it is not allowed to do fails here exactly as it would in a real cluster.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.request
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

import shoal
from shoal.devcluster import processes
from shoal.devcluster.cluster import OPERATOR, ClusterError, ControlPlane, free_port, wait_until
from shoal.devcluster.kubectl import Kubectl, KubectlError
from shoal.devcluster.tools import Tools

OPERATOR_NAMESPACE = "shoal-system"
OPERATOR_SERVICE_ACCOUNT = "shoal"
RBAC_KINDS = frozenset({"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})


def repo_root() -> Path:
    """The checkout Shoal runs from (charts/, crds/ and examples/ live there)."""
    return Path(shoal.__file__).resolve().parents[2]


def crd_manifests(root: Path | None = None) -> list[dict[str, Any]]:
    """The CRDs, generated from the API models; the checked-in crds/*.yaml otherwise."""
    try:
        from shoal.api.crds import generate_crds
    except ImportError:
        generate_crds = None
    if generate_crds is not None:
        return list(generate_crds())
    directory = (root or repo_root()) / "crds"
    documents: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    if not documents:
        raise ClusterError(f"no CRDs: shoal.api.crds is missing and {directory} has none")
    return documents


def install_crds(kubectl: Kubectl, timeout_s: float = 60) -> list[str]:
    """Apply the CRDs and wait until each is Established (kopf scans them at start)."""
    crds = crd_manifests()
    kubectl.apply(crds)
    names = [c["metadata"]["name"] for c in crds]
    kubectl.run("wait", "--for=condition=Established", f"--timeout={int(timeout_s)}s",
                *[f"crd/{n}" for n in names], timeout=timeout_s + 10)
    return names


def chart_dir(root: Path | None = None) -> Path:
    return (root or repo_root()) / "charts" / "shoal"


def render_chart(tools: Tools, *, namespace: str = OPERATOR_NAMESPACE,
                 values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``helm template`` of charts/shoal with the real helm, as a list of objects."""
    chart = chart_dir()
    if not (chart / "Chart.yaml").is_file():
        raise ClusterError(f"no Helm chart at {chart}")
    argv = [str(tools.helm), "template", "shoal", str(chart), "--namespace", namespace]
    for key, value in (values or {}).items():
        argv += ["--set", f"{key}={value}"]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError(f"helm template failed: {result.stderr.strip()}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def install_rbac(kubectl: Kubectl, tools: Tools, namespace: str = OPERATOR_NAMESPACE) -> list[str]:
    """Create the namespace and apply only the chart's ServiceAccount and RBAC objects."""
    objects = [o for o in render_chart(tools, namespace=namespace) if o.get("kind") in RBAC_KINDS]
    if not any(o["kind"] == "ServiceAccount" for o in objects):
        raise ClusterError("the chart renders no ServiceAccount for the operator")
    for obj in objects:
        if obj["kind"] in {"ServiceAccount", "Role", "RoleBinding"}:
            obj.setdefault("metadata", {}).setdefault("namespace", namespace)
    kubectl.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])
    kubectl.apply(objects)
    return [f"{o['kind']}/{o['metadata']['name']}" for o in objects]


def mint_token(kubectl: Kubectl, namespace: str = OPERATOR_NAMESPACE,
               service_account: str = OPERATOR_SERVICE_ACCOUNT, duration: str = "24h") -> str:
    """A bound token of ``service_account`` from the TokenRequest API."""
    return kubectl.run("create", "token", service_account, "-n", namespace,
                       f"--duration={duration}").strip()


def operator_kubeconfig(cluster: ControlPlane, kubectl: Kubectl) -> Path:
    """Write (or refresh) the kubeconfig the operator runs with: its SA's token."""
    token = mint_token(kubectl)
    user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
    return cluster.write_token_kubeconfig(OPERATOR, user, token, namespace=OPERATOR_NAMESPACE)


def operator_command(metrics_port: int, liveness_url: str) -> list[str]:
    """``shoal run --all-namespaces`` from the same Python environment as this process,
    on free loopback ports (several operators may run side by side in development)."""
    script = Path(sys.executable).parent / "shoal"
    if script.is_file():
        prefix = [str(script)]
    else:
        prefix = [sys.executable, "-m", "shoal.cli"]
    return [*prefix, "run", "--all-namespaces", "--log-format=text",
            f"--metrics-port={metrics_port}", f"--liveness={liveness_url}"]


@dataclasses.dataclass(frozen=True)
class OperatorProcess:
    pid: int
    liveness_url: str
    metrics_url: str


def start_operator(cluster: ControlPlane, kubeconfig: Path,
                   extra_env: dict[str, str] | None = None) -> OperatorProcess:
    """Start the operator as its own process (log: logs/operator.log)."""
    env = dict(os.environ)
    env["KUBECONFIG"] = str(kubeconfig)
    env.update(extra_env or {})
    metrics_port, liveness_port = free_port(), free_port()
    liveness_url = f"http://127.0.0.1:{liveness_port}/healthz"
    proc = processes.start(cluster.state, OPERATOR,
                           operator_command(metrics_port, liveness_url), env=env)
    return OperatorProcess(pid=proc.pid, liveness_url=liveness_url,
                           metrics_url=f"http://127.0.0.1:{metrics_port}/metrics")


def wait_operator_live(cluster: ControlPlane, operator: OperatorProcess,
                       timeout_s: float = 60) -> None:
    """Wait for kopf's liveness endpoint; fail at once, with the log, if it exits."""

    def live() -> bool:
        try:
            with urllib.request.urlopen(operator.liveness_url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def dead() -> str | None:
        if processes.is_running(cluster.state, OPERATOR):
            return None
        return ("the operator exited; last lines of its log:\n"
                + processes.log_tail(cluster.state, OPERATOR, 40))

    wait_until(live, timeout_s=timeout_s, what=f"the operator's {operator.liveness_url}",
               alive=dead)


def install_operator(cluster: ControlPlane, tools: Tools) -> Path:
    """CRDs, RBAC, token kubeconfig; returns the operator's kubeconfig. Does not start it."""
    kubectl = cluster.kubectl(tools)
    try:
        install_crds(kubectl)
        install_rbac(kubectl, tools)
        return operator_kubeconfig(cluster, kubectl)
    except KubectlError as error:
        raise ClusterError(f"installing Shoal failed: {error}") from error


def apply_examples(kubectl: Kubectl, root: Path | None = None) -> list[str]:
    """Apply examples/*.yaml; a file that fails is reported, not fatal."""
    applied = []
    for path in sorted(((root or repo_root()) / "examples").glob("*.yaml")):
        try:
            kubectl.apply_files([path])
        except KubectlError as error:
            print(f"shoal: could not apply {path.name}: {error.stderr.strip()}", file=sys.stderr)
            continue
        applied.append(path.name)
    return applied
