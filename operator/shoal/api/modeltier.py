"""The ModelTier resource: one model checkpoint served by vLLM on GPUs.

A ModelTier becomes a Deployment (vLLM engine + Shoal router sidecar), a Service in front
of the sidecar, a PodDisruptionBudget and the sidecar's ConfigMap. Autoscaling on queue
depth and eval-gated checkpoint rollout are configured here too.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import (
    API_VERSION,
    DNS_LABEL_PATTERN,
    MAX_TIER_NAME_LENGTH,
    QUANTITY_PATTERN,
    ConfigMapKeyReference,
    KubeObject,
    LocalObjectReference,
    SecretKeyReference,
    ShoalModel,
    cel,
    validations,
)
from .conditions import Condition

KIND = "ModelTier"
PLURAL = "modeltiers"

# vLLM's OpenAI-compatible server image, pinned so a cluster never drifts to a new engine
# version by itself. Override per tier with spec.engine.image.
DEFAULT_ENGINE_IMAGE = "vllm/vllm-openai:v0.11.0"
DEFAULT_ROUTER_IMAGE = "ghcr.io/shoal-dev/shoal-router:0.1.0"
DEFAULT_EVAL_IMAGE = "ghcr.io/shoal-dev/shoal-eval:0.1.0"

MODEL_URI_PATTERN = (
    r"^(hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*(@[-A-Za-z0-9_.]+)?"
    r"|s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/[^\s]*)?"
    r"|gs://[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9](/[^\s]*)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?)$"
)
_URI_DESCRIPTION = (
    "One of hf://ORG/REPO[@REVISION] (Hugging Face Hub; pin a revision for reproducible "
    "serving), s3://BUCKET/PATH or gs://BUCKET/PATH (streamed by vLLM's Run:ai model "
    "streamer; credentials from spec.model.credentialsSecretRef), or pvc://CLAIM/PATH "
    "(a PersistentVolumeClaim in the tier's namespace, mounted read-only)."
)


class ModelSpec(ShoalModel):
    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.:/]*$",
        description=(
            "The model name clients send in the `model` field of OpenAI-compatible requests "
            "(vLLM's --served-model-name). Keep it stable across checkpoints."
        ),
    )
    source: str = Field(
        max_length=1024,
        pattern=MODEL_URI_PATTERN,
        description="Where the base model weights come from. " + _URI_DESCRIPTION,
    )
    checkpoint: str | None = Field(
        default=None,
        max_length=1024,
        pattern=MODEL_URI_PATTERN,
        description=(
            "Optional fine-tuned checkpoint (full weights) to serve instead of the base "
            "model. Changing it starts an eval-gated rollout: the new checkpoint serves "
            "traffic only after its evaluation passes (see spec.rollout). " + _URI_DESCRIPTION
        ),
    )
    credentials_secret_ref: LocalObjectReference | None = Field(
        default=None,
        description=(
            "Secret whose keys are exposed to the engine as environment variables, for "
            "example HF_TOKEN, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://."
        ),
    )

    def served_uri(self) -> str:
        """The URI the engine loads: the checkpoint when one is set, else the base model."""
        return self.checkpoint or self.source


Dtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
Quantization = Literal[
    "awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "bitsandbytes", "gguf", "compressed-tensors", "experts_int8"
]


class EnvVarSource(ShoalModel):
    secret_key_ref: SecretKeyReference | None = Field(
        default=None, description="Take the value from a key of a Secret."
    )
    config_map_key_ref: ConfigMapKeyReference | None = Field(
        default=None, description="Take the value from a key of a ConfigMap."
    )


class EnvVar(ShoalModel):
    model_config = ShoalModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.value) != has(self.valueFrom)",
                "set exactly one of value or valueFrom",
            )
        )
    }

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
        description="Name of the environment variable.",
    )
    value: str | None = Field(default=None, description="Literal value. Never put secrets here; use valueFrom.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Value taken from a Secret or ConfigMap key."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if (self.value is None) == (self.value_from is None):
            raise ValueError(f"env {self.name}: set exactly one of value or valueFrom")
        return self


# Ranks vLLM accepts for --max-lora-rank.
LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
MAX_ADAPTERS = 64


class LoraSpec(ShoalModel):
    """How the engine holds LoRA adapters. Used only when spec.adapters is not empty."""

    max_loras: int = Field(
        default=4,
        ge=1,
        le=64,
        description=(
            "Adapters that can run in one batch on the GPU (--max-loras). Requests for more "
            "distinct adapters at once wait for a slot. Each slot reserves GPU memory for an "
            "adapter of maxLoraRank."
        ),
    )
    max_lora_rank: LoraRank = Field(
        default=16,
        description="Largest LoRA rank (r) of any adapter this tier serves (--max-lora-rank). An adapter of higher rank fails to load.",
    )
    max_cpu_loras: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description=(
            "Adapters kept in host memory, ready to swap onto the GPU without reading them "
            "from disk again (--max-cpu-loras, at least maxLoras). Unset: vLLM's default "
            "(maxLoras). Set it to the number of adapters when they all see traffic."
        ),
    )


class EngineSpec(ShoalModel):
    image: str = Field(
        default=DEFAULT_ENGINE_IMAGE,
        min_length=1,
        max_length=512,
        description="vLLM OpenAI-compatible server image. Pin a tag or digest.",
    )
    max_model_len: int | None = Field(
        default=None,
        ge=128,
        le=1048576,
        description="Maximum context length in tokens (--max-model-len). Unset: the model's own limit.",
    )
    dtype: Dtype = Field(default="auto", description="Weight and activation data type (--dtype).")
    quantization: Quantization | None = Field(
        default=None,
        description="Quantization method of the weights (--quantization). Unset: as the checkpoint declares.",
    )
    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        le=16,
        description="GPUs one model replica is split across (--tensor-parallel-size). Must divide resources.gpu.count.",
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        ge=0.1,
        le=0.99,
        description="Fraction of each GPU's memory vLLM may use for weights and KV cache (--gpu-memory-utilization).",
    )
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Maximum sequences batched together per step (--max-num-seqs). Unset: vLLM's default.",
    )
    enable_prefix_caching: bool = Field(
        default=True,
        description="Reuse the KV cache of shared prompt prefixes (--enable-prefix-caching). Usually a large win for chat traffic.",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Additional `vllm serve` arguments, appended after the ones Shoal derives from this spec.",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Environment variables for the engine container.",
    )
    port: int = Field(
        default=8000,
        ge=1024,
        le=65535,
        description="Port the engine listens on inside the pod (loopback traffic from the router sidecar).",
    )
    startup_timeout_seconds: int = Field(
        default=1800,
        ge=60,
        le=14400,
        description=(
            "How long a new engine may take to download and load its weights before the "
            "kubelet restarts it. Large models on slow storage need tens of minutes."
        ),
    )
    lora: LoraSpec = Field(
        default_factory=LoraSpec,
        description="LoRA settings of the engine, used when spec.adapters lists any adapter.",
    )

    @field_validator("extra_args")
    @classmethod
    def _no_reserved_args(cls, args: list[str]) -> list[str]:
        reserved = {"--port", "--host", "--served-model-name", "--model", "--enable-lora", "--lora-modules"}
        for arg in args:
            flag = arg.split("=", 1)[0]
            if flag in reserved:
                raise ValueError(f"{flag} is set by Shoal from the spec and cannot be passed in extraArgs")
        return args


class GPUSpec(ShoalModel):
    count: int = Field(
        default=1,
        ge=0,
        le=16,
        description="GPUs per replica. 0 runs the engine on CPU (tests and tiny models only).",
    )
    product: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description=(
            "Required GPU model, matched against the nvidia.com/gpu.product node label "
            "(for example NVIDIA-L4 or NVIDIA-H100-80GB-HBM3). Unset: any GPU node."
        ),
    )
    resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-A-Za-z0-9_.]+$",
        description="Extended resource name the device plugin advertises.",
    )


class ResourcesSpec(ShoalModel):
    gpu: GPUSpec = Field(default_factory=GPUSpec, description="GPUs each replica needs.")
    cpu: str = Field(
        default="4",
        pattern=QUANTITY_PATTERN,
        description="CPU requested by the engine container (tokenization, scheduling, HTTP).",
    )
    memory: str = Field(
        default="32Gi",
        pattern=QUANTITY_PATTERN,
        description="Memory requested and limited for the engine container (host RAM, not GPU memory).",
    )
    shared_memory_size: str = Field(
        default="8Gi",
        pattern=QUANTITY_PATTERN,
        description="Size of /dev/shm (memory-backed), used by NCCL and PyTorch between tensor-parallel workers.",
    )
    model_cache_size: str = Field(
        default="100Gi",
        pattern=QUANTITY_PATTERN,
        description="Size limit of the node-local volume weights are downloaded into.",
    )


class Toleration(ShoalModel):
    key: str | None = Field(default=None, max_length=316, description="Taint key the toleration matches. Empty with operator Exists matches every taint.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value to match with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match. Unset: every effect."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


_FREE_FORM = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


class SchedulingSpec(ShoalModel):
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Extra node labels the pods require, added to the GPU product selector.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "Extra tolerations. The taint named by resources.gpu.resourceName (nvidia.com/gpu) "
            "is always tolerated for tiers that request GPUs, as GPU nodes are usually tainted with it."
        ),
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        json_schema_extra=_FREE_FORM,
        description="Pod affinity and anti-affinity (core/v1 Affinity), passed through to the pod.",
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the pods, so serving can preempt batch work."
    )
    topology_spread_constraints: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=8,
        json_schema_extra={"items": _FREE_FORM},
        description="core/v1 TopologySpreadConstraint list, passed through to the pod (spread replicas across zones).",
    )
    runtime_class_name: str | None = Field(
        default=None, max_length=253, description="RuntimeClass of the pods (for example nvidia) where the cluster needs one for GPUs."
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        description="ServiceAccount of the pods, for clusters that grant bucket access through workload identity.",
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=8, description="Secrets used to pull the engine and router images."
    )


class ReplicasSpec(ShoalModel):
    model_config = ShoalModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.min <= self.max",
                "replicas.min must be less than or equal to replicas.max",
                field_path=".min",
            ),
            cel(
                "!has(self.desired) || (self.desired >= self.min && self.desired <= self.max)",
                "replicas.desired must lie between replicas.min and replicas.max",
                field_path=".desired",
            ),
        )
    }

    min: int = Field(default=1, ge=0, le=1000, description="Fewest replicas. 0 lets the tier sleep when idle (the router sends its traffic one tier up).")
    max: int = Field(default=1, ge=1, le=1000, description="Most replicas the autoscaler may run.")
    desired: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description=(
            "What `kubectl scale modeltier` (the scale subresource) sets. With autoscaling.engine "
            "none it is the replica count. With the built-in autoscaler (queue-depth) or keda it "
            "is a floor: the autoscaler never scales below it and may scale above it, up to "
            "max, under load; remove it (or set it to min) to give the whole range back."
        ),
    )

    @property
    def floor(self) -> int:
        """The fewest replicas an autoscaler may run: min, raised to desired when that is set
        (what `kubectl scale modeltier` writes), so a manual scale is never undone."""
        return max(self.min, self.desired or 0)

    @model_validator(mode="after")
    def _ordered(self) -> ReplicasSpec:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) must be less than or equal to replicas.max ({self.max})")
        if self.desired is not None and not (self.min <= self.desired <= self.max):
            raise ValueError(
                f"replicas.desired ({self.desired}) must lie between replicas.min ({self.min}) and replicas.max ({self.max})"
            )
        return self


class PrometheusSource(ShoalModel):
    url: str = Field(max_length=2048, pattern=r"^https?://", description="Base URL of the Prometheus HTTP API.")
    query: str = Field(
        min_length=1,
        max_length=4096,
        description="PromQL returning the tier's total in-flight requests (waiting + running) as one sample.",
    )


class AutoscalingSpec(ShoalModel):
    model_config = ShoalModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.metricsSource != 'prometheus' || has(self.prometheus)",
                "autoscaling.prometheus is required when autoscaling.metricsSource is prometheus",
                field_path=".prometheus",
            ),
            cel(
                "self.engine != 'keda' || has(self.prometheus)",
                "autoscaling.prometheus is required when autoscaling.engine is keda",
                field_path=".prometheus",
            )
        )
    }

    engine: Literal["shoal", "keda", "none"] = Field(
        default="shoal",
        description=(
            "Who scales the tier: shoal (the operator, on queue depth scraped from the "
            "sidecars), keda (Shoal renders a KEDA ScaledObject on the engine's queue "
            "metric), or none (replicas.desired, or replicas.min, is kept)."
        ),
    )
    target_queue_depth: float = Field(
        default=16.0,
        gt=0,
        le=10000,
        description="In-flight requests (waiting + running) each replica should carry. Desired replicas = ceil(total / target).",
    )
    tolerance: float = Field(
        default=0.1,
        ge=0,
        le=0.9,
        description="Relative band around the target inside which the size is left alone, to avoid flapping.",
    )
    panic_threshold: float = Field(
        default=2.0,
        ge=1.1,
        le=10,
        description="When load exceeds this multiple of current capacity, scale up at once and suspend scale-down for a scale-down window.",
    )
    scale_up_window_seconds: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="Scale up to the lowest size recommended during this window. 0 reacts to the first sample.",
    )
    scale_down_window_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="Scale down only to the highest size recommended during this window.",
    )
    scale_down_step_replicas: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Most replicas removed in one scale-down step.",
    )
    scale_to_zero_idle_seconds: int = Field(
        default=900,
        ge=30,
        le=604800,
        description="With replicas.min 0: seconds without any request before the tier scales to zero.",
    )
    metrics_period_seconds: int = Field(
        default=5,
        ge=1,
        le=300,
        description="How often queue depth is read and the decision made.",
    )
    metrics_source: Literal["sidecar", "prometheus"] = Field(
        default="sidecar",
        description="sidecar: scrape each ready pod's router /metrics (no extra dependency). prometheus: run spec.autoscaling.prometheus.query.",
    )
    prometheus: PrometheusSource | None = Field(
        default=None, description="Prometheus query used when metricsSource is prometheus."
    )

    @model_validator(mode="after")
    def _prometheus_needs_query(self) -> AutoscalingSpec:
        if self.metrics_source == "prometheus" and self.prometheus is None:
            raise ValueError("autoscaling.prometheus is required when autoscaling.metricsSource is prometheus")
        if self.engine == "keda" and self.prometheus is None:
            raise ValueError("autoscaling.prometheus is required when autoscaling.engine is keda (KEDA reads the queue depth from Prometheus)")
        return self



ScorerType = Literal["exactMatch", "contains", "regex", "choice", "jsonSchema", "numeric", "llmJudge"]


class JudgeSpec(ShoalModel):
    url: str = Field(max_length=2048, pattern=r"^https?://", description="Base URL of an OpenAI-compatible endpoint (…/v1).")
    model: str = Field(min_length=1, max_length=256, description="Judge model name.")
    api_key_secret_ref: SecretKeyReference | None = Field(default=None, description="Secret key holding the judge's API key.")
    rubric: str = Field(
        default="Answer PASS if the response correctly and completely answers the question given the reference, otherwise FAIL.",
        max_length=8192,
        description="Instructions for the judge; it must answer PASS or FAIL.",
    )


class ScorerSpec(ShoalModel):
    model_config = ShoalModel.model_config | {
        "json_schema_extra": validations(
            cel("self.type != 'regex' || has(self.pattern)", "scorer regex needs pattern", field_path=".pattern"),
            cel("self.type != 'llmJudge' || has(self.judge)", "scorer llmJudge needs judge", field_path=".judge"),
        )
    }

    type: ScorerType = Field(
        description=(
            "exactMatch, contains, regex, choice (multiple-choice letter), jsonSchema "
            "(response parses and validates), numeric (within tolerance), llmJudge."
        )
    )
    name: str | None = Field(default=None, max_length=63, pattern=r"^[a-z][a-z0-9_]*$", description="Metric name in reports; defaults to the type in snake_case.")
    pattern: str | None = Field(default=None, max_length=4096, description="Regular expression for the regex scorer.")
    json_schema: dict[str, Any] | None = Field(default=None, json_schema_extra=_FREE_FORM, description="JSON Schema for the jsonSchema scorer.")
    tolerance: float | None = Field(default=None, ge=0, description="Absolute tolerance for the numeric scorer.")
    judge: JudgeSpec | None = Field(default=None, description="Judge endpoint for the llmJudge scorer.")

    @model_validator(mode="after")
    def _params(self) -> ScorerSpec:
        if self.type == "regex" and not self.pattern:
            raise ValueError("scorer regex needs pattern")
        if self.type == "llmJudge" and self.judge is None:
            raise ValueError("scorer llmJudge needs judge")
        return self



class ThresholdSpec(ShoalModel):
    model_config = ShoalModel.model_config | {
        "json_schema_extra": validations(cel("has(self.min) || has(self.max)", "a threshold needs min or max"))
    }

    metric: str = Field(
        min_length=1,
        max_length=63,
        description="A scorer's metric name (for example exact_match) or latency_p50_seconds / latency_p95_seconds.",
    )
    min: float | None = Field(default=None, description="The metric's lower confidence bound must be at least this.")
    max: float | None = Field(default=None, description="The metric's upper confidence bound must be at most this.")



class DatasetSpec(ShoalModel):
    model_config = ShoalModel.model_config | {
        "json_schema_extra": validations(
            cel("has(self.configMapRef) != has(self.uri)", "set exactly one of dataset.configMapRef or dataset.uri")
        )
    }

    config_map_ref: ConfigMapKeyReference | None = Field(
        default=None, description="ConfigMap key holding the dataset as JSON Lines (one item per line)."
    )
    uri: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^(s3|gs|https?)://",
        description="Dataset as JSON Lines at an s3://, gs:// or https:// URI.",
    )



class EvaluationResources(ShoalModel):
    gpu_count: int | None = Field(default=None, ge=0, le=16, description="GPUs for the candidate engine. Unset: the tier's resources.gpu.count.")
    cpu: str = Field(default="4", pattern=QUANTITY_PATTERN, description="CPU for the evaluation pod.")
    memory: str = Field(default="32Gi", pattern=QUANTITY_PATTERN, description="Memory for the evaluation pod.")


class EvaluationSpec(ShoalModel):
    dataset: DatasetSpec = Field(description="Items to evaluate: prompt, reference answer, optional per-item scorer settings.")
    scorers: list[ScorerSpec] = Field(min_length=1, max_length=16, description="How each response is scored.")
    thresholds: list[ThresholdSpec] = Field(
        default_factory=list, max_length=32, description="Absolute bars the candidate must clear, judged on confidence bounds."
    )
    baseline: Literal["none", "serving"] = Field(
        default="none",
        description="serving: also run the serving checkpoint on the same items and compare them item by item (paired).",
    )
    max_regression: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="With baseline serving: the largest drop in a scorer's metric tolerated, judged on the paired confidence interval.",
    )
    regression_rule: Literal["provenRegression", "nonInferiority"] = Field(
        default="provenRegression",
        description=(
            "With baseline serving, how the paired interval of candidate minus serving is judged. "
            "provenRegression blocks only when the whole interval is below zero and its lower bound "
            "is below -maxRegression (no evidence of a regression: equal candidates are rarely "
            "blocked, small datasets miss small regressions). nonInferiority passes only when the "
            "lower bound is at least -maxRegression (evidence of no regression: needs large datasets). "
            "benchmarks/eval-gate has the error rates of both."
        ),
    )
    confidence_level: float = Field(default=0.95, ge=0.5, le=0.999, description="Confidence level of the intervals.")
    interval_method: Literal["wilson", "bootstrap"] = Field(default="wilson", description="How confidence intervals are computed.")
    concurrency: int = Field(default=8, ge=1, le=256, description="Requests in flight during the evaluation.")
    max_tokens: int = Field(default=256, ge=1, le=32768, description="Maximum tokens generated per item.")
    timeout_seconds: int = Field(default=3600, ge=60, le=86400, description="Wall-clock budget of the evaluation Job before the verdict is TimedOut.")
    image: str = Field(default=DEFAULT_EVAL_IMAGE, max_length=512, description="Evaluation image (contains vLLM and `shoal eval`).")
    resources: EvaluationResources = Field(default_factory=EvaluationResources, description="Resources of the evaluation pod.")
    pod_annotations: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Annotations of the evaluation pod, for example sidecar.istio.io/inject: \"false\" so a "
            "service-mesh sidecar does not keep the Job from completing."
        ),
    )


class RolloutSpec(ShoalModel):
    first_checkpoint: Literal["serve", "evaluate"] = Field(
        default="serve",
        description="Whether the first checkpoint of a new tier is served at once (serve) or must pass an evaluation first (evaluate).",
    )
    evaluation: EvaluationSpec | None = Field(
        default=None,
        description="Evaluation a new checkpoint must pass before it serves traffic. Unset: checkpoint changes roll out directly.",
    )
    max_surge: int = Field(default=1, ge=1, le=100, description="Extra replicas started during a rollout, so serving capacity never drops.")
    adapters: Literal["evaluate", "ignore"] = Field(
        default="evaluate",
        description=(
            "What a new checkpoint must prove for the LoRA adapters that serve on the old one. "
            "evaluate: each adapter with an evaluation that serves is evaluated again on the new "
            "checkpoint (its own evaluation, the new base model as the baseline with baseline "
            "serving), and the checkpoint is promoted only when its own evaluation and every one "
            "of these pass; if one fails, the old checkpoint keeps serving with its adapters and "
            "status.conditions say which adapter. ignore: the adapters are loaded on the new "
            "checkpoint untested (status.adapters[].servingBase keeps naming the base they passed on)."
        ),
    )


class CostSpec(ShoalModel):
    gpu_hour_usd: float = Field(
        default=0.0, ge=0, le=1000, description="Price of one GPU for one hour, in US dollars, for cost accounting."
    )
    tokens_per_second_per_replica: float = Field(
        default=2000.0,
        gt=0,
        le=1e7,
        description=(
            "Sustained output throughput of one busy replica, used to turn GPU-hours into a "
            "per-token cost estimate: USD per token = gpuHourUSD * gpus / 3600 / this."
        ),
    )


class ContainerResources(ShoalModel):
    cpu: str = Field(default="500m", pattern=QUANTITY_PATTERN, description="CPU requested by the router sidecar.")
    memory: str = Field(default="256Mi", pattern=QUANTITY_PATTERN, description="Memory requested and limited for the router sidecar.")


class RouterSpec(ShoalModel):
    image: str = Field(default=DEFAULT_ROUTER_IMAGE, max_length=512, description="Router sidecar image (`shoal router`).")
    resources: ContainerResources = Field(default_factory=ContainerResources, description="Resources of the router sidecar.")
    route_policy: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_LABEL_PATTERN,
        description="Name of the RoutePolicy whose ladder this tier's sidecar serves. Unset: requests go to the local engine only.",
    )
    port: int = Field(default=8080, ge=1024, le=65535, description="Port of the router sidecar; the Service targets it.")


class AdapterRolloutSpec(ShoalModel):
    evaluation: EvaluationSpec | None = Field(
        default=None,
        description=(
            "Evaluation a new source of this adapter must pass before it serves traffic (unset: "
            "the tier's spec.rollout.evaluation). The candidate runs in an evaluation Job with its "
            "own engine (the serving base checkpoint with the candidate loaded as a LoRA adapter), "
            "never on the serving pods; only after it passes does the router ConfigMap name the "
            "new source, and the sidecars swap it in without restarting a pod. A failed, timed-out "
            "or broken evaluation leaves the serving source in place and status.adapters[] says why. "
            "A new adapter with an evaluation serves nothing until its first source passes. With "
            "neither this nor spec.rollout.evaluation set, a new source is loaded at once."
        ),
    )


class AdapterCostSpec(ShoalModel):
    cost_center: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="Who the adapter's tokens and cost are attributed to (a team or product), reported beside the adapter's name.",
    )


class AdapterSpec(ShoalModel):
    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.:]*$",
        description=(
            "The model name clients send in the `model` field to get this adapter's answers "
            "(vLLM's lora_name). Must differ from spec.model.name and from every other adapter."
        ),
    )
    source: str = Field(
        max_length=1024,
        pattern=MODEL_URI_PATTERN,
        description=(
            "Where the LoRA adapter (adapter_config.json + adapter weights, as peft saves them) "
            "comes from. Changing it never restarts the tier's pods: the router sidecar loads the "
            "new version into the running engines. " + _URI_DESCRIPTION
        ),
    )
    rollout: AdapterRolloutSpec = Field(
        default_factory=AdapterRolloutSpec, description="How a new source of this adapter reaches traffic."
    )
    cost: AdapterCostSpec = Field(default_factory=AdapterCostSpec, description="Cost attribution of this adapter's requests.")


class ModelTierSpec(ShoalModel):
    model_config = ShoalModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.resources.gpu.count == 0 ? self.engine.tensorParallelSize == 1 : "
                "self.resources.gpu.count % self.engine.tensorParallelSize == 0",
                "resources.gpu.count must be a multiple of engine.tensorParallelSize",
                field_path=".engine.tensorParallelSize",
            ),
            cel(
                "!has(self.adapters) || self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))",
                "adapter names must be unique",
                field_path=".adapters",
            ),
            cel(
                "!has(self.adapters) || self.adapters.all(a, a.name != self.model.name)",
                "an adapter's name must differ from spec.model.name (the base model's served name)",
                field_path=".adapters",
            ),
            cel(
                "!has(self.engine.lora.maxCpuLoras) || self.engine.lora.maxCpuLoras >= self.engine.lora.maxLoras",
                "engine.lora.maxCpuLoras must be at least engine.lora.maxLoras",
                field_path=".engine.lora.maxCpuLoras",
            ),
        )
    }

    model: ModelSpec = Field(description="Which model and checkpoint this tier serves, and the name clients use.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine settings.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="GPUs, CPU, memory and volumes per replica.")
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec, description="Where the pods may run.")
    replicas: ReplicasSpec = Field(default_factory=ReplicasSpec, description="Bounds on the number of replicas.")
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec, description="Scaling on queue depth (waiting + running requests).")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="How a new checkpoint reaches traffic.")
    cost: CostSpec = Field(default_factory=CostSpec, description="Prices used for per-request cost accounting.")
    router: RouterSpec = Field(default_factory=RouterSpec, description="The Shoal router sidecar in every pod.")
    adapters: list[AdapterSpec] = Field(
        default_factory=list,
        max_length=MAX_ADAPTERS,
        description=(
            "LoRA adapters served by the same engines beside the base model, each under its own "
            "model name. Adding, removing or changing an adapter's source never restarts the pods "
            "(going from none to some, or back, does: the engine starts with LoRA enabled)."
        ),
    )

    @model_validator(mode="after")
    def _adapters_are_distinct(self) -> ModelTierSpec:
        names = [a.name for a in self.adapters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"adapter names must be unique: {', '.join(duplicates)} appears more than once")
        if self.model.name in names:
            raise ValueError(f"adapter {self.model.name!r}: an adapter's name must differ from spec.model.name (the base model's served name)")
        lora = self.engine.lora
        if lora.max_cpu_loras is not None and lora.max_cpu_loras < lora.max_loras:
            raise ValueError(f"engine.lora.maxCpuLoras ({lora.max_cpu_loras}) must be at least engine.lora.maxLoras ({lora.max_loras})")
        return self

    def adapter(self, name: str) -> AdapterSpec | None:
        return next((a for a in self.adapters if a.name == name), None)

    def adapter_evaluation(self, adapter: AdapterSpec) -> EvaluationSpec | None:
        """The evaluation a new source of `adapter` must pass: its own, else the tier's.
        None: the adapter is not gated (a new source serves when it is committed)."""
        return adapter.rollout.evaluation or self.rollout.evaluation

    @model_validator(mode="after")
    def _gpus_fit_tensor_parallel(self) -> ModelTierSpec:
        gpus = self.resources.gpu.count
        tp = self.engine.tensor_parallel_size
        if gpus > 0 and gpus % tp != 0:
            raise ValueError(
                f"resources.gpu.count ({gpus}) must be a multiple of engine.tensorParallelSize ({tp})"
            )
        if gpus == 0 and tp != 1:
            raise ValueError("engine.tensorParallelSize must be 1 when resources.gpu.count is 0")
        return self



# --- status ------------------------------------------------------------------------------


class MetricResult(ShoalModel):
    name: str = Field(description="Metric name (a scorer's name, or latency_p50_seconds / latency_p95_seconds).")
    value: float = Field(description="Point estimate.")
    lower: float | None = Field(default=None, description="Lower bound of the confidence interval.")
    upper: float | None = Field(default=None, description="Upper bound of the confidence interval.")
    baseline: float | None = Field(default=None, description="The serving checkpoint's value on the same items, when compared.")
    delta_lower: float | None = Field(default=None, description="Lower bound of the paired difference candidate minus serving.")
    delta_upper: float | None = Field(default=None, description="Upper bound of the paired difference candidate minus serving.")


class EvaluationRecord(ShoalModel):
    checkpoint: str = Field(description="Checkpoint URI that was evaluated (for an adapter: the adapter source).")
    verdict: Literal["Passed", "Failed", "TimedOut", "JobError", "Running"] = Field(description="Outcome of the evaluation.")
    job_name: str | None = Field(default=None, description="Name of the evaluation Job.")
    dataset_digest: str | None = Field(default=None, description="sha256 of the dataset the verdict was computed on.")
    items: int | None = Field(default=None, description="Number of items evaluated.")
    metrics: list[MetricResult] = Field(default_factory=list, description="Scores with confidence intervals.")
    thresholds: list[ThresholdSpec] = Field(default_factory=list, description="Thresholds the verdict was judged against.")
    message: str | None = Field(default=None, description="Why the verdict is what it is, in one sentence.")
    start_time: datetime | None = Field(default=None, description="When the evaluation Job started.")
    finish_time: datetime | None = Field(default=None, description="When the verdict was recorded.")
    base_checkpoint: str | None = Field(
        default=None, description="For an adapter: the base checkpoint its evaluation's engine served (the adapter was evaluated on it)."
    )
    baseline_source: str | None = Field(
        default=None,
        description=(
            "For an adapter evaluated with baseline: serving: the serving source its candidate was compared with, on the same "
            "engine. Unset when it was compared with the base model (the adapter served nothing yet) or with nothing."
        ),
    )


class AutoscalerStatus(ShoalModel):
    desired_replicas: int | None = Field(default=None, description="Replicas the autoscaler wants now.")
    queue_depth: float | None = Field(default=None, description="Total in-flight requests (waiting + running) observed across ready pods.")
    waiting: float | None = Field(default=None, description="Requests waiting in the engines' queues.")
    last_scale_time: datetime | None = Field(default=None, description="When the replica count was last changed.")
    last_request_time: datetime | None = Field(default=None, description="When a request was last seen (for scale to zero).")
    reason: str | None = Field(default=None, description="Why the autoscaler chose the current size (ScaleUp, Panic, ScaleDown, WithinTolerance, ScaleToZero, WakeUp, MetricsMissing, ...).")
    message: str | None = Field(default=None, description="The autoscaler's last decision, as a sentence.")


class AdapterStatus(ShoalModel):
    name: str = Field(description="The adapter's name (spec.adapters[].name).")
    serving_source: str | None = Field(
        default=None, description="Adapter source the router loads into the engines now. Unset: the adapter serves nothing yet."
    )
    candidate_source: str | None = Field(
        default=None, description="Adapter source being evaluated, or blocked by its evaluation, if any."
    )
    serving_base: str | None = Field(
        default=None,
        description=(
            "Base checkpoint the serving source passed its evaluation on. It moves with the tier's "
            "servingCheckpoint when the adapter passed on the new checkpoint too. Unset for an "
            "adapter without an evaluation, and for a source promoted before this field was recorded."
        ),
    )
    last_evaluation: EvaluationRecord | None = Field(default=None, description="The latest evaluation of this adapter and its verdict.")
    base_evaluation: EvaluationRecord | None = Field(
        default=None,
        description=(
            "While the tier's candidateCheckpoint is being evaluated: the serving source's evaluation "
            "on that checkpoint. The checkpoint serves only after this passes (spec.rollout.adapters)."
        ),
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready (the adapter serves the source the spec names) and Evaluated (the latest candidate has a verdict).",
    )


class ModelTierStatus(ShoalModel):
    observed_generation: int | None = Field(default=None, description="The metadata.generation this status was computed from.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Available, Progressing, ResolvedRefs, ScalingActive, Evaluated, AdaptersReady, Drifting.")
    replicas: int | None = Field(default=None, description="Pods of this tier that exist (any version).")
    ready_replicas: int | None = Field(default=None, description="Pods of this tier that are ready to serve.")
    updated_replicas: int | None = Field(default=None, description="Pods running the current spec.")
    selector: str | None = Field(default=None, description="Label selector of the tier's pods (for the scale subresource).")
    endpoint: str | None = Field(default=None, description="In-cluster base URL of the tier's OpenAI-compatible API (the router sidecar).")
    serving_checkpoint: str | None = Field(default=None, description="Checkpoint URI that currently serves traffic.")
    candidate_checkpoint: str | None = Field(default=None, description="Checkpoint URI being evaluated or rolled out, if any.")
    last_evaluation: EvaluationRecord | None = Field(default=None, description="The latest evaluation and its verdict.")
    autoscaler: AutoscalerStatus | None = Field(default=None, description="The autoscaler's latest observation and decision.")
    adapters: list[AdapterStatus] = Field(
        default_factory=list, description="Per adapter of spec.adapters: what serves, what is being evaluated, and why."
    )


class ModelTier(KubeObject):
    """A whole ModelTier object. `from_body` validates what the API server stored."""

    api_version: Literal["shoal.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["ModelTier"] = KIND
    spec: ModelTierSpec
    status: ModelTierStatus = Field(default_factory=ModelTierStatus)

    @field_validator("metadata")
    @classmethod
    def _name_fits(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        name = metadata.get("name", "")
        if not re.match(DNS_LABEL_PATTERN, name or "") or len(name) > MAX_TIER_NAME_LENGTH:
            raise ValueError(
                f"metadata.name {name!r} must be a lowercase DNS label of at most {MAX_TIER_NAME_LENGTH} characters "
                "starting with a letter (the tier's Service and Jobs are named after it)"
            )
        return metadata

