"""ModelTier -> the Deployment running vLLM with the Shoal router sidecar.

Pure: the validated tier plus a small context in, a manifest dict out.

Pod Security: the pod is written to pass the "restricted" Pod Security Standard. Both
containers run as a non-root UID with every capability dropped, no privilege escalation
and the RuntimeDefault seccomp profile. The vLLM image itself defaults to root and writes
caches under $HOME; it runs unchanged as UID 1000 because every path it writes to (HOME,
the Hugging Face and vLLM caches, /tmp, /dev/shm) is an emptyDir owned through fsGroup.
The sidecar also gets a read-only root filesystem; the engine cannot (Triton and
torch.compile write into the Python tree at start-up), which "restricted" does not require.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from shoal.api.modeltier import ModelTier
from shoal.api.routerconfig import CHECKPOINT_ENV
from shoal.api.routerconfig import CLASSIFIER_DIR as CLASSIFIER_MOUNT
from shoal.api.routerconfig import LABELS_DIR as LABELS_MOUNT

from shoal.api.naming import (
    CHECKPOINT_ANNOTATION,
    CONFIG_KEY,
    CONFIG_MOUNT,
    LEARNED_MODEL_KEY,
    LEARNED_MODEL_PATH,
    SECRETS_MOUNT,
    child_metadata,
    router_configmap_name,
    tier_labels,
    tier_selector,
)

ENGINE_CONTAINER = "engine"
ROUTER_CONTAINER = "router"
RUN_AS_USER = 1000
MODEL_CACHE_MOUNT = "/models"
PVC_MOUNT_ROOT = "/mnt/models"
CONFIG_CHECKSUM_ANNOTATION = "shoal.dev/config-checksum"
# The kubelet sends SIGTERM to both containers at once. The engine waits this long before
# it stops, so the router can stop taking new requests and finish those in flight first:
# longer than the router's drain (ServerConfig.drain_seconds, 20 s by default).
ENGINE_DRAIN_SECONDS = 25
TERMINATION_GRACE_SECONDS = 120
STARTUP_PROBE_PERIOD_SECONDS = 10
# The router's volume for shadow labels (RoutePolicy.spec.shadow.labels). Always there, so
# that turning labels on or off is a routing change that never restarts a GPU pod; empty
# (and free) while labels are off. The limit is the schema's largest labels.maxBytes.
LABELS_VOLUME_LIMIT = "1Gi"


@dataclass(frozen=True)
class SecretMount:
    """A Secret whose keys the router reads as files (external tiers' API keys)."""

    secret_name: str
    keys: tuple[str, ...]


@dataclass(frozen=True)
class DeploymentContext:
    """What the Deployment needs beyond the tier's own spec."""

    replicas: int
    checkpoint: str
    config_checksum: str
    secret_mounts: tuple[SecretMount, ...] = field(default_factory=tuple)
    # ConfigMap holding the RoutePolicy's trained classifier, mounted for the router.
    classifier_config_map: str | None = None
    # The operator's ConfigMap of the classifier learned from evaluations (optional in the
    # volume: it exists once a promotion taught the classifier; learnFromEvaluations).
    learned_classifier_config_map: str | None = None


def model_location(uri: str) -> tuple[str, list[str], dict[str, Any] | None]:
    """How vLLM loads a model URI: (model argument, extra args, PVC volume or None)."""
    parsed = urlparse(uri)
    if parsed.scheme == "hf":
        repo = parsed.netloc + parsed.path
        revision = None
        if "@" in repo:
            repo, revision = repo.split("@", 1)
        return repo, (["--revision", revision] if revision else []), None
    if parsed.scheme in ("s3", "gs"):
        # vLLM streams safetensors straight from object storage with the Run:ai
        # streamer, so weights never need a second copy on the node's disk.
        return uri, ["--load-format", "runai_streamer"], None
    if parsed.scheme == "pvc":
        claim = parsed.netloc
        path = parsed.path.lstrip("/")
        mount = f"{PVC_MOUNT_ROOT}/{claim}"
        volume = {"name": f"pvc-{claim}"[:63], "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        return (f"{mount}/{path}" if path else mount), [], {"volume": volume, "mountPath": mount}
    raise ValueError(f"unsupported model URI scheme: {uri}")


def engine_args(tier: ModelTier, checkpoint: str) -> list[str]:
    """The `vllm serve` arguments for a tier serving `checkpoint` (a model URI)."""
    spec = tier.spec
    engine = spec.engine
    model_arg, location_args, _ = model_location(checkpoint)
    args = [
        model_arg,
        "--served-model-name", spec.model.name,
        "--host", "0.0.0.0",
        "--port", str(engine.port),
        "--download-dir", MODEL_CACHE_MOUNT,
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
        "--dtype", engine.dtype,
        "--gpu-memory-utilization", f"{engine.gpu_memory_utilization:g}",
    ]
    args += location_args
    if engine.max_model_len is not None:
        args += ["--max-model-len", str(engine.max_model_len)]
    if engine.max_num_seqs is not None:
        args += ["--max-num-seqs", str(engine.max_num_seqs)]
    if engine.quantization is not None:
        args += ["--quantization", engine.quantization]
    args.append("--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching")
    args += lora_args(tier)
    args += list(engine.extra_args)
    return args


def lora_args(tier: ModelTier) -> list[str]:
    """The engine's LoRA flags: present when the tier lists adapters, and independent of
    which adapters (their names and sources live in the router's ConfigMap), so adding,
    removing or re-pointing an adapter never changes the pod template. The adapters
    themselves are loaded at run time by the sidecar (router/adapters.py)."""
    if not tier.spec.adapters:
        return []
    lora = tier.spec.engine.lora
    args = ["--enable-lora", "--max-loras", str(lora.max_loras), "--max-lora-rank", str(lora.max_lora_rank)]
    if lora.max_cpu_loras is not None:
        args += ["--max-cpu-loras", str(lora.max_cpu_loras)]
    return args


def adapter_location(source: str) -> tuple[str | None, str | None]:
    """What the engine is asked to load for an adapter source: (lora_path, None), or
    (None, why not) for a source vLLM cannot load at run time.

    pvc://CLAIM/PATH is read from the claim's read-only mount in the engine container;
    hf://ORG/REPO is downloaded by vLLM itself. vLLM's run-time loader takes no revision
    and no object-store URI, so hf://...@REV, s3:// and gs:// are refused with a reason
    rather than loaded unpinned or not at all.
    """
    parsed = urlparse(source)
    if parsed.scheme == "pvc":
        path = parsed.path.lstrip("/")
        mount = f"{PVC_MOUNT_ROOT}/{parsed.netloc}"
        return (f"{mount}/{path}" if path else mount), None
    if parsed.scheme == "hf":
        repo = parsed.netloc + parsed.path
        if "@" in repo:
            return None, "vLLM loads Hub adapters at run time without a revision; use an unpinned hf:// source or copy the adapter to a pvc:// claim"
        return repo, None
    return None, f"vLLM cannot load {parsed.scheme}:// adapters at run time; copy the adapter to a pvc:// claim"


def adapter_claims(tier: ModelTier) -> list[str]:
    """PersistentVolumeClaims holding pvc:// adapters, each mounted read-only once. A new
    claim changes the pod template (a restart); a new path on a mounted claim does not."""
    claims: list[str] = []
    for adapter in tier.spec.adapters:
        parsed = urlparse(adapter.source)
        if parsed.scheme == "pvc" and parsed.netloc not in claims:
            claims.append(parsed.netloc)
    return sorted(claims)


def _restricted_container_security(read_only_root: bool) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def engine_runtime_env() -> list[dict[str, Any]]:
    """Where vLLM writes as a non-root user (every path an emptyDir), and no telemetry.

    Shared by the serving pods and the evaluation Job, which starts vLLM the same way.
    """
    return [
        {"name": "HOME", "value": "/tmp/home"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/cache"},
        {"name": "HF_HOME", "value": f"{MODEL_CACHE_MOUNT}/huggingface"},
        {"name": "VLLM_CACHE_ROOT", "value": "/tmp/cache/vllm"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
    ]


def _engine_env(tier: ModelTier) -> list[dict[str, Any]]:
    env = engine_runtime_env()
    if tier.spec.adapters:
        # Lets the sidecar load and unload adapters over the engine's loopback API
        # (/v1/load_lora_adapter), so an adapter change never restarts the engine.
        env.append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
    return env + [e.to_wire() for e in tier.spec.engine.env]


def _engine_container(tier: ModelTier, checkpoint: str) -> dict[str, Any]:
    spec = tier.spec
    gpu = spec.resources.gpu
    requests: dict[str, Any] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    limits: dict[str, Any] = {"memory": spec.resources.memory}
    if gpu.count > 0:
        # Extended resources cannot be overcommitted: request and limit must be equal.
        requests[gpu.resource_name] = str(gpu.count)
        limits[gpu.resource_name] = str(gpu.count)
    health = {"httpGet": {"path": "/health", "port": "engine"}}
    container: dict[str, Any] = {
        "name": ENGINE_CONTAINER,
        "image": spec.engine.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["vllm", "serve"],
        "args": engine_args(tier, checkpoint),
        "env": _engine_env(tier),
        "ports": [{"name": "engine", "containerPort": spec.engine.port, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        # Model download and load can take many minutes; liveness only starts once the
        # startup probe has passed, so a slow load is never killed as a hang.
        "startupProbe": {
            **health,
            "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": math.ceil(spec.engine.startup_timeout_seconds / STARTUP_PROBE_PERIOD_SECONDS),
        },
        "readinessProbe": {**health, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 15, "timeoutSeconds": 10, "failureThreshold": 4},
        "lifecycle": {"preStop": {"sleep": {"seconds": ENGINE_DRAIN_SECONDS}}},
        "securityContext": _restricted_container_security(read_only_root=False),
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.model.credentials_secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": spec.model.credentials_secret_ref.name}}]
    _, _, pvc = model_location(checkpoint)
    if pvc is not None:
        container["volumeMounts"].append({"name": pvc["volume"]["name"], "mountPath": pvc["mountPath"], "readOnly": True})
    mounted = {m["name"] for m in container["volumeMounts"]}
    for claim in adapter_claims(tier):
        _, _, volume = model_location(f"pvc://{claim}")
        if volume is not None and volume["volume"]["name"] not in mounted:
            container["volumeMounts"].append({"name": volume["volume"]["name"], "mountPath": volume["mountPath"], "readOnly": True})
    return container


def _router_container(tier: ModelTier, ctx: DeploymentContext) -> dict[str, Any]:
    router = tier.spec.router
    secret_mounts = ctx.secret_mounts
    mounts = [
        {"name": "router-config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "shadow-labels", "mountPath": LABELS_MOUNT},
    ]
    if ctx.classifier_config_map:
        mounts.append({"name": "classifier", "mountPath": CLASSIFIER_MOUNT, "readOnly": True})
    for mount in secret_mounts:
        mounts.append(
            {"name": _secret_volume_name(mount.secret_name), "mountPath": f"{SECRETS_MOUNT}/{mount.secret_name}", "readOnly": True}
        )
    return {
        "name": ROUTER_CONTAINER,
        "image": router.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["shoal"],
        "args": ["router", "--config", f"{CONFIG_MOUNT}/{CONFIG_KEY}", "--port", str(router.port)],
        # The checkpoint this pod's engine serves: it changes exactly when the engine's
        # arguments do (a new pod), so it is right for this pod whatever other pods run.
        # The sidecar keys its cache by it and tells peers (x-shoal-checkpoint, /shoal/state).
        "env": [{"name": CHECKPOINT_ENV, "value": ctx.checkpoint}],
        "ports": [{"name": "http", "containerPort": router.port, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": router.resources.cpu, "memory": router.resources.memory},
            "limits": {"memory": router.resources.memory},
        },
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "securityContext": _restricted_container_security(read_only_root=True),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _secret_volume_name(secret_name: str) -> str:
    return f"secret-{secret_name}"[:63].rstrip("-.")


def _volumes(tier: ModelTier, ctx: DeploymentContext) -> list[dict[str, Any]]:
    checkpoint, secret_mounts = ctx.checkpoint, ctx.secret_mounts
    res = tier.spec.resources
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shared_memory_size}},
        {"name": "model-cache", "emptyDir": {"sizeLimit": res.model_cache_size}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "router-config", "configMap": {"name": router_configmap_name(tier.name)}},
        {"name": "shadow-labels", "emptyDir": {"sizeLimit": LABELS_VOLUME_LIMIT}},
    ]
    if ctx.classifier_config_map and ctx.learned_classifier_config_map:
        # Both models in one volume: the user's as mounted before, and the learned one under
        # learned/ once it exists. Its later versions arrive by the kubelet's ConfigMap sync
        # and the sidecar reloads them, so a promotion never changes this pod template.
        volumes.append({
            "name": "classifier",
            "projected": {"sources": [
                {"configMap": {"name": ctx.classifier_config_map}},
                {"configMap": {
                    "name": ctx.learned_classifier_config_map,
                    "optional": True,
                    "items": [{"key": LEARNED_MODEL_KEY, "path": LEARNED_MODEL_PATH}],
                }},
            ]},
        })
    elif ctx.classifier_config_map:
        volumes.append({"name": "classifier", "configMap": {"name": ctx.classifier_config_map}})
    _, _, pvc = model_location(checkpoint)
    if pvc is not None:
        volumes.append(pvc["volume"])
    for claim in adapter_claims(tier):
        _, _, volume = model_location(f"pvc://{claim}")
        if volume is not None and all(v["name"] != volume["volume"]["name"] for v in volumes):
            volumes.append(volume["volume"])
    for mount in secret_mounts:
        volumes.append(
            {
                "name": _secret_volume_name(mount.secret_name),
                "secret": {
                    "secretName": mount.secret_name,
                    "items": [{"key": k, "path": k} for k in mount.keys],
                    "defaultMode": 0o440,
                },
            }
        )
    return volumes


def placement(tier: ModelTier, gpus: int) -> dict[str, Any]:
    """Pod spec fields that decide where a pod of this tier runs, for `gpus` GPUs each.

    Shared by the serving pods and the evaluation Job, so a candidate is evaluated on the
    hardware it will serve on.
    """
    gpu = tier.spec.resources.gpu
    sched = tier.spec.scheduling
    tolerations: list[dict[str, Any]] = []
    node_selector: dict[str, str] = {}
    if gpus > 0:
        tolerations.append({"key": gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"})
        if gpu.product:
            node_selector["nvidia.com/gpu.product"] = gpu.product
    tolerations += [t.to_wire() for t in sched.tolerations]
    node_selector.update(sched.node_selector)
    fields: dict[str, Any] = {"tolerations": tolerations}
    if node_selector:
        fields["nodeSelector"] = node_selector
    if sched.affinity:
        fields["affinity"] = sched.affinity
    if sched.priority_class_name:
        fields["priorityClassName"] = sched.priority_class_name
    if sched.runtime_class_name:
        fields["runtimeClassName"] = sched.runtime_class_name
    if sched.service_account_name:
        fields["serviceAccountName"] = sched.service_account_name
    if sched.image_pull_secrets:
        fields["imagePullSecrets"] = [s.to_wire() for s in sched.image_pull_secrets]
    return fields


def render_deployment(tier: ModelTier, ctx: DeploymentContext) -> dict[str, Any]:
    spec = tier.spec
    sched = spec.scheduling
    labels = tier_labels(tier.name)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_engine_container(tier, ctx.checkpoint), _router_container(tier, ctx)],
        "volumes": _volumes(tier, ctx),
        **placement(tier, spec.resources.gpu.count),
    }
    if sched.topology_spread_constraints:
        pod_spec["topologySpreadConstraints"] = sched.topology_spread_constraints

    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata("ModelTier", tier, tier.name, labels),
        "spec": {
            "replicas": ctx.replicas,
            "selector": {"matchLabels": tier_selector(tier.name)},
            "revisionHistoryLimit": 3,
            # Model load counts against the deadline; allow the whole startup budget.
            "progressDeadlineSeconds": spec.engine.startup_timeout_seconds + 600,
            "strategy": {
                "type": "RollingUpdate",
                # New pods come up beside the old ones, so capacity never drops.
                "rollingUpdate": {"maxSurge": spec.rollout.max_surge, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        CHECKPOINT_ANNOTATION: ctx.checkpoint,
                        CONFIG_CHECKSUM_ANNOTATION: ctx.config_checksum,
                    },
                },
                "spec": pod_spec,
            },
        },
    }
