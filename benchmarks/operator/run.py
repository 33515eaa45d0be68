"""The operator at scale, on the local control plane: N ModelTiers applied at once.

    nice -n 10 python benchmarks/operator/run.py --tiers 100,300,1000 --out benchmarks/operator/results.json

For each N, in a fresh namespace and with a freshly started operator (so its memory and CPU
are its own for that N):

1. apply N ModelTiers (one replica each, an L4 GPU each) from 8 `kubectl apply` at once;
2. time until every tier is Ready=True and Progressing=False at its generation, counted
   from the moment the apply returned; also when the operator had written every Deployment (its own part) and
   when every pod was ready (the Deployment and ReplicaSet controllers', scheduler's and
   kwok's part; the local control plane runs them at 500 requests per second, see
   devcluster/cluster.py, where a default cluster's 20 per controller would bound it at
   about N / 20 seconds);
3. the operator's API requests during creation and during one steady minute afterwards,
   from the API server's audit log (writes, and reads other than its watches);
4. a change to every tier (an engine argument, which rolls every Deployment) and the time
   until every tier is Ready again at the new generation;
5. the operator's peak RSS and CPU seconds over the whole run, and every component's CPU
   seconds during the creation and during the change (from /proc), with the machine's
   load average over the run.

The cluster's nodes are benchmarks/operator/nodes.yaml (sized for 1,000+ one-GPU pods).
Run it niced on a shared machine and say so when quoting its numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from shoal.devcluster import install, processes
from shoal.devcluster.build import ensure_binaries
from shoal.devcluster.cluster import COMPONENTS, OPERATOR, ControlPlane
from shoal.devcluster.kubectl import KubectlError
from shoal.devcluster.nodes import load_nodes
from shoal.devcluster.tools import ensure_tools

HERE = Path(__file__).resolve().parent
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
READ_VERBS = {"get", "list"}


def tier(name: str, namespace: str, extra_args: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": "bench", "source": "hf://org/bench"},
        "resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}, "cpu": "100m", "memory": "256Mi"},
        "replicas": {"min": 1, "max": 1},
    }
    if extra_args:
        spec["engine"] = {"extraArgs": extra_args}
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelTier", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


class Sampler:
    """Peak RSS (VmHWM) and CPU seconds of one process, read from /proc twice a second,
    and the machine's 1-minute load average over the same time (lowest and highest)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_bytes = 0
        self.cpu_seconds = 0.0
        self.load_range = (float("inf"), 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _read(self) -> None:
        load = os.getloadavg()[0]
        self.load_range = (min(self.load_range[0], load), max(self.load_range[1], load))
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss_bytes = max(self.peak_rss_bytes, int(line.split()[1]) * 1024)
        fields = stat.rsplit(")", 1)[1].split()
        self.cpu_seconds = (int(fields[11]) + int(fields[12])) / self._tick

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(0.5)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._read()
        self._stop.set()
        self._thread.join()


def component_cpu_seconds(cluster: ControlPlane) -> dict[str, float]:
    """CPU seconds (user + system) each control-plane component has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for name in COMPONENTS:
        record = processes.recorded(cluster.state, name)
        try:
            stat = Path(f"/proc/{record['pid']}/stat").read_text() if record else ""
        except OSError:
            continue
        if stat:
            fields = stat.rsplit(")", 1)[1].split()
            used[name] = (int(fields[11]) + int(fields[12])) / tick
    return used


def cpu_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 1) for name in after}


def requests(cluster: ControlPlane, since: float, until: float) -> dict[str, Any]:
    """The operator's requests in [since, until]: writes and non-watch reads, by verb and resource."""
    writes: Counter[str] = Counter()
    reads: Counter[str] = Counter()
    for event in cluster.audit_events(since=since, until=until):
        if event.get("stage") != "ResponseComplete":
            continue
        verb = event.get("verb")
        ref = event.get("objectRef") or {}
        what = f"{verb} {ref.get('resource')}" + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        if verb in WRITE_VERBS:
            writes[what] += 1
        elif verb in READ_VERBS:
            reads[what] += 1
    return {"writes": sum(writes.values()), "reads": sum(reads.values()),
            "writes_by_kind": dict(writes.most_common()), "reads_by_kind": dict(reads.most_common())}


def tiers_ready(kubectl: Any, namespace: str) -> tuple[int, int]:
    """(tiers Ready=True and done rolling out (Progressing=False) at their generation,
    tiers) in `namespace`."""
    items = kubectl.json("get", "modeltiers", "-n", namespace)["items"]
    ready = 0
    for item in items:
        status = item.get("status") or {}
        conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if conds.get("Ready") == "True" and conds.get("Progressing") == "False" and status.get("observedGeneration") == item["metadata"]["generation"]:
            ready += 1
    return ready, len(items)


def apply_at_once(kubectl: Any, objects: list[dict[str, Any]], workdir: Path, label: str, parallel: int = 8) -> None:
    """Apply `objects` from `parallel` kubectl processes at once (one would send them one
    after the other, which at 1,000 objects takes minutes on its own)."""
    import subprocess

    chunks = [objects[i::parallel] for i in range(parallel)]
    procs = []
    for i, chunk in enumerate(c for c in chunks if c):
        path = workdir / f"{label}-{i}.yaml"
        path.write_text(yaml.safe_dump_all(chunk))
        procs.append(subprocess.Popen([str(kubectl.binary), f"--kubeconfig={kubectl.kubeconfig}", "apply", "--server-side", "-f", str(path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl apply failed: {err}")


def operator_watching(cluster: ControlPlane, since: float) -> bool:
    """The operator's watch of ModelTiers has started (its initial lists are done)."""
    return any(e.get("verb") == "watch" and (e.get("objectRef") or {}).get("resource") == "modeltiers"
               for e in cluster.audit_events(since=since))


def wait_until(check, timeout: float, what: str, interval: float = 2.0) -> float:
    """Poll `check` until it is true; a kubectl error counts as not yet (an API server
    this loaded can time out a list while its watch cache catches up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except KubectlError:
            value = False
        if value:
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def run_one(cluster: ControlPlane, kubectl: Any, kubeconfig: Path, n: int, workdir: Path, log: Any,
            save: Any = lambda result: None) -> dict[str, Any]:
    """One count, start to end; `save` is handed the result so far after each phase."""
    namespace = f"bench-{n}-{int(time.time()) % 100000}"
    kubectl.run("create", "namespace", namespace)
    wait_until(lambda: kubectl.run("get", "serviceaccount", "default", "-n", namespace, "--ignore-not-found").strip(), 60, "the default ServiceAccount", 0.5)
    launched = time.time()
    started = install.start_operator(cluster, kubeconfig)
    install.wait_operator_live(cluster, started)
    wait_until(lambda: operator_watching(cluster, launched), 120, "the operator's watches", 0.5)
    result: dict[str, Any] = {"tiers": n}
    names = [f"t{i:04d}" for i in range(n)]
    with Sampler(started.pid) as sampler:
        cpu_at_start = component_cpu_seconds(cluster)
        t0 = time.time()
        apply_at_once(kubectl, [tier(name, namespace) for name in names], workdir, f"tiers-{n}")
        applied = time.time()
        result["apply_seconds"] = round(applied - t0, 1)
        log(f"N={n}: applied in {applied - t0:.1f}s")

        def deployments_written() -> bool:
            return len(kubectl.json("get", "deployments", "-n", namespace)["items"]) >= n

        deployments_done = wait_until(deployments_written, 1800, "every Deployment")
        result["deployments_written_seconds"] = round(deployments_done - applied, 1)
        log(f"N={n}: every Deployment written after {deployments_done - applied:.1f}s")

        def pods_ready() -> bool:
            deps = kubectl.json("get", "deployments", "-n", namespace)["items"]
            return sum(1 for d in deps if (d.get("status") or {}).get("readyReplicas") == 1) >= n

        pods_done = wait_until(pods_ready, 1800, "every pod ready")
        result["pods_ready_seconds"] = round(pods_done - applied, 1)

        def all_ready() -> bool:
            ready, total = tiers_ready(kubectl, namespace)
            return total == n and ready == n

        ready_at = wait_until(all_ready, 1800, "every tier Ready")
        result["ready_seconds"] = round(ready_at - applied, 1)
        log(f"N={n}: every tier Ready after {ready_at - applied:.1f}s (pods ready after {pods_done - applied:.1f}s)")
        result["creation"] = requests(cluster, t0, ready_at)
        result["control_plane_cpu_seconds_creation"] = cpu_between(cpu_at_start, component_cpu_seconds(cluster))
        result["operator_cpu_seconds_creation"] = round(sampler.cpu_seconds, 1)
        result["operator_peak_rss_mib_creation"] = round(sampler.peak_rss_bytes / 2**20, 1)
        save(result)

        # Settled: ten seconds without a write, then one steady minute measured.
        def settled() -> bool:
            return requests(cluster, time.time() - 10, time.time())["writes"] == 0

        wait_until(settled, 300, "ten seconds without a write", 5)
        steady_from = time.time()
        time.sleep(60)  # the measurement window itself
        result["steady_minute"] = requests(cluster, steady_from, time.time())
        log(f"N={n}: steady minute: {result['steady_minute']['writes']} writes, {result['steady_minute']['reads']} reads; "
            f"creation: {result['creation']['writes']} writes, {result['creation']['reads']} reads; "
            f"operator so far: peak RSS {sampler.peak_rss_bytes / 2**20:.0f} MiB, {sampler.cpu_seconds:.0f} CPU s")
        cpu_before_change = sampler.cpu_seconds
        save(result)

        cpu_before_change_by_component = component_cpu_seconds(cluster)
        t1 = time.time()
        apply_at_once(kubectl, [tier(name, namespace, ["--enforce-eager"]) for name in names], workdir, f"tiers-{n}-changed")
        change_applied = time.time()
        reconverged = wait_until(all_ready, 1800, "every tier Ready at its new generation")
        result["reconverge_seconds"] = round(reconverged - change_applied, 1)
        result["change"] = requests(cluster, t1, reconverged)
        result["control_plane_cpu_seconds_change"] = cpu_between(cpu_before_change_by_component, component_cpu_seconds(cluster))
        log(f"N={n}: reconverged {reconverged - change_applied:.1f}s after the change")
    result["operator_peak_rss_mib"] = round(sampler.peak_rss_bytes / 2**20, 1)
    result["operator_cpu_seconds"] = round(sampler.cpu_seconds, 1)
    result["operator_cpu_seconds_until_change"] = round(cpu_before_change, 1)
    result["load_average_range"] = [round(x, 1) for x in sampler.load_range]
    processes.stop(cluster.state, OPERATOR)
    result["namespace"] = namespace
    return result


def delete_namespace(kubectl: Any, namespace: str) -> None:
    """Delete a count's namespace and wait until it is gone (before the next count)."""
    kubectl.run("delete", "namespace", namespace, "--wait=false")
    wait_until(lambda: not kubectl.run("get", "namespace", namespace, "--ignore-not-found").strip(), 900, "the namespace to be deleted", 5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiers", default="100,300,1000", help="comma-separated tier counts")
    parser.add_argument("--nodes", type=Path, default=HERE / "nodes.yaml")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.tiers.split(",")]

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message} (load average {os.getloadavg()[0]:.1f})",
              file=sys.stderr, flush=True)

    def write(results: list[dict[str, Any]]) -> str:
        report = {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "results": results}
        text = json.dumps(report, indent=1)
        if args.out:
            args.out.write_text(text + "\n")
        return text

    tools, binaries = ensure_tools(), ensure_binaries()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        cluster = ControlPlane(Path(tmp) / "state", name="shoal-bench")
        cluster.start(binaries, tools, load_nodes(args.nodes), progress=lambda m: None)
        try:
            kubectl = cluster.kubectl(tools)
            kubeconfig = install.install_operator(cluster, tools)
            results: list[dict[str, Any]] = []
            for n in counts:
                # Written after each count, so a run stopped later keeps what it measured.
                results.append(run_one(cluster, kubectl, kubeconfig, n, Path(tmp), log,
                                       save=lambda partial: write([*results, partial])))
                text = write(results)
                if n != counts[-1]:
                    delete_namespace(kubectl, results[-1]["namespace"])
        finally:
            cluster.stop(progress=lambda m: None)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
