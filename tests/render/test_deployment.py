"""The Deployment, Service, PDB and router ConfigMap rendered for a ModelTier."""

from __future__ import annotations

import json

import pytest

from shoal.api.modeltier import ModelTier
from shoal.api.routepolicy import RoutePolicy
from shoal.render.deployment import DeploymentContext, SecretMount, engine_args, model_location, render_deployment
from shoal.render.pdb import render_pdb
from shoal.render.service import render_service
from shoal.render.tier import render_tier, restart_checksum, secret_mounts


def _deploy(body, **ctx):
    tier = ModelTier.from_body(body)
    context = DeploymentContext(
        replicas=ctx.get("replicas", 2),
        checkpoint=ctx.get("checkpoint", tier.spec.model.served_uri()),
        config_checksum="abc123",
        secret_mounts=ctx.get("secret_mounts", ()),
    )
    return render_deployment(tier, context)


def _containers(dep):
    return {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}


def test_small_tier_engine_gets_exact_vllm_arguments(small_tier_body):
    engine = _containers(_deploy(small_tier_body))["engine"]
    assert engine["command"] == ["vllm", "serve"]
    assert engine["args"] == [
        "s3://acme-models/support-8b/ckpt-0042",
        "--served-model-name", "support-8b",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--download-dir", "/models",
        "--tensor-parallel-size", "1",
        "--dtype", "bfloat16",
        "--gpu-memory-utilization", "0.92",
        "--load-format", "runai_streamer",
        "--max-model-len", "8192",
        "--max-num-seqs", "128",
        "--enable-prefix-caching",
    ]


def test_large_tier_is_tensor_parallel_quantized_and_pinned_to_a_revision(large_tier_body):
    tier = ModelTier.from_body(large_tier_body)
    args = engine_args(tier, tier.spec.model.served_uri())
    assert args[0] == "meta-llama/Llama-3.3-70B-Instruct"
    assert args[args.index("--revision") + 1] == "6f6073b423013f6a7d4d9f39144961bfbfbc386b"
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--quantization") + 1] == "fp8"


def test_extra_args_come_last_and_prefix_caching_can_be_turned_off(small_tier_body):
    small_tier_body["spec"]["engine"]["enablePrefixCaching"] = False
    small_tier_body["spec"]["engine"]["extraArgs"] = ["--enable-chunked-prefill"]
    args = _containers(_deploy(small_tier_body))["engine"]["args"]
    assert args[-2:] == ["--no-enable-prefix-caching", "--enable-chunked-prefill"]


def test_gpu_limits_node_selector_and_gpu_toleration(large_tier_body):
    dep = _deploy(large_tier_body)
    pod = dep["spec"]["template"]["spec"]
    engine = _containers(dep)["engine"]
    assert engine["resources"] == {
        "requests": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "2"},
        "limits": {"memory": "128Gi", "nvidia.com/gpu": "2"},
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_user_tolerations_and_node_selector_are_added_to_the_gpu_ones(small_tier_body):
    small_tier_body["spec"]["scheduling"] = {
        "nodeSelector": {"topology.kubernetes.io/zone": "us-east-1a"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
        "priorityClassName": "inference-high",
    }
    pod = _deploy(small_tier_body)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4", "topology.kubernetes.io/zone": "us-east-1a"}
    assert pod["tolerations"][1] == {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}
    assert pod["priorityClassName"] == "inference-high"


def test_cpu_only_tier_requests_no_gpu_and_tolerates_nothing(small_tier_body):
    small_tier_body["spec"]["resources"]["gpu"] = {"count": 0}
    dep = _deploy(small_tier_body)
    pod = dep["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in _containers(dep)["engine"]["resources"]["limits"]
    assert pod["tolerations"] == []
    assert "nodeSelector" not in pod


def test_probes_give_large_models_a_long_startup_budget(small_tier_body):
    small_tier_body["spec"]["engine"]["startupTimeoutSeconds"] = 3600
    engine = _containers(_deploy(small_tier_body))["engine"]
    assert engine["startupProbe"] == {
        "httpGet": {"path": "/health", "port": "engine"},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 360,
    }
    assert engine["readinessProbe"]["httpGet"] == {"path": "/health", "port": "engine"}
    assert engine["livenessProbe"]["failureThreshold"] == 4
    assert engine["lifecycle"] == {"preStop": {"sleep": {"seconds": 25}}}
    from shoal.api.routerconfig import ServerConfig

    # The engine outlives the router's drain, so requests in flight finish.
    assert engine["lifecycle"]["preStop"]["sleep"]["seconds"] > ServerConfig().drain_seconds


def test_shm_model_cache_and_tmp_volumes(small_tier_body):
    dep = _deploy(small_tier_body)
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}}
    assert volumes["model-cache"] == {"name": "model-cache", "emptyDir": {"sizeLimit": "100Gi"}}
    assert volumes["router-config"] == {"name": "router-config", "configMap": {"name": "small-router"}}
    mounts = {m["mountPath"] for m in _containers(dep)["engine"]["volumeMounts"]}
    assert mounts == {"/dev/shm", "/models", "/tmp"}


def test_pvc_checkpoint_is_mounted_read_only(small_tier_body):
    small_tier_body["spec"]["model"]["checkpoint"] = "pvc://finetunes/support/ckpt-7"
    dep = _deploy(small_tier_body)
    engine = _containers(dep)["engine"]
    assert engine["args"][0] == "/mnt/models/finetunes/support/ckpt-7"
    assert {"name": "pvc-finetunes", "mountPath": "/mnt/models/finetunes", "readOnly": True} in engine["volumeMounts"]
    volumes = dep["spec"]["template"]["spec"]["volumes"]
    assert {"name": "pvc-finetunes", "persistentVolumeClaim": {"claimName": "finetunes", "readOnly": True}} in volumes


def test_model_location_of_each_scheme():
    assert model_location("hf://org/repo") == ("org/repo", [], None)
    assert model_location("hf://org/repo@v2") == ("org/repo", ["--revision", "v2"], None)
    assert model_location("gs://bucket/m") == ("gs://bucket/m", ["--load-format", "runai_streamer"], None)


def test_pods_pass_the_restricted_pod_security_standard(small_tier_body):
    dep = _deploy(small_tier_body)
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    router = _containers(dep)["router"]
    assert router["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False


def test_router_sidecar_is_the_http_port_with_its_probes(small_tier_body):
    router = _containers(_deploy(small_tier_body))["router"]
    assert router["image"] == "ghcr.io/shoal-dev/shoal-router:0.1.0"
    assert router["args"] == ["router", "--config", "/etc/shoal/router/router.json", "--port", "8080"]
    assert router["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert router["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert router["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_labels_owner_reference_strategy_and_annotations(small_tier_body):
    dep = _deploy(small_tier_body, replicas=3)
    assert dep["metadata"]["labels"] == {
        "app.kubernetes.io/name": "modeltier",
        "app.kubernetes.io/instance": "small",
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/managed-by": "shoal",
        "app.kubernetes.io/part-of": "shoal",
        "shoal.dev/tier": "small",
    }
    assert dep["metadata"]["ownerReferences"] == [
        {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelTier", "name": "small", "uid": "0000-1111", "controller": True, "blockOwnerDeletion": True}
    ]
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "modeltier", "app.kubernetes.io/component": "inference", "shoal.dev/tier": "small"}}
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert dep["spec"]["template"]["metadata"]["annotations"] == {
        "shoal.dev/checkpoint": "s3://acme-models/support-8b/ckpt-0042",
        "shoal.dev/config-checksum": "abc123",
    }
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120


def test_credentials_secret_is_exposed_to_the_engine_as_env(small_tier_body):
    small_tier_body["spec"]["model"]["credentialsSecretRef"] = {"name": "s3-creds"}
    engine = _containers(_deploy(small_tier_body))["engine"]
    assert engine["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


def test_external_api_keys_are_mounted_as_files_for_the_router(small_tier_body):
    dep = _deploy(small_tier_body, secret_mounts=(SecretMount("frontier-api", ("api-key",)),))
    router = _containers(dep)["router"]
    assert {"name": "secret-frontier-api", "mountPath": "/var/run/shoal/secrets/frontier-api", "readOnly": True} in router["volumeMounts"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secret-frontier-api"]["secret"] == {
        "secretName": "frontier-api",
        "items": [{"key": "api-key", "path": "api-key"}],
        "defaultMode": 0o440,
    }
    engine = _containers(dep)["engine"]
    assert all("secret" not in m["name"] for m in engine["volumeMounts"])


def test_service_targets_the_router_sidecar(small_tier_body):
    svc = render_service(ModelTier.from_body(small_tier_body))
    assert svc["metadata"]["name"] == "small"
    assert svc["metadata"]["namespace"] == "llm"
    assert svc["spec"]["selector"] == {"app.kubernetes.io/name": "modeltier", "app.kubernetes.io/component": "inference", "shoal.dev/tier": "small"}
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}]


def test_pdb_allows_one_disruption_and_evicts_unhealthy_pods(small_tier_body):
    pdb = render_pdb(ModelTier.from_body(small_tier_body))
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "modeltier", "app.kubernetes.io/component": "inference", "shoal.dev/tier": "small"}},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }


def test_tier_renders_configmap_first_and_mounts_policy_secrets(small_tier_body, large_tier_body, policy_body):
    small = ModelTier.from_body(small_tier_body)
    large = ModelTier.from_body(large_tier_body)
    policy = RoutePolicy.from_body(policy_body)
    manifests = render_tier(small, replicas=1, checkpoint=small.spec.model.served_uri(), policy=policy, peers={"small": small, "large": large})
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]
    config = json.loads(manifests[0]["data"]["router.json"])
    assert [t["name"] for t in config["tiers"]] == ["small", "large", "frontier"]
    assert config["tiers"][2]["apiKeyFile"] == "/var/run/shoal/secrets/frontier-api/api-key"
    assert "replace-me" not in manifests[0]["data"]["router.json"]
    assert secret_mounts(policy) == (SecretMount("frontier-api", ("api-key",)),)


def test_routing_changes_do_not_change_the_restart_checksum(small_tier_body, policy_body):
    small = ModelTier.from_body(small_tier_body)
    policy = RoutePolicy.from_body(policy_body)
    before = render_tier(small, replicas=1, checkpoint="hf://a/b", policy=policy, peers={"small": small})
    policy_body["spec"]["cache"]["ttlSeconds"] = 60
    after = render_tier(small, replicas=1, checkpoint="hf://a/b", policy=RoutePolicy.from_body(policy_body), peers={"small": small})
    assert before[0]["data"] != after[0]["data"]
    annotation = "shoal.dev/config-checksum"
    assert before[1]["spec"]["template"]["metadata"]["annotations"][annotation] == after[1]["spec"]["template"]["metadata"]["annotations"][annotation]


def test_restart_checksum_follows_server_settings_not_the_ladder():
    a = restart_checksum({"server": {"drainSeconds": 20}, "tiers": [1]})
    b = restart_checksum({"server": {"drainSeconds": 30}, "tiers": [1]})
    c = restart_checksum({"server": {"drainSeconds": 20}, "tiers": [2]})
    assert a != b
    assert a == c


@pytest.mark.parametrize("replicas", [0, 1, 4])
def test_replicas_are_what_the_plan_decided(small_tier_body, replicas):
    assert _deploy(small_tier_body, replicas=replicas)["spec"]["replicas"] == replicas


def test_router_sidecar_learns_its_pods_serving_checkpoint_from_the_pod_template(small_tier_body):
    dep = _deploy(small_tier_body, checkpoint="s3://acme/ckpt-0043")
    router = _containers(dep)["router"]
    assert router["env"] == [{"name": "SHOAL_SERVING_CHECKPOINT", "value": "s3://acme/ckpt-0043"}]
    # The same checkpoint the engine container serves, in the same pod.
    assert "s3://acme/ckpt-0043" in json.dumps(_containers(dep)["engine"])
