"""`shoal dev up | status | down` as a user runs them, on a second, separate cluster."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shoal.devcluster import processes
from shoal.devcluster.cluster import COMPONENTS

pytestmark = pytest.mark.e2e

NODES = """\
nodes:
  - name: a100
    count: 1
    gpu: {product: NVIDIA-A100-SXM4-40GB, count: 8}
"""


def _shoal_dev(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.devcluster.commands", "dev", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_dev_up_detached_then_status_then_down_leaves_no_process(tmp_path, binaries, tools):
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(NODES)
    state = tmp_path / "state"
    where = ["--name", "cli", "--state-dir", str(state)]

    up = _shoal_dev("up", *where, "--nodes", str(nodes), "--detach", "--no-operator",
                    "--no-examples")
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={state / 'kubeconfig'}" in up.stdout
        assert "a100-0" in up.stdout and "NVIDIA-A100-SXM4-40GB" in up.stdout
        pids = {c: processes.running_pid(state, c) for c in COMPONENTS}
        assert all(pids.values()), pids

        status = _shoal_dev("status", *where, timeout=60)
        assert status.returncode == 0, status.stderr
        for component in COMPONENTS:
            assert f"{component}" in status.stdout
        assert status.stdout.count("running") == len(COMPONENTS)
        info = json.loads((state / "cluster.json").read_text())
        assert info["nodes"] == ["a100-0"]
    finally:
        down = _shoal_dev("down", *where, timeout=120)
    assert down.returncode == 0, down.stderr
    for component, pid in pids.items():
        assert not processes.is_running(state, component), component
        assert not _alive(pid), f"{component} (pid {pid}) outlived `shoal dev down`"
    after = _shoal_dev("status", *where, timeout=60)
    assert after.returncode == 3
    assert after.stdout.count("stopped") >= len(COMPONENTS)


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
