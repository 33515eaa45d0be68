"""LoRA adapters in the rendered Deployment and router configuration.

The engine gets the LoRA flags and run-time loading; the adapter set itself is only in the
router's ConfigMap, so changing an adapter's source never changes the pod template.
"""

from __future__ import annotations

import json

from shoal.api.modeltier import ModelTier
from shoal.render.deployment import adapter_location, engine_args
from shoal.render.tier import render_tier

ADAPTERS = [
    {"name": "support-refunds", "source": "pvc://adapters/refunds/v3", "cost": {"costCenter": "billing"}},
    {"name": "support-triage", "source": "hf://acme/triage-lora"},
]


def _with_adapters(body, adapters=ADAPTERS, **lora):
    body["spec"]["adapters"] = adapters
    if lora:
        body["spec"]["engine"]["lora"] = lora
    return ModelTier.from_body(body)


def _render(tier):
    return render_tier(tier, replicas=1, checkpoint=tier.spec.model.served_uri())


def _template(manifests):
    return next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]


def _engine(manifests):
    return next(c for c in _template(manifests)["spec"]["containers"] if c["name"] == "engine")


def test_tier_with_adapters_gets_exact_lora_arguments_after_the_model_settings(small_tier_body):
    tier = _with_adapters(small_tier_body, maxLoras=8, maxLoraRank=32, maxCpuLoras=16)
    assert engine_args(tier, tier.spec.model.served_uri()) == [
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
        "--enable-lora", "--max-loras", "8", "--max-lora-rank", "32", "--max-cpu-loras", "16",
    ]


def test_lora_defaults_are_four_slots_of_rank_sixteen_without_a_cpu_cache_flag(small_tier_body):
    tier = _with_adapters(small_tier_body)
    args = engine_args(tier, tier.spec.model.served_uri())
    assert args[args.index("--enable-lora"):] == ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "16"]


def test_tier_without_adapters_has_no_lora_flags_and_no_runtime_loading(small_tier_body):
    tier = ModelTier.from_body(small_tier_body)
    engine = _engine(_render(tier))
    assert "--enable-lora" not in engine["args"]
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in {e["name"] for e in engine["env"]}


def test_engine_allows_runtime_lora_updates_and_mounts_each_adapter_claim_read_only(small_tier_body):
    manifests = _render(_with_adapters(small_tier_body))
    engine = _engine(manifests)
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in engine["env"]
    assert {"name": "pvc-adapters", "mountPath": "/mnt/models/adapters", "readOnly": True} in engine["volumeMounts"]
    volumes = _template(manifests)["spec"]["volumes"]
    assert {"name": "pvc-adapters", "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True}} in volumes


def test_router_config_lists_adapters_with_engine_paths_and_the_local_rung_serves_their_names(small_tier_body):
    config = json.loads(_render(_with_adapters(small_tier_body))[0]["data"]["router.json"])
    assert config["adapters"] == [
        {"name": "support-refunds", "source": "pvc://adapters/refunds/v3", "path": "/mnt/models/adapters/refunds/v3", "costCenter": "billing"},
        {"name": "support-triage", "source": "hf://acme/triage-lora", "path": "acme/triage-lora"},
    ]
    local = config["tiers"][0]
    assert local["adapters"] == {"support-refunds": "pvc://adapters/refunds/v3", "support-triage": "hf://acme/triage-lora"}
    assert local["aliases"] == ["support-refunds", "support-triage"]
    assert local["adapterCostCenters"] == {"support-refunds": "billing"}


def test_changing_an_adapter_source_changes_the_config_map_but_never_the_pod_template(small_tier_body):
    before = _render(_with_adapters(small_tier_body))
    moved = [dict(ADAPTERS[0], source="pvc://adapters/refunds/v4"), ADAPTERS[1], {"name": "support-new", "source": "pvc://adapters/new/v1"}]
    after = _render(_with_adapters(small_tier_body, adapters=moved))
    assert before[0]["data"] != after[0]["data"]
    assert _template(before) == _template(after)


def test_sources_vllm_cannot_load_at_run_time_carry_the_reason():
    assert adapter_location("pvc://adapters/x/v1") == ("/mnt/models/adapters/x/v1", None)
    assert adapter_location("hf://acme/lora") == ("acme/lora", None)
    path, reason = adapter_location("hf://acme/lora@abc123")
    assert path is None and "without a revision" in reason
    path, reason = adapter_location("s3://bucket/lora")
    assert path is None and "s3:// adapters" in reason


def _ladder_policy(*rungs):
    from shoal.api.routepolicy import RoutePolicy

    return RoutePolicy.model_validate({"metadata": {"name": "chat", "namespace": "llm"}, "spec": {"tiers": list(rungs)}})


def test_a_policy_rung_can_serve_an_adapter_of_another_tier_and_its_cache_key_names_the_source(small_tier_body, large_tier_body):
    from shoal.render.routerconfig import render_router_config

    tasks = _with_adapters(small_tier_body)
    large = ModelTier.from_body(large_tier_body)
    policy = _ladder_policy(
        {"name": "refunds", "modelTierRef": {"name": "small", "adapter": "support-refunds"}},
        {"name": "big", "modelTierRef": {"name": "large"}},
        {"name": "nope", "modelTierRef": {"name": "small", "adapter": "no-such-adapter"}},
    )
    # Rendered for the large tier's sidecar: the adapter rung is the small tier's Service.
    config = render_router_config(large, policy, {"small": tasks, "large": large}, "llm")
    refunds = config["tiers"][0]
    assert (refunds["name"], refunds["kind"], refunds["model"]) == ("refunds", "service", "support-refunds")
    assert refunds["url"] == "http://small.llm.svc/v1"
    # The adapter's source keys the cache with the base checkpoint the sidecar learns live.
    assert (refunds["adapterSource"], "checkpoint" in refunds) == ("pvc://adapters/refunds/v3", False)
    assert [t["name"] for t in config["tiers"]] == ["refunds", "big"]  # the unknown adapter is left out


def test_on_its_own_tier_an_adapter_rung_goes_to_the_local_engine_and_the_base_stays_the_local_rung(small_tier_body):
    from shoal.render.routerconfig import render_router_config

    tasks = _with_adapters(small_tier_body)
    policy = _ladder_policy(
        {"name": "refunds", "modelTierRef": {"name": "small", "adapter": "support-refunds"}},
        {"name": "base", "modelTierRef": {"name": "small"}},
    )
    config = render_router_config(tasks, policy, {"small": tasks}, "llm")
    assert config["localTier"] == "base"
    refunds, base = config["tiers"]
    assert (refunds["kind"], refunds["url"], refunds["model"]) == ("local", "http://127.0.0.1:8000/v1", "support-refunds")
    assert (base["kind"], base["model"]) == ("local", "support-8b")


GATE = {"dataset": {"uri": "https://data.example/refunds.jsonl"}, "scorers": [{"type": "exactMatch"}]}


def _gated(body, adapter_status):
    """small with support-refunds gated by its own evaluation (support-triage is not)."""
    adapters = [dict(ADAPTERS[0], rollout={"evaluation": GATE}), ADAPTERS[1]]
    body["spec"]["adapters"] = adapters
    body["status"] = {**body.get("status", {}), "adapters": adapter_status}
    return ModelTier.from_body(body)


def test_a_gated_adapter_serves_its_status_source_and_nothing_before_its_first_source_passed(small_tier_body):
    from shoal.render.routerconfig import serving_adapters

    new = _gated(small_tier_body, [])
    assert serving_adapters(new) == {"support-triage": "hf://acme/triage-lora"}
    config = json.loads(_render(new)[0]["data"]["router.json"])
    assert [a["name"] for a in config["adapters"]] == ["support-triage"]
    assert config["tiers"][0]["aliases"] == ["support-triage"]
    assert "adapterCostCenters" not in config["tiers"][0]

    candidate = _gated(small_tier_body, [{"name": "support-refunds", "servingSource": "pvc://adapters/refunds/v2", "candidateSource": "pvc://adapters/refunds/v3"}])
    assert serving_adapters(candidate) == {"support-refunds": "pvc://adapters/refunds/v2", "support-triage": "hf://acme/triage-lora"}


def test_the_pass_renders_the_sources_its_plan_decided_and_a_policy_rung_waits_for_a_serving_adapter(small_tier_body, large_tier_body):
    from shoal.render.routerconfig import render_router_config

    tasks = _gated(small_tier_body, [])
    promoted = render_tier(tasks, replicas=1, checkpoint=tasks.spec.model.served_uri(), adapters={"support-refunds": "pvc://adapters/refunds/v3"})
    assert [a["source"] for a in json.loads(promoted[0]["data"]["router.json"])["adapters"]] == ["pvc://adapters/refunds/v3"]

    large = ModelTier.from_body(large_tier_body)
    policy = _ladder_policy(
        {"name": "refunds", "modelTierRef": {"name": "small", "adapter": "support-refunds"}},
        {"name": "big", "modelTierRef": {"name": "large"}},
    )
    # The large tier's sidecar reads small's status: refunds serves nothing yet, its rung waits.
    assert [t["name"] for t in render_router_config(large, policy, {"small": tasks, "large": large}, "llm")["tiers"]] == ["big"]


def test_a_ladder_that_names_a_tier_only_through_its_adapter_has_that_rung_as_the_local_one(small_tier_body, large_tier_body):
    from shoal.api.routerconfig import RouterConfig
    from shoal.render.routerconfig import render_router_config

    tasks = _with_adapters(small_tier_body)
    large = ModelTier.from_body(large_tier_body)
    policy = _ladder_policy(
        {"name": "refunds", "modelTierRef": {"name": "small", "adapter": "support-refunds"}},
        {"name": "big", "modelTierRef": {"name": "large"}},
    )
    config = render_router_config(tasks, policy, {"small": tasks, "large": large}, "llm")
    assert config["localTier"] == "refunds"
    assert [(t["name"], t["kind"], t["model"]) for t in config["tiers"]] == [("refunds", "local", "support-refunds"), ("big", "service", "support-70b")]
    RouterConfig.model_validate(config)
