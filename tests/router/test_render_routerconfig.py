"""render_router_config: a ModelTier and its RoutePolicy -> the sidecar's config file."""

from __future__ import annotations

import pytest

from shoal.api.modeltier import ModelTier
from shoal.api.routepolicy import RoutePolicy
from shoal.api.routerconfig import RouterConfig
from shoal.render.routerconfig import render_router_config, self_hosted_usd_per_token


def tier(name: str, model: str, gpus: int = 1, gpu_hour: float = 3.6, tps: float = 1000.0, **status) -> ModelTier:
    return ModelTier.model_validate(
        {
            "metadata": {"name": name, "namespace": "ml"},
            "spec": {
                "model": {"name": model, "source": f"hf://org/{model}@main"},
                "resources": {"gpu": {"count": gpus}},
                "replicas": {"min": 0, "max": 2},
                "cost": {"gpuHourUSD": gpu_hour, "tokensPerSecondPerReplica": tps},
                "router": {"routePolicy": "chat"},
            },
            "status": status,
        }
    )


POLICY = RoutePolicy.model_validate(
    {
        "metadata": {"name": "chat", "namespace": "ml"},
        "spec": {
            "tiers": [
                {"name": "small", "modelTierRef": {"name": "smol"}, "maxQueueDepth": 4},
                {"name": "medium", "modelTierRef": {"name": "mid"}, "aliases": ["mid-chat"]},
                {"name": "gone", "modelTierRef": {"name": "missing"}},
                {
                    "name": "frontier",
                    "external": {
                        "url": "https://api.example.com/v1/",
                        "model": "big-model",
                        "apiKeySecretRef": {"name": "frontier-key", "key": "token"},
                        "inputUSDPerMillionTokens": 2.5,
                        "outputUSDPerMillionTokens": 10.0,
                    },
                },
            ],
            "rules": [
                {"name": "code", "match": {"keywords": ["python"]}, "tier": "medium"},
                {"name": "to-gone", "match": {"keywords": ["x"]}, "tier": "gone"},
            ],
            "classifier": {"mode": "enabled", "configMapRef": {"name": "router-model", "key": "model.json"}, "confidenceThreshold": 0.6},
            "cache": {"ttlSeconds": 30},
        },
    }
)

TIERS = {
    "smol": tier("smol", "smol-chat", servingCheckpoint="hf://org/smol-ft@v2"),
    "mid": tier("mid", "mid-chat", gpus=2, replicas=0),
}


def test_small_tier_config_points_at_local_engine_services_and_external_key_file():
    config = render_router_config(TIERS["smol"], POLICY, TIERS, "ml")
    assert config["modelTier"] == "smol"
    assert config["localTier"] == "small"
    assert config["engine"] == {"metricsUrl": "http://127.0.0.1:8000/metrics", "scrapeIntervalSeconds": 1.0}
    small, medium, frontier = config["tiers"]
    assert small == {
        "name": "small",
        "kind": "local",
        "url": "http://127.0.0.1:8000/v1",
        "model": "smol-chat",
        "aliases": [],
        "inputUSDPerToken": 0.0,
        "outputUSDPerToken": 3.6 / 3600 / 1000,
        "timeoutSeconds": 600.0,
        "maxQueueDepth": 4,
    }
    assert medium["kind"] == "service"
    assert medium["url"] == "http://mid.ml.svc/v1"
    assert medium["model"] == "mid-chat"
    assert medium["aliases"] == ["mid-chat"]
    assert medium["outputUSDPerToken"] == pytest.approx(2 * 3.6 / 3600 / 1000)
    # Nothing about the peer's live state: it learns that from the peer's sidecar.
    assert "checkpoint" not in medium and "scaledToZero" not in medium
    assert frontier["kind"] == "external"
    assert frontier["url"] == "https://api.example.com/v1"
    assert frontier["apiKeyFile"] == "/var/run/shoal/secrets/frontier-key/token"
    assert frontier["inputUSDPerToken"] == pytest.approx(2.5e-6)
    assert frontier["outputUSDPerToken"] == pytest.approx(1e-5)
    assert "token" not in str(frontier.get("model"))
    assert [r["name"] for r in config["rules"]] == ["code"]
    assert config["classifier"] == {
        "path": "/etc/shoal/classifier/model.json",
        "learnedPath": "/etc/shoal/classifier/learned/model.json",
        "confidenceThreshold": 0.6,
    }
    assert config["cache"]["ttlSeconds"] == 30
    assert "entryTier" not in config["escalation"]
    RouterConfig.model_validate(config)


def test_medium_tier_config_has_its_own_engine_as_local_and_small_as_a_service():
    config = render_router_config(TIERS["mid"], POLICY, TIERS, "ml")
    assert config["localTier"] == "medium"
    assert [(t["name"], t["kind"]) for t in config["tiers"]] == [("small", "service"), ("medium", "local"), ("frontier", "external")]


def test_tier_without_policy_serves_its_local_engine_only():
    config = render_router_config(TIERS["smol"], None, TIERS, "ml")
    assert [(t["name"], t["kind"], t["url"]) for t in config["tiers"]] == [("smol", "local", "http://127.0.0.1:8000/v1")]
    assert "classifier" not in config


def test_self_hosted_cost_is_gpu_hour_price_times_gpus_over_hourly_token_throughput():
    assert self_hosted_usd_per_token(tier("a", "m", gpus=4, gpu_hour=2.0, tps=500.0)) == pytest.approx(2.0 * 4 / 3600 / 500)
    assert self_hosted_usd_per_token(tier("a", "m", gpus=0)) == 0.0


def test_the_policys_shadow_pairs_reach_the_sidecar_except_those_with_a_missing_rung():
    body = POLICY.model_dump(by_alias=True, exclude_none=True)
    body["spec"]["shadow"] = {
        "tiers": [
            {"tier": "small", "reference": "frontier", "samplePercent": 2},
            {"tier": "medium", "reference": "gone"},
        ],
        "labels": {"mode": "keep", "maxItems": 100},
    }
    policy = RoutePolicy.model_validate(body)
    config = render_router_config(TIERS["smol"], policy, TIERS, "ml")
    assert [(t["tier"], t["reference"], t["samplePercent"]) for t in config["shadow"]["tiers"]] == [("small", "frontier", 2.0)]
    assert config["shadow"]["labels"] == {"mode": "keep", "maxItems": 100, "maxBytes": 32 * 1024 * 1024}
    assert config["labelsDir"] == "/var/lib/shoal/labels"
    assert RouterConfig.model_validate(config).shadow is not None


def test_without_a_shadow_spec_the_sidecar_config_has_none():
    config = render_router_config(TIERS["smol"], POLICY, TIERS, "ml")
    assert "shadow" not in config and "labelsDir" not in config
