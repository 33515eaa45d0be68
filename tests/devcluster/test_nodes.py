"""Parsing node files and rendering kwok Nodes."""

import pytest

from shoal.devcluster.nodes import (
    GPU_TAINT,
    InvalidNodesFile,
    load_nodes,
    node_manifest,
    node_manifests,
    parse_nodes,
)


def test_default_node_set_has_two_h100_two_l4_and_one_cpu_node():
    manifests = node_manifests(load_nodes())
    products = [m["metadata"]["labels"].get("nvidia.com/gpu.product") for m in manifests]
    assert products == ["NVIDIA-H100-80GB-HBM3"] * 2 + ["NVIDIA-L4"] * 2 + [None]
    gpus = [m["status"]["capacity"].get("nvidia.com/gpu") for m in manifests]
    assert gpus == ["8", "8", "4", "4", None]
    assert [m["metadata"]["name"] for m in manifests] == [
        "gpu-h100-0", "gpu-h100-1", "gpu-l4-0", "gpu-l4-1", "cpu-0"]


def test_gpu_node_is_labelled_tainted_and_managed_by_kwok():
    (group,) = parse_nodes("""
nodes:
  - name: l4
    count: 1
    instanceType: g6.12xlarge
    cpu: "48"
    memory: 192Gi
    gpu: {product: NVIDIA-L4, count: 4, memoryMiB: 23034, family: ada-lovelace}
""")
    node = node_manifest(group, "l4-0")
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.present"] == "true"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert labels["nvidia.com/gpu.count"] == "4"
    assert labels["nvidia.com/gpu.memory"] == "23034"
    assert labels["node.kubernetes.io/instance-type"] == "g6.12xlarge"
    assert labels["kubernetes.io/hostname"] == "l4-0"
    assert node["spec"]["taints"] == [GPU_TAINT]
    assert node["status"]["capacity"] == node["status"]["allocatable"] == {
        "cpu": "48", "memory": "192Gi", "pods": "110", "ephemeral-storage": "1Ti",
        "nvidia.com/gpu": "4"}


def test_cpu_node_has_no_gpu_labels_and_no_taint():
    (group,) = parse_nodes("nodes:\n  - name: cpu\n")
    node = node_manifest(group, "cpu-0")
    assert not any(k.startswith("nvidia.com/") for k in node["metadata"]["labels"])
    assert "taints" not in node["spec"]


def test_extra_labels_and_taints_are_kept_and_gpu_taint_not_doubled():
    (group,) = parse_nodes("""
nodes:
  - name: a
    labels: {team: ml}
    taints: [{key: nvidia.com/gpu, value: dedicated, effect: NoExecute}]
    gpu: {product: X, count: 1}
""")
    node = node_manifest(group, "a-0")
    assert node["metadata"]["labels"]["team"] == "ml"
    assert node["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "dedicated", "effect": "NoExecute"}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes: 3", "`nodes` list"),
        ("[1, 2]", "`nodes` list"),
        ("nodes:\n  - count: 1\n", r"nodes\[0\]\.name"),
        ("nodes:\n  - name: Bad_Name\n", r"nodes\[0\]\.name"),
        ("nodes:\n  - name: a\n    count: -1\n", r"nodes\[0\]\.count"),
        ("nodes:\n  - name: a\n    gpu: {product: X, count: 0}\n", r"nodes\[0\]\.gpu\.count"),
        ("nodes:\n  - name: a\n    gpus: 1\n", "unknown field"),
        ("nodes:\n  - name: a\n  - name: a\n", "appears twice"),
        ("nodes: [\n", "not valid YAML"),
    ],
)
def test_malformed_node_files_name_what_to_fix(text, message):
    with pytest.raises(InvalidNodesFile, match=message):
        parse_nodes(text)
