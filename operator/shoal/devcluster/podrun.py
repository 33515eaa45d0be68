"""What to run on this machine for one simulated Shoal pod. Pure: pod in, plan out.

kwok plays the kubelet and runs nothing. For a pod of a ModelTier, the dev cluster's fleet
(``shoal.devcluster.fleet``) runs what the pod would run, from the pod's own spec:

- the router sidecar's container (``shoal router --config ...``), with the pod's volumes
  (the router ConfigMap, the API-key Secrets) written to files, listening on the pod's IP;
- an engine standing in for vLLM (``engines``), listening on the pod's IP and the engine
  container's port.

For an evaluation Job's pod it runs the Job's container (``shoal eval ...``) with the
engine's command in place of ``vllm serve``; its exit code and termination message become
the pod's (``fleet`` hands them to kwok).

A pod's IP is a loopback address, so binding to it needs no privileges, and the pod's own
``localhost`` (how the sidecar reaches its engine) becomes the pod's IP. What only resolves
inside a cluster is rewritten, in arguments, environment values and the mounted
configuration files alike:

- a path under a volume's mount path -> the same path under the pod's work directory;
- ``http://127.0.0.1:P`` and ``http://localhost:P`` -> ``http://POD_IP:P``;
- ``http://NAME.NS.svc[.cluster.local][:P]/...`` -> the fleet's local forwarder of that
  Service (``service_url``), which follows the Service's ready endpoints.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from shoal.api.naming import COMPONENT_EVALUATION, COMPONENT_INFERENCE, EVAL_CONTAINER, TIER_LABEL
from shoal.api.routerconfig import CHECKPOINT_ENV
from shoal.devcluster.engines import Engine

ROUTER_CONTAINER = "router"
ENGINE_CONTAINER = "engine"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
_SERVICE_HOST = re.compile(r"^(?P<name>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)"
                           r"\.svc(\.cluster\.local)?\.?$")

ServiceURL = Callable[[str, str], str]  # (namespace, name) -> "http://127.0.0.1:PORT"


class CannotRun(ValueError):
    """The pod cannot be run here (a missing ConfigMap or Secret, no engine for it): why."""


@dataclasses.dataclass(frozen=True)
class Process:
    role: str  # "engine", "router" or "eval"
    argv: list[str]
    env: dict[str, str]


@dataclasses.dataclass(frozen=True)
class PodPlan:
    kind: str  # "serving" or "evaluation"
    ip: str
    files: dict[Path, tuple[bytes, int]]  # path -> (content, mode)
    directories: list[Path]
    processes: list[Process]
    termination_log: Path | None = None


@dataclasses.dataclass(frozen=True)
class Objects:
    """The objects a pod refers to, as read from the API (Secret data base64 as stored)."""

    config_maps: Mapping[tuple[str, str], Mapping[str, str]]
    secrets: Mapping[tuple[str, str], Mapping[str, str]]


def pod_kind(pod: Mapping[str, Any]) -> str | None:
    labels = pod.get("metadata", {}).get("labels") or {}
    if labels.get("app.kubernetes.io/managed-by") != "shoal" or TIER_LABEL not in labels:
        return None
    component = labels.get("app.kubernetes.io/component")
    return {COMPONENT_INFERENCE: "serving", COMPONENT_EVALUATION: "evaluation"}.get(component)


class Rewriter:
    """Maps in-pod paths and in-cluster URLs to what works on this machine."""

    def __init__(self, ip: str, mounts: Mapping[str, Path], service_url: ServiceURL) -> None:
        self.ip = ip
        # Longest mount path first, so /etc/shoal/router wins over /etc/shoal.
        self.mounts = sorted(mounts.items(), key=lambda item: -len(item[0]))
        self.service_url = service_url

    def __call__(self, value: str) -> str:
        for mount, local in self.mounts:
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(local) + value[len(mount.rstrip("/")):]
        if value.startswith(("http://", "https://")):
            return self.url(value)
        return value

    def url(self, value: str) -> str:
        parts = urlsplit(value)
        host = parts.hostname or ""
        if host in ("127.0.0.1", "localhost"):
            netloc = self.ip + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc))
        service = _SERVICE_HOST.match(host)
        if service:
            base = urlsplit(self.service_url(service["ns"], service["name"]))
            return urlunsplit(parts._replace(scheme=base.scheme, netloc=base.netloc))
        return value

    def walk(self, data: Any) -> Any:
        """``data`` (parsed JSON or YAML) with every string rewritten."""
        if isinstance(data, str):
            return self(data)
        if isinstance(data, list):
            return [self.walk(v) for v in data]
        if isinstance(data, dict):
            return {k: self.walk(v) for k, v in data.items()}
        return data


def _rewrite_file(name: str, content: bytes, rewrite: Rewriter) -> bytes:
    """A configuration file with in-cluster paths and URLs rewritten (JSON or YAML only)."""
    try:
        if name.endswith(".json"):
            data = json.loads(content)
            walked = rewrite.walk(data)
            # Nothing to rewrite: the bytes as the kubelet would deliver them (a model's
            # version is the sha256 of its file).
            return content if walked == data else (json.dumps(walked, indent=2) + "\n").encode()
        if name.endswith((".yaml", ".yml")):
            return yaml.safe_dump(rewrite.walk(yaml.safe_load(content)), sort_keys=False).encode()
    except (ValueError, yaml.YAMLError):
        return content  # not ours to fix: the program reading it will say what is wrong
    return content


def _volume_files(volume: Mapping[str, Any], namespace: str, objects: Objects) -> dict[str, tuple[bytes, int]]:
    """The files of a configMap, secret or projected volume: relative path -> (content, mode)."""
    if "projected" in volume:
        projected: dict[str, tuple[bytes, int]] = {}
        for source in volume["projected"].get("sources") or []:
            projected.update(_volume_files({"name": volume["name"], **source}, namespace, objects))
        return projected
    if "configMap" in volume:
        source, data_of, kind = volume["configMap"], objects.config_maps, "ConfigMap"
    else:
        source, data_of, kind = volume["secret"], objects.secrets, "Secret"
    name = source.get("name") or source.get("secretName")
    data = data_of.get((namespace, name))
    if data is None:
        if source.get("optional"):
            return {}
        raise CannotRun(f"{kind} {namespace}/{name} (volume {volume['name']}) does not exist")
    mode = int(source.get("defaultMode", 0o644 if kind == "ConfigMap" else 0o600)) & 0o700 or 0o600
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    files = {}
    for item in items:
        if item["key"] not in data and source.get("optional"):
            continue  # as the kubelet does: an optional source's missing key is no file
        if item["key"] not in data:
            raise CannotRun(f"{kind} {namespace}/{name} has no key {item['key']!r} (volume {volume['name']})")
        raw = data[item["key"]]
        content = base64.b64decode(raw) if kind == "Secret" else raw.encode()
        files[item["path"]] = (content, int(item.get("mode", mode)) & 0o700 or 0o600)
    return files


def _env(container: Mapping[str, Any], namespace: str, objects: Objects, rewrite: Rewriter) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = rewrite(str(entry["value"]))
            continue
        source = entry.get("valueFrom") or {}
        if "secretKeyRef" in source:
            ref, data_of, kind = source["secretKeyRef"], objects.secrets, "Secret"
        elif "configMapKeyRef" in source:
            ref, data_of, kind = source["configMapKeyRef"], objects.config_maps, "ConfigMap"
        else:
            continue  # fieldRef and resourceFieldRef: nothing Shoal's programs read
        data = data_of.get((namespace, ref["name"])) or {}
        if ref["key"] not in data:
            if ref.get("optional"):
                continue
            raise CannotRun(f"{kind} {namespace}/{ref['name']} has no key {ref['key']!r} (env {entry['name']})")
        value = data[ref["key"]]
        env[entry["name"]] = base64.b64decode(value).decode() if kind == "Secret" else value
    return env


def _shoal_argv(container: Mapping[str, Any], python: str) -> list[str]:
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    if not argv or argv[0] != "shoal":
        raise CannotRun(f"container {container.get('name')} does not run the shoal command: {argv[:2]}")
    return [python, "-m", "shoal.cli", *argv[1:]]


def _container(pod: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    for container in pod["spec"].get("containers") or []:
        if container.get("name") == name:
            return container
    raise CannotRun(f"the pod has no {name!r} container")


def _option(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _replace_option(args: list[str], flag: str, value: str) -> list[str]:
    out, i = [], 0
    while i < len(args):
        if args[i] == flag:
            i += 2
            continue
        if args[i].startswith(flag + "="):
            i += 1
            continue
        out.append(args[i])
        i += 1
    return out + [flag, value]


def plan_pod(
    pod: Mapping[str, Any],
    objects: Objects,
    *,
    engine: Engine | None,
    workdir: Path,
    service_url: ServiceURL,
    python: str = sys.executable,
) -> PodPlan:
    """The files and processes that stand in for ``pod`` (Running, with an IP).

    Raises CannotRun, naming what is missing, when the pod refers to an object that does
    not exist or no engine is mapped to its tier.
    """
    kind = pod_kind(pod)
    if kind is None:
        raise CannotRun("not a pod of a ModelTier")
    meta, spec = pod["metadata"], pod["spec"]
    namespace = meta["namespace"]
    ip = pod.get("status", {}).get("podIP")
    if not ip:
        raise CannotRun("the pod has no IP yet")
    tier = meta["labels"][TIER_LABEL]
    if engine is None:
        raise CannotRun(f"no engine of the dev cluster's engines file is mapped to tier {tier}")

    volumes_dir = workdir / "volumes"
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    local = {name: volumes_dir / name for name in volumes}
    main = _container(pod, ROUTER_CONTAINER if kind == "serving" else EVAL_CONTAINER)
    mounts = {m["mountPath"]: local[m["name"]] for m in main.get("volumeMounts") or [] if m["name"] in local}
    if kind == "serving":
        engine_container = _container(pod, ENGINE_CONTAINER)
        for m in engine_container.get("volumeMounts") or []:
            mounts.setdefault(m["mountPath"], local.get(m["name"], volumes_dir / m["name"]))
    termination_log = workdir / "termination-log"
    mounts.setdefault(main.get("terminationMessagePath") or DEFAULT_TERMINATION_LOG, termination_log)
    rewrite = Rewriter(ip, mounts, service_url)

    files: dict[Path, tuple[bytes, int]] = {}
    directories = [workdir]
    for name, volume in volumes.items():
        if "configMap" in volume or "secret" in volume or "projected" in volume:
            for path, (content, mode) in _volume_files(volume, namespace, objects).items():
                files[local[name] / path] = (_rewrite_file(path, content, rewrite), mode)
        else:
            directories.append(local[name])  # emptyDir and anything else: an empty directory
    env = _env(main, namespace, objects, rewrite)
    argv = [rewrite(a) for a in _shoal_argv(main, python)]

    if kind == "serving":
        port = next((p["containerPort"] for p in engine_container.get("ports") or []), 8000)
        engine_args = list(engine_container.get("args") or [])
        model = _option(engine_args, "--served-model-name") or tier
        processes = [
            Process("engine", engine.command(host=ip, port=port, model=model, tier=tier,
                                             checkpoint=env.get(CHECKPOINT_ENV, ""), python=python), {}),
            Process("router", _replace_option(argv, "--host", ip), env),
        ]
        return PodPlan("serving", ip, files, directories, processes)

    # The evaluation: the engine of the tier in place of `vllm serve`, on a free loopback
    # port (the pod's port may be taken by another pod's engine on this machine).
    argv = _replace_option(argv, "--engine-port", "0")
    argv = _replace_option(argv, "--termination-log", str(termination_log))
    command = engine.command(host="127.0.0.1", port="{port}", model="{model}", tier=tier, python=python)
    argv = _replace_option(argv, "--engine-command", json.dumps(command))
    return PodPlan("evaluation", ip, files, directories, [Process("eval", argv, env)],
                   termination_log=termination_log)
