"""`shoal dev up | status | down` as a user runs them, on a second, separate cluster."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from e2e.helpers import is_true, wait_for
from shoal.devcluster import processes
from shoal.devcluster.cluster import COMPONENTS, OPERATOR
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


def test_dev_up_detached_runs_operator_and_examples_then_down_leaves_no_process(tmp_path, binaries, tools):
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(default_nodes_text().rstrip() + "\n" + EXTRA_NODES)
    state = tmp_path / "state"
    where = ["--name", "cli", "--state-dir", str(state)]

    up = _shoal_dev("up", *where, "--nodes", str(nodes), "--detach")
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={state / 'kubeconfig'}" in up.stdout
        assert "a100-0" in up.stdout and "NVIDIA-A100-SXM4-40GB" in up.stdout
        pids = {c: processes.running_pid(state, c) for c in (*COMPONENTS, OPERATOR)}
        assert all(pids.values()), pids
        info = json.loads((state / "cluster.json").read_text())
        assert info["nodes"][-1] == "a100-0"

        kubectl = Kubectl(tools.kubectl, state / "kubeconfig")
        wait_for(lambda: (tiers := kubectl.json("get", "modeltiers", "-n", "default")["items"])
                 and all(is_true(t, "Ready") for t in tiers) and tiers,
                 120, "the example ModelTiers to be Ready under the operator `dev up` started")

        status = _shoal_dev("status", *where, timeout=60)
        assert status.returncode == 0, status.stderr
        assert status.stdout.count(" running ") == len(COMPONENTS) + 1
        assert "small" in status.stdout and "support-8b" in status.stdout
    finally:
        down = _shoal_dev("down", *where, timeout=120)
    assert down.returncode == 0, down.stderr
    for component, pid in pids.items():
        assert not processes.is_running(state, component), component
        assert not _alive(pid), f"{component} (pid {pid}) outlived `shoal dev down`"
    after = _shoal_dev("status", *where, timeout=60)
    assert after.returncode == 3
    assert after.stdout.count(" stopped ") == len(COMPONENTS) + 1


def test_dev_up_with_a_malformed_node_file_fails_with_one_line(tmp_path):
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("nodes:\n  - name: Bad_Name\n")
    result = _shoal_dev("up", "--state-dir", str(tmp_path / "s"), "--nodes", str(nodes),
                        "--detach", timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "nodes[0].name" in result.stderr
    assert "Traceback" not in result.stderr


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")
