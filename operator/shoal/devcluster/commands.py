"""`shoal dev up | status | down`: a local control plane with simulated GPU nodes.

``register(subparsers)`` adds the ``dev`` command group to the ``shoal`` command; each
subcommand's handler is stored as ``func`` on the parsed arguments and returns an exit
code. ``python -m shoal.devcluster.commands dev ...`` runs the group on its own.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import Any

from shoal.devcluster import fleet, install, processes
from shoal.devcluster.build import BuildError, ensure_binaries
from shoal.devcluster.cluster import (
    COMPONENTS,
    FLEET,
    OPERATOR,
    ClusterError,
    ControlPlane,
    default_state_dir,
    wait_until,
)
from shoal.devcluster.engines import InvalidEnginesFile
from shoal.devcluster.kubectl import Kubectl, KubectlError
from shoal.devcluster.nodes import GPU_RESOURCE, InvalidNodesFile, load_nodes
from shoal.devcluster.tools import Tools, ensure_tools

DEFAULT_NAME = "shoal"


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``dev`` (with ``up``, ``status``, ``down``) to an argparse subparsers object."""
    dev = subparsers.add_parser(
        "dev", help="a local Kubernetes control plane with simulated GPU nodes",
        description="Run a real local control plane (etcd, kube-apiserver, "
                    "kube-controller-manager, kube-scheduler) with kwok-simulated GPU nodes, "
                    "built from Go modules on first use and cached.")
    groups = dev.add_subparsers(dest="dev_command", metavar="{up,status,down}")
    groups.required = True

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--name", default=DEFAULT_NAME,
                            help="cluster name; its state lives in <cache>/clusters/NAME "
                                 "(default: %(default)s)")
        parser.add_argument("--state-dir", type=Path, default=None,
                            help="state directory (overrides --name's default location)")

    up = groups.add_parser("up", help="start the cluster, install Shoal, run the operator")
    common(up)
    up.add_argument("--nodes", type=Path, default=None, metavar="FILE",
                    help="YAML file of simulated node groups (default: 2x H100, 2x L4, 1 CPU)")
    up.add_argument("--detach", action="store_true",
                    help="return once everything is up and leave it running "
                         "(stop it with `shoal dev down`)")
    up.add_argument("--no-operator", action="store_true",
                    help="do not install the CRDs and RBAC or start the operator")
    up.add_argument("--no-examples", action="store_true", help="do not apply examples/*.yaml")
    up.add_argument("--no-fleet", action="store_true",
                    help="run no processes behind the simulated pods and forward no Service "
                         "to localhost (pods are only simulated, evaluation Jobs complete at once)")
    up.add_argument("--fleet-timeout", type=float, default=180.0, metavar="SECONDS",
                    help="how long to wait for every RoutePolicy's URL to answer "
                         "(default: %(default)s)")
    up.set_defaults(func=cmd_up)

    status = groups.add_parser("status", help="show the cluster's components, nodes and tiers")
    common(status)
    status.set_defaults(func=cmd_status)

    down = groups.add_parser("down", help="stop every process `shoal dev up` started")
    common(down)
    down.add_argument("--purge", action="store_true",
                      help="also delete the state directory (logs, certificates, etcd data)")
    down.set_defaults(func=cmd_down)
    return dev


def _cluster(args: argparse.Namespace) -> ControlPlane:
    state = args.state_dir or default_state_dir(args.name)
    return ControlPlane(state, name=args.name)


def _fail(message: str) -> int:
    print(f"shoal: {message}", file=sys.stderr)
    return 1


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Interrupted(Exception):
    pass


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted()


def cmd_up(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    try:
        nodes = load_nodes(args.nodes)
        fleet.load_engines(args.nodes)
    except (OSError, InvalidNodesFile, InvalidEnginesFile) as error:
        return _fail(f"cannot use the node file {args.nodes}: {error}")
    # SIGTERM stops the cluster as Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        tools = ensure_tools()
        binaries = ensure_binaries()
        cluster.start(binaries, tools, nodes, hold_evaluation_pods=not args.no_fleet)
        kubectl = cluster.kubectl(tools)
        if not args.no_operator:
            _say("installing the CRDs and the chart's RBAC; starting the operator")
            kubeconfig = install.install_operator(cluster, tools)
            operator = install.start_operator(cluster, kubeconfig)
            install.wait_operator_live(cluster, operator)
        if not args.no_examples:
            applied = install.apply_examples(kubectl)
            if applied:
                _say(f"applied examples: {', '.join(applied)}")
        if not args.no_fleet:
            start_fleet(cluster, args.nodes)
            if not args.no_operator and not args.no_examples:
                wait_fleet_serving(cluster, kubectl, args.fleet_timeout)
        print(f"export KUBECONFIG={cluster.admin_kubeconfig}")
        print(status_report(cluster, tools))
        entry = next((s for s in fleet.read_status(cluster.state).get("services", [])
                      if s["kind"] == "RoutePolicy"), None)
        if entry is not None:
            _say(f"try: curl {entry['url']}/chat/completions -H 'Content-Type: application/json' "
                 f"-d '{{\"messages\": "
                 f"[{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]}}'")
        if args.detach:
            _say("running detached; stop it with `shoal dev down"
                 + (f" --name {args.name}`" if args.name != DEFAULT_NAME else "`"))
            return 0
        _say("running; press Ctrl-C to stop everything")
        return _watch(cluster, operator=not args.no_operator, run_fleet=not args.no_fleet)
    except (BuildError, ClusterError) as error:
        return _fail(str(error))
    except KubectlError as error:
        cluster.stop(progress=lambda _m: None)
        return _fail(str(error))
    except (KeyboardInterrupt, _Interrupted):
        _say("stopping")
        cluster.stop()
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_fleet(cluster: ControlPlane, nodes_file: Path | None) -> None:
    """Start the fleet (processes behind the simulated pods, localhost URLs per Service)."""
    argv = [sys.executable, "-m", "shoal.devcluster.fleet", "--state", str(cluster.state),
            "--name", cluster.name]
    if nodes_file is not None:
        argv += ["--nodes", str(nodes_file.resolve())]
    _say("starting the fleet: router sidecars and engines behind the simulated pods")
    processes.start(cluster.state, FLEET, argv)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def wait_fleet_serving(cluster: ControlPlane, kubectl: Kubectl, timeout_s: float) -> None:
    """Wait until every RoutePolicy's forwarder reaches a ready sidecar (its engine loaded).

    A policy that never serves (its entry tier cannot be scheduled, say) is reported in one
    line and does not stop the cluster: the status shows why.
    """
    policies = {(p["metadata"]["namespace"], p["metadata"]["name"])
                for p in kubectl.json("get", "routepolicies", "--all-namespaces")["items"]}

    def dead() -> str | None:
        if processes.is_running(cluster.state, FLEET):
            return None
        return "the fleet exited; last lines of its log:\n" + processes.log_tail(cluster.state, FLEET)

    def serving() -> bool | None:
        urls = {(s["namespace"], s["owner"]): s["url"] for s in fleet.read_status(cluster.state).get("services", [])
                if s["kind"] == "RoutePolicy"}
        waiting = [p for p in policies if p not in urls
                   or not _answers(urls[p].removesuffix("/v1") + "/readyz")]
        return True if not waiting else None

    if not policies:
        return
    _say(f"waiting for {len(policies)} RoutePolicy URL(s) to answer (engines loading)")
    try:
        wait_until(serving, timeout_s=timeout_s, what="the RoutePolicies' URLs to answer",
                   interval_s=1.0, alive=dead)
    except ClusterError as error:
        if not processes.is_running(cluster.state, FLEET):
            raise
        _say(f"shoal: not every RoutePolicy answers yet ({error}); see `shoal dev status`")


def fleet_rows(state: Path) -> list[list[str]]:
    """ENDPOINT, KIND, URL, BACKENDS for every Service the fleet forwards."""
    rows = [["ENDPOINT", "KIND", "URL", "READY"]]
    for service in fleet.read_status(state).get("services", []):
        rows.append([f"{service['namespace']}/{service['owner']}", service["kind"], service["url"],
                     str(service["backends"])])
    return rows


def fleet_pod_rows(state: Path) -> list[list[str]]:
    """POD, IP, ENGINE, PROCESSES for every pod the fleet runs processes for."""
    rows = [["POD", "IP", "ENGINE", "PROCESSES (pid)"]]
    for pod in fleet.read_status(state).get("pods", []):
        running = ", ".join(f"{role} {pid or 'exited'}" for role, pid in sorted(pod["pids"].items()))
        rows.append([f"{pod['namespace']}/{pod['name']}", pod["ip"], pod["engine"], running])
    return rows


def _watch(cluster: ControlPlane, operator: bool, run_fleet: bool = True) -> int:
    """Keep the foreground until interrupted; stop everything if a component dies."""
    expected = (*COMPONENTS, *((OPERATOR,) if operator else ()), *((FLEET,) if run_fleet else ()))
    try:
        while True:
            for component in expected:
                if not processes.is_running(cluster.state, component):
                    print(f"shoal: {component} exited; last lines of its log:\n"
                          f"{processes.log_tail(cluster.state, component)}", file=sys.stderr)
                    cluster.stop()
                    return 1
            time.sleep(2)
    except (KeyboardInterrupt, _Interrupted):
        _say("stopping")
        cluster.stop()
        return 0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def node_rows(nodes: dict[str, Any]) -> list[list[str]]:
    """NAME, READY, GPU product, GPU count, CPU, MEMORY for ``kubectl get nodes -o json``."""
    rows = [["NODE", "READY", "GPU", "GPUS", "CPU", "MEMORY"]]
    for node in nodes.get("items", []):
        labels = node["metadata"].get("labels", {})
        capacity = node.get("status", {}).get("capacity", {})
        ready = next((c["status"] for c in node.get("status", {}).get("conditions", [])
                      if c["type"] == "Ready"), "Unknown")
        rows.append([node["metadata"]["name"], ready,
                     labels.get("nvidia.com/gpu.product", "-"),
                     capacity.get(GPU_RESOURCE, "0"),
                     capacity.get("cpu", "?"), capacity.get("memory", "?")])
    return rows


def status_report(cluster: ControlPlane, tools: Tools) -> str:
    kubectl = Kubectl(tools.kubectl, cluster.admin_kubeconfig)
    parts = [_table(node_rows(kubectl.json("get", "nodes")))]
    try:
        tiers = kubectl.run("get", "modeltiers", "--all-namespaces")
    except KubectlError:
        tiers = ""  # the CRD is not installed (--no-operator)
    if tiers.strip():
        parts.append(tiers.rstrip())
    urls = fleet_rows(cluster.state)
    if len(urls) > 1:
        parts.append(_table(urls))
    pods = fleet_pod_rows(cluster.state)
    if len(pods) > 1:
        parts.append(_table(pods))
    problems = fleet.read_status(cluster.state).get("problems") or []
    if problems:
        parts.append("pods the fleet runs nothing for:\n" + "\n".join(f"  {p}" for p in problems))
    return "\n\n".join(parts)


def cmd_status(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    info = cluster.info()
    rows = [["COMPONENT", "STATE", "PID", "LOG"]]
    running = 0
    for component in (*COMPONENTS, OPERATOR, FLEET):
        pid = processes.running_pid(cluster.state, component)
        recorded = processes.recorded(cluster.state, component) is not None
        state = "running" if pid else ("exited" if recorded else "stopped")
        running += bool(pid)
        rows.append([component, state, str(pid or "-"),
                     str(processes.log_path(cluster.state, component))])
    print(f"cluster {cluster.name!r} (state: {cluster.state})")
    if info:
        print(f"server: {info.get('server')}  versions: "
              + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items()))
        print(f"export KUBECONFIG={cluster.admin_kubeconfig}")
    print(_table(rows))
    if not all(processes.is_running(cluster.state, c) for c in COMPONENTS):
        return 1 if running else 3
    try:
        print()
        print(status_report(cluster, ensure_tools()))
    except (KubectlError, BuildError) as error:
        return _fail(f"the apiserver did not answer: {error}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    stopped = cluster.stop()
    if not stopped:
        print(f"cluster {cluster.name!r}: nothing was running")
    if args.purge and cluster.state.exists():
        shutil.rmtree(cluster.state)
        print(f"removed {cluster.state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shoal")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
