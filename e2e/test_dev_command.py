"""`shoal dev up | status | down` as a user runs them, on a second, separate cluster.

`shoal dev up` also runs the fleet: real router sidecars and engines behind the simulated
pods (SmolLM2-135M on CPU for the example's small tier) and a localhost URL per Service.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from e2e.helpers import condition, is_true, wait_for
from shoal.devcluster import fleet, processes
from shoal.devcluster.cluster import COMPONENTS, FLEET, OPERATOR
from shoal.devcluster.kubectl import Kubectl
from shoal.devcluster.nodes import default_nodes_text

pytestmark = pytest.mark.e2e

# The default node set plus an A100 node, so the examples can run and the file is used.
EXTRA_NODES = """\
  - name: a100
    count: 1
    gpu: {product: NVIDIA-A100-SXM4-40GB, count: 8}
"""


def _shoal_dev(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", "dev", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_dev_up_serves_real_text_through_the_printed_url_scales_and_down_leaves_no_process(tmp_path, binaries, tools):
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(default_nodes_text().rstrip() + "\n" + EXTRA_NODES)
    state = tmp_path / "state"
    where = ["--name", "cli", "--state-dir", str(state)]

    up = _shoal_dev("up", *where, "--nodes", str(nodes), "--detach")
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={state / 'kubeconfig'}" in up.stdout
        assert "a100-0" in up.stdout and "NVIDIA-A100-SXM4-40GB" in up.stdout
        pids = {c: processes.running_pid(state, c) for c in (*COMPONENTS, OPERATOR, FLEET)}
        assert all(pids.values()), pids
        info = json.loads((state / "cluster.json").read_text())
        assert info["nodes"][-1] == "a100-0"

        kubectl = Kubectl(tools.kubectl, state / "kubeconfig")
        wait_for(lambda: (tiers := kubectl.json("get", "modeltiers", "-n", "default")["items"])
                 and all(is_true(t, "Ready") for t in tiers) and tiers,
                 120, "the example ModelTiers to be Ready under the operator `dev up` started")

        # The printed URL of the RoutePolicy answers through the small tier's real sidecar
        # and its real model (SmolLM2 on CPU), not a simulation.
        printed = re.search(r"default/support\s+RoutePolicy\s+(http://127\.0\.0\.1:\d+/v1)", up.stdout)
        assert printed, up.stdout
        url = printed.group(1)
        status_code, headers, body = _chat(url, "What is the capital of France?")
        assert status_code == 200, body
        assert headers["x-shoal-tier"] == "small"
        assert headers["x-shoal-route-reason"] == "default"
        assert body["model"] == "support-8b"
        # Generated text (greedy decoding: the same every run), not a fake engine's canned reply.
        answer = body["choices"][0]["message"]["content"]
        assert "France" in answer and len(answer.split()) >= 5 and "Reply from" not in answer, answer
        assert body["usage"]["completion_tokens"] > 0
        # The large tier (a GPU-sized model) answers through its own sidecar and the fake engine.
        status_code, headers, body = _chat(url, "hello", tier="large")
        assert (status_code, headers["x-shoal-tier"]) == (200, "large")
        assert body["choices"][0]["message"]["content"] == "Reply from large."

        status = _shoal_dev("status", *where, timeout=60)
        assert status.returncode == 0, status.stderr
        assert status.stdout.count(" running ") == len(COMPONENTS) + 2
        assert "small" in status.stdout and "support-8b" in status.stdout
        assert url in status.stdout

        # Scale-up: the new pod gets its own sidecar and engine, on its own pod IP.
        first = _pods(state, "small")
        assert len(first) == 1 and all(first[0]["pids"].values()), first
        kubectl.run("patch", "modeltier", "small", "-n", "default", "--type=merge",
                    "-p", '{"spec": {"replicas": {"min": 2}}}')
        def two_running() -> list[dict] | None:
            pods = _pods(state, "small")
            running = len(pods) == 2 and all(_alive(pid) for p in pods for pid in p["pids"].values())
            return pods if running else None

        two = wait_for(two_running, 120, "two small pods, each with a running sidecar and engine")
        new = next(p for p in two if p["name"] != first[0]["name"])
        assert new["ip"] != first[0]["ip"] and new["engine"] == "smollm2"
        wait_for(lambda: _get(f"http://{new['ip']}:8080/healthz") == 200, 60, "the new pod's sidecar on its pod IP")

        # A new checkpoint: the dev cluster runs the evaluation Job's real `shoal eval`
        # against SmolLM2, and the Job's pod ends with that program's exit code (1: the
        # verdict Failed, exact match far below the example's 0.8) and termination message.
        kubectl.run("patch", "modeltier", "small", "-n", "default", "--type=merge", "-p", json.dumps({"spec": {
            "model": {"checkpoint": "s3://acme-models/support-8b/ckpt-0043"},
            "rollout": {"evaluation": {"maxTokens": 8, "baseline": "none"}}}}))

        def evaluation_pod_finished() -> dict | None:
            # The small tier's own Job: other examples' evaluations (the adapters example's
            # gated adapter) run in the same namespace.
            pods = kubectl.json("get", "pods", "-n", "default", "-l", "app.kubernetes.io/component=evaluation,shoal.dev/tier=small")["items"]
            states = [c.get("state", {}).get("terminated") for p in pods for c in p["status"].get("containerStatuses") or []]
            return next((s for s in states if s), None)

        terminated = wait_for(evaluation_pod_finished, 240, "the evaluation pod to end with shoal eval's outcome")
        assert terminated["exitCode"] == 1, terminated
        verdict = json.loads(terminated["message"])
        assert verdict["verdict"] == "Failed" and verdict["checkpoint"].endswith("ckpt-0043"), verdict
        assert verdict["items"] == 4
        blocked = wait_for(lambda: (c := condition(kubectl.json("get", "modeltier", "small", "-n", "default"), "Evaluated"))
                           and c["reason"] == "Failed" and c, 60, "the tier's Evaluated=False Failed")
        assert "exact_match" in blocked["message"] and "ckpt-0042 keeps serving" in blocked["message"]

        # Deletion: the tier's pods go away and so do their processes.
        small_pids = [pid for p in two for pid in p["pids"].values()]
        kubectl.run("delete", "modeltier", "small", "-n", "default", "--wait=false")
        wait_for(lambda: not _pods(state, "small") and not any(_alive(pid) for pid in small_pids),
                 120, "the deleted tier's processes to stop")
        assert _pods(state, "large"), "the other tier keeps its processes"
    finally:
        down = _shoal_dev("down", *where, timeout=120)
    assert down.returncode == 0, down.stderr
    for component, pid in pids.items():
        assert not processes.is_running(state, component), component
        assert not _alive(pid), f"{component} (pid {pid}) outlived `shoal dev down`"
    assert not list((state / "pids" / "pods").glob("*.json")), "a pod process outlived `shoal dev down`"
    after = _shoal_dev("status", *where, timeout=60)
    assert after.returncode == 3
    assert after.stdout.count(" stopped ") == len(COMPONENTS) + 2


def test_dev_up_with_a_malformed_node_file_fails_with_one_line(tmp_path):
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("nodes:\n  - name: Bad_Name\n")
    result = _shoal_dev("up", "--state-dir", str(tmp_path / "s"), "--nodes", str(nodes),
                        "--detach", timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "nodes[0].name" in result.stderr
    assert "Traceback" not in result.stderr


def _pods(state, tier: str) -> list[dict]:
    return [p for p in fleet.read_status(state).get("pods", [])
            if p["kind"] == "serving" and p["name"].startswith(f"{tier}-")]


def _chat(url: str, content: str, tier: str | None = None) -> tuple[int, dict, dict]:
    # No `model`: the policy routes the request (a tier's name would pin that tier).
    body = {"messages": [{"role": "user", "content": content}],
            "max_tokens": 30, "temperature": 0}
    headers = {"Content-Type": "application/json", **({"x-shoal-tier": tier} if tier else {})}
    request = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, {"error": error.read().decode()}


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except OSError:
        return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")
