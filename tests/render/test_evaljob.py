"""The evaluation Job rendered for a ModelTier's candidate checkpoint."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from shoal.api.modeltier import EvaluationSpec, ModelTier
from shoal.api.naming import adapter_eval_job_name
from shoal.render.evaljob import AdapterEvalJobContext, EvalJobContext, engine_extra_args, render_adapter_eval_job, render_eval_job

CANDIDATE = "s3://acme-models/support-8b/ckpt-0043"
SERVING = "s3://acme-models/support-8b/ckpt-0042"
EVALUATION = {
    "dataset": {"configMapRef": {"name": "support-eval", "key": "items.jsonl"}},
    "scorers": [
        {"type": "exactMatch"},
        {"type": "llmJudge", "judge": {"url": "http://judge.llm.svc/v1", "model": "judge", "apiKeySecretRef": {"name": "judge", "key": "token"}}},
    ],
    "thresholds": [{"metric": "exact_match", "min": 0.8}],
    "baseline": "serving",
    "maxRegression": 0.03,
    "timeoutSeconds": 1800,
    "resources": {"cpu": "8", "memory": "48Gi"},
}


def tier_with_evaluation(body, evaluation=EVALUATION) -> ModelTier:
    body["spec"]["rollout"] = {"evaluation": evaluation}
    return ModelTier.from_body(body)


@pytest.fixture
def job(small_tier_body):
    return render_eval_job(tier_with_evaluation(small_tier_body), EvalJobContext(checkpoint=CANDIDATE, serving_checkpoint=SERVING))


def container(job):
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return only


def env(job):
    return {e["name"]: e for e in container(job)["env"]}


def test_job_runs_shoal_eval_on_the_candidate_with_the_tiers_engine_settings(job):
    c = container(job)
    assert c["command"] == ["shoal"]
    assert c["args"] == [
        "eval",
        "--serve-checkpoint", CANDIDATE,
        "--checkpoint", CANDIDATE,
        "--model", "support-8b",
        "--engine-port", "8000",
        "--engine-ready-timeout-seconds", "1800",
        "--timeout-seconds", "1740",
        "--termination-log", "/dev/termination-log",
        "--engine-arg=--download-dir", "--engine-arg=/models",
        "--engine-arg=--tensor-parallel-size", "--engine-arg=1",
        "--engine-arg=--dtype", "--engine-arg=bfloat16",
        "--engine-arg=--gpu-memory-utilization", "--engine-arg=0.92",
        "--engine-arg=--max-model-len", "--engine-arg=8192",
        "--engine-arg=--max-num-seqs", "--engine-arg=128",
        "--engine-arg=--enable-prefix-caching",
        "--baseline-endpoint", "http://small.llm.svc/v1",
        "--baseline-model", "support-8b",
        "--dataset", "/etc/shoal/dataset/items.jsonl",
    ]
    assert c["image"] == "ghcr.io/shoal-dev/shoal-eval:0.1.0"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_job_is_one_shot_bounded_by_the_timeout_and_owned_by_the_tier(job):
    assert job["metadata"]["name"] == "small-eval-" + job["metadata"]["name"].rsplit("-", 1)[1]
    assert len(job["metadata"]["name"].rsplit("-", 1)[1]) == 8
    assert job["metadata"]["namespace"] == "llm"
    assert job["metadata"]["annotations"] == {"shoal.dev/checkpoint": CANDIDATE}
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "evaluation"
    assert job["metadata"]["labels"]["shoal.dev/tier"] == "small"
    assert job["metadata"]["ownerReferences"] == [
        {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelTier", "name": "small", "uid": "0000-1111", "controller": True, "blockOwnerDeletion": True}
    ]
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 1800
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_job_asks_for_the_tiers_gpu_on_the_same_nodes(job):
    pod = job["spec"]["template"]["spec"]
    assert container(job)["resources"] == {
        "requests": {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "48Gi", "nvidia.com/gpu": "1"},
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_job_pod_is_restricted(job):
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    sc = container(job)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_spec_travels_as_json_that_shoal_eval_validates(job):
    variables = env(job)
    spec = EvaluationSpec.model_validate_json(variables["SHOAL_EVAL_SPEC"]["value"])
    assert spec.baseline == "serving"
    assert spec.max_regression == 0.03
    assert variables["SHOAL_JUDGE_API_KEY"] == {"name": "SHOAL_JUDGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "judge", "key": "token"}}}
    assert "envFrom" not in container(job)  # the small tier has no credentialsSecretRef


def test_the_dataset_configmap_is_mounted_read_only(job):
    pod = job["spec"]["template"]["spec"]
    assert {"name": "dataset", "configMap": {"name": "support-eval", "items": [{"key": "items.jsonl", "path": "items.jsonl"}]}} in pod["volumes"]
    assert {"name": "dataset", "mountPath": "/etc/shoal/dataset", "readOnly": True} in container(job)["volumeMounts"]


def test_without_a_serving_checkpoint_the_comparison_is_dropped(small_tier_body):
    job = render_eval_job(tier_with_evaluation(small_tier_body), EvalJobContext(checkpoint=CANDIDATE))
    assert "--baseline-endpoint" not in container(job)["args"]
    assert json.loads(env(job)["SHOAL_EVAL_SPEC"]["value"])["baseline"] == "none"


def test_a_uri_dataset_is_fetched_by_the_program_and_a_cpu_evaluation_needs_no_gpu_node(small_tier_body):
    evaluation = {**EVALUATION, "dataset": {"uri": "https://data.example.com/eval.jsonl"}, "resources": {"gpuCount": 0}}
    job = render_eval_job(tier_with_evaluation(small_tier_body, evaluation), EvalJobContext(checkpoint=CANDIDATE))
    pod = job["spec"]["template"]["spec"]
    assert "--dataset" not in container(job)["args"]
    assert "nvidia.com/gpu" not in container(job)["resources"]["requests"]
    assert "nodeSelector" not in pod
    assert pod["tolerations"] == []


def test_a_pvc_checkpoint_is_mounted_read_only_where_vllm_is_told_to_look(small_tier_body):
    candidate = "pvc://weights/support-8b/ckpt-0043"
    job = render_eval_job(tier_with_evaluation(small_tier_body), EvalJobContext(checkpoint=candidate))
    assert {"name": "pvc-weights", "mountPath": "/mnt/models/weights", "readOnly": True} in container(job)["volumeMounts"]
    assert {"name": "pvc-weights", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in job["spec"]["template"]["spec"]["volumes"]


def test_engine_extra_args_leave_out_what_shoal_eval_sets(small_tier_body):
    tier = tier_with_evaluation(small_tier_body)
    args = engine_extra_args(tier, "hf://acme/support@v3")
    assert "--revision" not in args and "--served-model-name" not in args and "--port" not in args
    assert args[:2] == ["--download-dir", "/models"]


def test_a_tier_without_evaluation_has_no_job(small_tier_body):
    with pytest.raises(ValueError, match="has no spec.rollout.evaluation"):
        render_eval_job(ModelTier.from_body(small_tier_body), EvalJobContext(checkpoint=CANDIDATE))


def test_the_job_validates_against_the_kubernetes_schema(job):
    kubernetes_validate.validate(job, "1.34.0", strict=True)


# --- an adapter's evaluation Job ------------------------------------------------------------

ADAPTER_V1, ADAPTER_V2 = "pvc://loras/refunds/v1", "pvc://adapters-next/refunds/v2"


def adapter_tier(body, evaluation=EVALUATION, *, own: bool = True) -> ModelTier:
    adapter = {"name": "refunds", "source": ADAPTER_V2}
    if own:
        adapter["rollout"] = {"evaluation": evaluation}
    else:
        body["spec"]["rollout"] = {"evaluation": evaluation}
    body["spec"]["adapters"] = [adapter]
    return ModelTier.from_body(body)


def adapter_job(tier: ModelTier, serving: str | None = ADAPTER_V1) -> dict:
    return render_adapter_eval_job(tier, AdapterEvalJobContext(adapter="refunds", source=ADAPTER_V2, base_checkpoint=SERVING, serving_source=serving))


def test_an_adapter_job_serves_the_base_with_the_candidate_loaded_and_compares_with_the_serving_version_on_the_same_engine(small_tier_body):
    job = adapter_job(adapter_tier(small_tier_body))
    args = container(job)["args"]
    assert args[:8] == ["eval", "--serve-checkpoint", SERVING, "--checkpoint", ADAPTER_V2, "--model", "support-8b", "--engine-port"]
    engine = [a.removeprefix("--engine-arg=") for a in args if a.startswith("--engine-arg=")]
    assert engine[engine.index("--enable-lora"):engine.index("--enable-lora") + 5] == ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "16"]
    assert engine[-3:] == ["--lora-modules", "refunds=/mnt/models/adapters-next/refunds/v2", "refunds@serving=/mnt/models/loras/refunds/v1"]
    tail = args[args.index("--candidate-model"):]
    assert tail[:2] == ["--candidate-model", "refunds"]
    assert args[args.index("--baseline-endpoint"):args.index("--baseline-endpoint") + 4] == [
        "--baseline-endpoint", "http://127.0.0.1:8000/v1", "--baseline-model", "refunds@serving"]
    assert json.loads(env(job)["SHOAL_EVAL_SPEC"]["value"])["baseline"] == "serving"
    # The base's claim is not needed (s3://); both adapters' claims are mounted read-only, once each.
    pod = job["spec"]["template"]["spec"]
    claims = sorted(v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claims == ["adapters-next", "loras"]
    assert {"name": "pvc-loras", "mountPath": "/mnt/models/loras", "readOnly": True} in container(job)["volumeMounts"]


def test_an_adapter_job_is_named_and_annotated_for_the_adapter_and_source_and_is_no_checkpoint_job(small_tier_body):
    job = adapter_job(adapter_tier(small_tier_body))
    assert job["metadata"]["name"] == adapter_eval_job_name("small", "refunds", ADAPTER_V2, SERVING)
    wanted = {"shoal.dev/adapter": "refunds", "shoal.dev/adapter-source": ADAPTER_V2, "shoal.dev/base-checkpoint": SERVING}
    assert job["metadata"]["annotations"] == wanted
    assert job["spec"]["template"]["metadata"]["annotations"] == wanted
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "evaluation"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 1800


def test_a_new_adapter_is_compared_with_the_base_model_and_the_tiers_evaluation_applies_without_its_own(small_tier_body):
    job = adapter_job(adapter_tier(small_tier_body, own=False), serving=None)
    args = container(job)["args"]
    assert args[args.index("--baseline-model") + 1] == "support-8b"
    assert not [a for a in args if "@serving" in a]


def test_an_adapter_job_without_a_comparison_has_no_baseline(small_tier_body):
    job = adapter_job(adapter_tier(small_tier_body, {**EVALUATION, "baseline": "none"}))
    args = container(job)["args"]
    assert "--baseline-endpoint" not in args
    assert [a for a in args if a.startswith("--engine-arg=refunds")] == ["--engine-arg=refunds=/mnt/models/adapters-next/refunds/v2"]


def test_the_adapter_job_passes_the_kubernetes_schema(small_tier_body):
    kubernetes_validate.validate(adapter_job(adapter_tier(small_tier_body)), "1.34.0", strict=True)


def test_an_adapter_without_any_evaluation_has_no_job(small_tier_body):
    small_tier_body["spec"]["adapters"] = [{"name": "refunds", "source": ADAPTER_V2}]
    with pytest.raises(ValueError, match="lists no adapter 'refunds' with an evaluation"):
        adapter_job(ModelTier.from_body(small_tier_body))


def test_the_serving_adapter_on_a_candidate_base_runs_on_that_base_compared_with_the_base_model_under_a_name_of_its_own(small_tier_body):
    tier = adapter_tier(small_tier_body)
    job = render_adapter_eval_job(tier, AdapterEvalJobContext(adapter="refunds", source=ADAPTER_V1, base_checkpoint=CANDIDATE, base_change=True))
    args = container(job)["args"]
    assert args[:6] == ["eval", "--serve-checkpoint", CANDIDATE, "--checkpoint", ADAPTER_V1, "--model"]
    engine = [a.removeprefix("--engine-arg=") for a in args if a.startswith("--engine-arg=")]
    assert engine[-2:] == ["--lora-modules", "refunds=/mnt/models/loras/refunds/v1"]
    assert args[args.index("--baseline-model") + 1] == "support-8b"
    assert job["metadata"]["name"] == adapter_eval_job_name("small", "refunds", ADAPTER_V1, CANDIDATE, base_change=True)
    assert job["metadata"]["name"] not in (
        adapter_eval_job_name("small", "refunds", ADAPTER_V1, CANDIDATE), adapter_eval_job_name("small", "refunds", ADAPTER_V1, SERVING, base_change=True))
    assert job["metadata"]["annotations"]["shoal.dev/base-checkpoint"] == CANDIDATE
    kubernetes_validate.validate(job, "1.34.0", strict=True)
    with pytest.raises(ValueError, match="compares with the base model"):
        render_adapter_eval_job(tier, AdapterEvalJobContext(adapter="refunds", source=ADAPTER_V1, base_checkpoint=CANDIDATE,
                                                            serving_source=ADAPTER_V1, base_change=True))
