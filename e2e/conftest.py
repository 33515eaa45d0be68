"""End-to-end fixtures: one real local control plane per test session.

The control plane is the same one `shoal dev up` runs (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok, built from Go modules on first use: about
8 minutes on 2 cores with an empty Go build cache; later sessions start it in about 10
seconds). Tests are never skipped for missing binaries: they are built.

Set SHOAL_E2E_STATE_DIR to keep the cluster's state (logs, audit log) in a known place.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.helpers import unique_name, wait_for
from shoal.devcluster import install, processes
from shoal.devcluster.build import Binaries, ensure_binaries
from shoal.devcluster.cluster import OPERATOR, ControlPlane, write_events
from shoal.devcluster.kubectl import Kubectl
from shoal.devcluster.nodes import load_nodes
from shoal.devcluster.tools import Tools, ensure_tools


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test under e2e/ needs the control plane; mark them so `-m "not e2e"` skips them.
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


class E2EKubectl(Kubectl):
    """kubectl as the cluster admin. Calling it returns parsed JSON (``-o json`` added)."""

    def __call__(self, *args: str, input: str | None = None) -> Any:
        return self.json(*args, input=input)


@pytest.fixture(scope="session")
def tools() -> Tools:
    return ensure_tools()


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    return ensure_binaries()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, tools: Tools,
            binaries: Binaries) -> Iterator[ControlPlane]:
    configured = os.environ.get("SHOAL_E2E_STATE_DIR")
    state = Path(configured) if configured else tmp_path_factory.mktemp("cluster") / "state"
    control_plane = ControlPlane(state, name="shoal-e2e")
    control_plane.start(binaries, tools, load_nodes())
    try:
        yield control_plane
    finally:
        control_plane.stop(progress=lambda _m: None)


@pytest.fixture(scope="session")
def kubectl(cluster: ControlPlane, tools: Tools) -> E2EKubectl:
    return E2EKubectl(tools.kubectl, cluster.admin_kubeconfig)


@pytest.fixture
def namespace(kubectl: E2EKubectl) -> Iterator[str]:
    """A fresh namespace whose `default` ServiceAccount exists (pods need it)."""
    name = unique_name("e2e")
    kubectl.run("create", "namespace", name)
    wait_for(lambda: kubectl("get", "serviceaccount", "default", "-n", name), 60,
             f"the default ServiceAccount in {name}")
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", "--ignore-not-found")


class Operator:
    """The operator (`shoal run`) as its own process, with the chart ServiceAccount's token."""

    def __init__(self, cluster: ControlPlane, kubectl: E2EKubectl, kubeconfig: Path) -> None:
        self.cluster = cluster
        self.kubectl = kubectl
        self.kubeconfig = kubeconfig
        self.metrics_url: str | None = None  # the operator's /metrics, once started here

    @property
    def pid(self) -> int | None:
        return processes.running_pid(self.cluster.state, OPERATOR)

    def start(self) -> int:
        """Start `shoal run` and wait until kopf's liveness endpoint answers."""
        started = install.start_operator(self.cluster, self.kubeconfig)
        install.wait_operator_live(self.cluster, started)
        self.metrics_url = started.metrics_url
        return started.pid

    def kill(self) -> None:
        """SIGKILL the operator's process group, as a crash or an OOM kill would."""
        processes.kill(self.cluster.state, OPERATOR)

    def stop(self) -> None:
        processes.stop(self.cluster.state, OPERATOR)

    def restart(self) -> int:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        return processes.log_tail(self.cluster.state, OPERATOR, lines)

    def writes(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        """The operator's create/update/patch/delete requests received in [since, until]."""
        return write_events(self.cluster.audit_events(since=since, until=until))

    def write_summary(self, since: float, until: float | None = None) -> list[str]:
        return [f"{e['verb']} {e.get('requestURI')}" for e in self.writes(since, until)]


@pytest.fixture(scope="session")
def operator_installed(cluster: ControlPlane, kubectl: E2EKubectl, tools: Tools) -> Path:
    """CRDs Established, the chart's ServiceAccount and RBAC applied; the SA kubeconfig."""
    return install.install_operator(cluster, tools)


@pytest.fixture(scope="session")
def operator(cluster: ControlPlane, kubectl: E2EKubectl,
             operator_installed: Path) -> Iterator[Operator]:
    handle = Operator(cluster, kubectl, operator_installed)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def running_operator(operator: Operator) -> Operator:
    """The session's operator, restarted first if an earlier test left it dead."""
    if operator.pid is None:
        operator.start()
    return operator
