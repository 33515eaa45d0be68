"""ModelTier + candidate checkpoint (or adapter source) -> the evaluation Job (batch/v1)
running `shoal eval`.

Pure: the validated tier and a small context in, a manifest dict out.

The Job's one container (the eval image: vLLM plus shoal) runs ``shoal eval
--serve-checkpoint``: it starts vLLM on the candidate on loopback inside the pod, with
the tier's own engine settings, runs the dataset and writes the verdict JSON to the
termination message. The operator reads the verdict from the container's exit code (0
pass, 1 fail, 2 error) and its termination message (plan/rollout.py).

- The evaluation spec travels as JSON in ``SHOAL_EVAL_SPEC``; a ConfigMap dataset is
  mounted read-only at ``DATASET_MOUNT`` and passed with ``--dataset``.
- ``backoffLimit: 0``: a failed evaluation is a verdict, not something to retry.
- ``activeDeadlineSeconds`` is ``timeoutSeconds``; the program's own deadline is
  ``PROGRAM_DEADLINE_MARGIN_SECONDS`` earlier so it can still report TimedOut with what
  it measured, and the Job's deadline is the backstop.
- GPUs, node selector and tolerations follow the tier (``resources.gpuCount`` may
  override the GPU count), so the candidate is evaluated on the hardware it will serve on.
- The pod passes the "restricted" Pod Security Standard like the tier's pods; the root
  filesystem stays writable because vLLM writes compilation caches at start-up.

An adapter's candidate source gets a Job of its own (``render_adapter_eval_job``; why a
Job and not the serving pods: plan/adapters.py). Its engine serves the base checkpoint
with the tier's LoRA settings and loads the candidate with ``--lora-modules`` under the
adapter's own name, which is what ``shoal eval --candidate-model`` evaluates. With
``baseline: serving`` the baseline is on the same engine: the serving source loaded under
``<adapter>@serving`` (a name no adapter can have), or the base model while the adapter
serves nothing yet. So the paired comparison sees both versions on one engine, and no
evaluation request reaches a serving pod. The same function renders the Job that
evaluates an adapter's serving source on a candidate base checkpoint (``base_change``):
the engine serves that checkpoint, and the baseline is its base model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shoal.api.modeltier import EvaluationSpec, ModelTier
from shoal.api.naming import (
    ADAPTER_ANNOTATION,
    ADAPTER_SOURCE_ANNOTATION,
    BASE_CHECKPOINT_ANNOTATION,
    COMPONENT_EVALUATION,
    CHECKPOINT_ANNOTATION,
    EVAL_CONTAINER,
    EVAL_SPEC_ENV,
    adapter_eval_job_name,
    child_metadata,
    eval_job_name,
    tier_endpoint,
    tier_labels,
)

from .deployment import MODEL_CACHE_MOUNT, RUN_AS_USER, adapter_location, engine_args, engine_runtime_env, model_location, placement

DATASET_MOUNT = "/etc/shoal/dataset"
TERMINATION_LOG = "/dev/termination-log"
PROGRAM_DEADLINE_MARGIN_SECONDS = 60
# Finished Jobs are deleted by the operator when their candidate is promoted or
# superseded; a blocked candidate's Job stays for inspection this long, and so, at most,
# does a promoted one whose outcomes a learning RoutePolicy has not kept (plan/learning.py).
TTL_AFTER_FINISHED_SECONDS = 7 * 24 * 3600
# Flags `shoal eval` sets itself when it renders `vllm serve` (evaluate/engine.py).
_FLAGS_SET_BY_EVAL = {"--served-model-name", "--host", "--port", "--revision", "--load-format"}


@dataclass(frozen=True)
class EvalJobContext:
    """What the Job needs beyond the tier's spec."""

    checkpoint: str  # the candidate to evaluate
    # The checkpoint serving now, if any. With baseline: serving and nothing serving yet
    # (a first checkpoint under firstCheckpoint: evaluate), the comparison is dropped.
    serving_checkpoint: str | None = None


def engine_extra_args(tier: ModelTier, checkpoint: str) -> list[str]:
    """The tier's `vllm serve` settings, minus what `shoal eval` sets for the loopback engine."""
    args = engine_args(tier, checkpoint)[1:]  # [0] is the model, which shoal eval passes itself
    out: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        if arg in _FLAGS_SET_BY_EVAL:
            skip_value = True
            continue
        out.append(arg)
    return out


@dataclass(frozen=True)
class AdapterEvalJobContext:
    """What an adapter's evaluation Job needs beyond the tier's spec."""

    adapter: str  # spec.adapters[].name
    source: str  # the candidate source
    base_checkpoint: str  # the checkpoint the engine serves (the tier's serving one)
    # The adapter's serving source, the baseline with baseline: serving; None: the base model.
    serving_source: str | None = None
    # The Job evaluates the adapter's serving source (``source``) on a candidate base
    # checkpoint (``base_checkpoint``), for that checkpoint's gate: no serving_source, so
    # the baseline is the new base model itself, and a name of its own.
    base_change: bool = False


# The name the serving version of an adapter is loaded under in its evaluation's engine.
SERVING_SUFFIX = "@serving"


def _env(tier: ModelTier, evaluation: EvaluationSpec, spec_json: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": EVAL_SPEC_ENV, "value": spec_json}, *engine_runtime_env()]
    judges = [s.judge for s in evaluation.scorers if s.judge is not None and s.judge.api_key_secret_ref is not None]
    if judges:
        ref = judges[0].api_key_secret_ref
        assert ref is not None
        env.append({"name": "SHOAL_JUDGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    env += [e.to_wire() for e in tier.spec.engine.env]
    return env


def render_eval_job(tier: ModelTier, ctx: EvalJobContext) -> dict[str, Any]:
    """The evaluation Job for ``ctx.checkpoint``. Raises ValueError if the tier has no evaluation."""
    evaluation = tier.spec.rollout.evaluation
    if evaluation is None:
        raise ValueError(f"ModelTier {tier.name} has no spec.rollout.evaluation")
    spec = tier.spec
    compare = evaluation.baseline == "serving" and ctx.serving_checkpoint is not None
    args = _eval_args(tier, evaluation, serve=ctx.checkpoint, evaluated=ctx.checkpoint)
    if compare:
        # The tier's Service answers with the serving checkpoint (its router sidecar).
        args += ["--baseline-endpoint", tier_endpoint(tier.name, tier.namespace), "--baseline-model", spec.model.name]
    return _job(
        tier, evaluation, args, compare=compare, name=eval_job_name(tier.name, ctx.checkpoint),
        annotations={CHECKPOINT_ANNOTATION: ctx.checkpoint}, sources=(ctx.checkpoint,),
    )


def render_adapter_eval_job(tier: ModelTier, ctx: AdapterEvalJobContext) -> dict[str, Any]:
    """The evaluation Job of one candidate source of an adapter (see the module docstring).
    Raises ValueError if the adapter is not listed or has no evaluation."""
    if ctx.base_change and ctx.serving_source is not None:
        raise ValueError("an adapter's evaluation on a candidate base compares with the base model, not a serving source")
    adapter = tier.spec.adapter(ctx.adapter)
    evaluation = tier.spec.adapter_evaluation(adapter) if adapter is not None else None
    if evaluation is None:
        raise ValueError(f"ModelTier {tier.name} lists no adapter {ctx.adapter!r} with an evaluation")
    spec = tier.spec
    modules = [f"{ctx.adapter}={_adapter_path(ctx.source)}"]
    if ctx.serving_source is not None and evaluation.baseline == "serving":
        modules.append(f"{ctx.adapter}{SERVING_SUFFIX}={_adapter_path(ctx.serving_source)}")
    args = _eval_args(tier, evaluation, serve=ctx.base_checkpoint, evaluated=ctx.source)
    args += ["--candidate-model", ctx.adapter, "--engine-arg=--lora-modules", *(f"--engine-arg={m}" for m in modules)]
    compare = evaluation.baseline == "serving"
    if compare:
        # The Job's own engine: the serving version under its second name, else the base.
        baseline = f"{ctx.adapter}{SERVING_SUFFIX}" if ctx.serving_source is not None else spec.model.name
        args += ["--baseline-endpoint", f"http://127.0.0.1:{spec.engine.port}/v1", "--baseline-model", baseline]
    sources = (ctx.base_checkpoint, ctx.source, *((ctx.serving_source,) if ctx.serving_source else ()))
    return _job(
        tier, evaluation, args, compare=compare,
        name=adapter_eval_job_name(tier.name, ctx.adapter, ctx.source, ctx.base_checkpoint, base_change=ctx.base_change),
        annotations={ADAPTER_ANNOTATION: ctx.adapter, ADAPTER_SOURCE_ANNOTATION: ctx.source, BASE_CHECKPOINT_ANNOTATION: ctx.base_checkpoint},
        sources=sources,
    )


def _adapter_path(source: str) -> str:
    """What the engine loads for an adapter source. A source vLLM cannot load at run time
    (see render/deployment.py `adapter_location`) is passed as written: the engine then
    fails to start and the verdict is JobError, with the engine's complaint in the log."""
    path, _ = adapter_location(source)
    return path if path is not None else source


def _eval_args(tier: ModelTier, evaluation: EvaluationSpec, *, serve: str, evaluated: str) -> list[str]:
    """`shoal eval` on an engine of the tier's settings serving `serve`; the verdict names `evaluated`."""
    spec = tier.spec
    args = [
        "eval",
        "--serve-checkpoint", serve,
        "--checkpoint", evaluated,
        "--model", spec.model.name,
        "--engine-port", str(spec.engine.port),
        "--engine-ready-timeout-seconds", str(spec.engine.startup_timeout_seconds),
        "--timeout-seconds", str(max(30, evaluation.timeout_seconds - PROGRAM_DEADLINE_MARGIN_SECONDS)),
        "--termination-log", TERMINATION_LOG,
    ]
    # `--engine-arg=VALUE` keeps argparse from reading a value that starts with "--" as a flag.
    return args + [f"--engine-arg={a}" for a in engine_extra_args(tier, serve)]


def _job(
    tier: ModelTier,
    evaluation: EvaluationSpec,
    args: list[str],
    *,
    compare: bool,
    name: str,
    annotations: dict[str, str],
    sources: tuple[str, ...],
) -> dict[str, Any]:
    """The Job around `shoal eval ARGS`: `sources` are the URIs its engine reads (a pvc://
    one's claim is mounted read-only)."""
    spec = tier.spec
    labels = tier_labels(tier.name, component=COMPONENT_EVALUATION)
    settings = evaluation.model_copy(update={"baseline": "serving" if compare else "none"})
    spec_json = json.dumps(settings.to_wire(), sort_keys=True, separators=(",", ":"))
    args = list(args)

    mounts: list[dict[str, Any]] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "model-cache", "mountPath": MODEL_CACHE_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shared_memory_size}},
        {"name": "model-cache", "emptyDir": {"sizeLimit": spec.resources.model_cache_size}},
        {"name": "tmp", "emptyDir": {}},
    ]
    ref = evaluation.dataset.config_map_ref
    if ref is not None:
        mounts.append({"name": "dataset", "mountPath": DATASET_MOUNT, "readOnly": True})
        volumes.append({"name": "dataset", "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": ref.key}]}})
        args += ["--dataset", f"{DATASET_MOUNT}/{ref.key}"]
    for source in sources:
        if not source.startswith("pvc://"):
            continue
        # The claim alone (pvc://CLAIM), mounted once however many paths on it are read.
        _, _, pvc = model_location("pvc://" + source[len("pvc://"):].split("/", 1)[0])
        if pvc is not None and all(v["name"] != pvc["volume"]["name"] for v in volumes):
            mounts.append({"name": pvc["volume"]["name"], "mountPath": pvc["mountPath"], "readOnly": True})
            volumes.append(pvc["volume"])

    gpu = spec.resources.gpu
    gpus = evaluation.resources.gpu_count if evaluation.resources.gpu_count is not None else gpu.count
    requests: dict[str, Any] = {"cpu": evaluation.resources.cpu, "memory": evaluation.resources.memory}
    limits: dict[str, Any] = {"memory": evaluation.resources.memory}
    if gpus > 0:
        requests[gpu.resource_name] = str(gpus)
        limits[gpu.resource_name] = str(gpus)

    container: dict[str, Any] = {
        "name": EVAL_CONTAINER,
        "image": evaluation.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["shoal"],
        "args": args,
        "env": _env(tier, evaluation, spec_json),
        "resources": {"requests": requests, "limits": limits},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": False,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        # The verdict JSON when the program wrote one; the log's tail when it crashed first.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.model.credentials_secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": spec.model.credentials_secret_ref.name}}]

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
        **placement(tier, gpus),
    }

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**child_metadata("ModelTier", tier, name, labels), "annotations": annotations},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": evaluation.timeout_seconds,
            "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_SECONDS,
            "template": {"metadata": {"labels": labels, "annotations": {**evaluation.pod_annotations, **annotations}}, "spec": pod_spec},
        },
    }
