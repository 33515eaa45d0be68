"""Simulated nodes: a small YAML file of node groups -> kwok-managed Node manifests.

Pure: parsing and rendering only. The format (see ``nodes-default.yaml``)::

    nodes:
      - name: gpu-l4          # nodes are named gpu-l4-0, gpu-l4-1, ...
        count: 2
        instanceType: g6.12xlarge
        cpu: "48"
        memory: 192Gi
        pods: 110
        gpu:                  # omit for a CPU-only group
          product: NVIDIA-L4
          count: 4
          memoryMiB: 23034
          family: ada-lovelace
        labels: {}            # optional extra labels
        taints: []            # optional extra taints (the GPU taint is added for GPU groups)
"""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

GPU_RESOURCE = "nvidia.com/gpu"
# The NVIDIA GPU operator taints GPU nodes with this key, so only pods that tolerate it
# (and, in practice, request GPUs) land there.
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
DEFAULT_NODES_FILE = "nodes-default.yaml"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class InvalidNodesFile(ValueError):
    """The node file is malformed; the message names the group and field to fix."""


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    product: str
    count: int
    memory_mib: int | None = None
    family: str | None = None


@dataclasses.dataclass(frozen=True)
class NodeGroup:
    name: str
    count: int = 1
    cpu: str = "32"
    memory: str = "128Gi"
    pods: int = 110
    instance_type: str | None = None
    gpu: GpuSpec | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()

    def node_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.count)]


def _group(raw: Any, index: int) -> NodeGroup:
    where = f"nodes[{index}]"
    if not isinstance(raw, dict):
        raise InvalidNodesFile(f"{where} must be a mapping")
    known = {"name", "count", "cpu", "memory", "pods", "instanceType", "gpu", "labels", "taints"}
    unknown = set(raw) - known
    if unknown:
        raise InvalidNodesFile(f"{where} has unknown field(s): {', '.join(sorted(unknown))}")
    name = raw.get("name")
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > 50:
        raise InvalidNodesFile(f"{where}.name must be a lowercase DNS label, got {name!r}")
    count = raw.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise InvalidNodesFile(f"{where}.count must be a non-negative integer, got {count!r}")
    pods = raw.get("pods", 110)
    if not isinstance(pods, int) or isinstance(pods, bool) or pods < 1:
        raise InvalidNodesFile(f"{where}.pods must be a positive integer, got {pods!r}")
    gpu = None
    if raw.get("gpu") is not None:
        g = raw["gpu"]
        if not isinstance(g, dict) or not isinstance(g.get("product"), str):
            raise InvalidNodesFile(f"{where}.gpu.product must be a string")
        gcount = g.get("count")
        if not isinstance(gcount, int) or isinstance(gcount, bool) or gcount < 1:
            raise InvalidNodesFile(f"{where}.gpu.count must be a positive integer, got {gcount!r}")
        gpu = GpuSpec(product=g["product"], count=gcount, memory_mib=g.get("memoryMiB"),
                      family=g.get("family"))
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict):
        raise InvalidNodesFile(f"{where}.labels must be a mapping")
    taints = raw.get("taints") or []
    if not isinstance(taints, list) or not all(isinstance(t, dict) and "key" in t for t in taints):
        raise InvalidNodesFile(f"{where}.taints must be a list of taints with a key")
    return NodeGroup(
        name=name, count=count, cpu=str(raw.get("cpu", "32")),
        memory=str(raw.get("memory", "128Gi")), pods=pods,
        instance_type=raw.get("instanceType"), gpu=gpu,
        labels={str(k): str(v) for k, v in labels.items()},
        taints=tuple(taints),
    )


def parse_nodes(text: str) -> list[NodeGroup]:
    """Node groups from the YAML text of a node file; names must be unique."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidNodesFile(f"not valid YAML: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise InvalidNodesFile("the file must be a mapping with a `nodes` list")
    groups = [_group(raw, i) for i, raw in enumerate(data["nodes"])]
    seen: set[str] = set()
    for group in groups:
        for node in group.node_names():
            if node in seen:
                raise InvalidNodesFile(f"node name {node!r} appears twice")
            seen.add(node)
    return groups


def default_nodes_text() -> str:
    return resources.files("shoal.devcluster").joinpath(DEFAULT_NODES_FILE).read_text()


def load_nodes(path: Path | None = None) -> list[NodeGroup]:
    """The node groups of ``path``, or the packaged default set."""
    return parse_nodes(path.read_text() if path else default_nodes_text())


def node_manifest(group: NodeGroup, name: str) -> dict[str, Any]:
    """A Node that kwok manages (by annotation), with capacity, labels and taints."""
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "type": "kwok",
        "shoal.dev/node-group": group.name,
    }
    if group.instance_type:
        labels["node.kubernetes.io/instance-type"] = group.instance_type
    resources_: dict[str, str] = {
        "cpu": group.cpu,
        "memory": group.memory,
        "pods": str(group.pods),
        "ephemeral-storage": "1Ti",
    }
    taints = list(group.taints)
    if group.gpu is not None:
        gpu = group.gpu
        labels.update({
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": gpu.product,
            "nvidia.com/gpu.count": str(gpu.count),
        })
        if gpu.memory_mib is not None:
            labels["nvidia.com/gpu.memory"] = str(gpu.memory_mib)
        if gpu.family:
            labels["nvidia.com/gpu.family"] = gpu.family
        resources_[GPU_RESOURCE] = str(gpu.count)
        if not any(t.get("key") == GPU_RESOURCE for t in taints):
            taints.append(dict(GPU_TAINT))
    labels.update(group.labels)
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = taints
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": labels,
        },
        "spec": spec,
        "status": {
            "allocatable": dict(resources_),
            "capacity": dict(resources_),
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                "containerRuntimeVersion": "kwok",
                "osImage": "kwok",
                "kernelVersion": "kwok",
            },
            "phase": "Running",
        },
    }


def node_manifests(groups: list[NodeGroup]) -> list[dict[str, Any]]:
    return [node_manifest(g, name) for g in groups for name in g.node_names()]
