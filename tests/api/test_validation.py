"""Specs that pass or fail the API models, and the field each error names."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from shoal.api.modeltier import ModelTier
from shoal.api.routepolicy import RoutePolicy


def _tier(body: dict[str, Any], **spec_patch: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    for path, value in spec_patch.items():
        node = body["spec"]
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return body


def _error(body: dict[str, Any], model: type = ModelTier) -> str:
    with pytest.raises(ValidationError) as info:
        model.from_body(body)
    return str(info.value)


def test_example_small_tier_is_valid_and_defaults_fill_in(small_tier_body):
    tier = ModelTier.from_body(small_tier_body)
    assert tier.spec.engine.image == "vllm/vllm-openai:v0.11.0"
    assert tier.spec.engine.tensor_parallel_size == 1
    assert tier.spec.resources.gpu.resource_name == "nvidia.com/gpu"
    assert tier.spec.autoscaling.engine == "shoal"
    assert tier.spec.cost.gpu_hour_usd == 0.80
    assert tier.spec.model.served_uri() == "s3://acme-models/support-8b/ckpt-0042"


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"engine__dtype": "int3"}, "spec.engine.dtype", "Input should be 'auto'"),
        ({"engine__quantization": "zip"}, "spec.engine.quantization", "Input should be 'awq'"),
        ({"replicas": {"min": 3, "max": 2}}, "spec.replicas", "replicas.min (3) must be less than or equal to replicas.max (2)"),
        ({"resources__gpu__count": -1}, "spec.resources.gpu.count", "greater than or equal to 0"),
        ({"engine__tensorParallelSize": 2}, "spec", "resources.gpu.count (1) must be a multiple of engine.tensorParallelSize (2)"),
        ({"model__source": "ftp://x/y"}, "spec.model.source", "String should match pattern"),
        ({"engine__gpuMemoryUtilization": 1.5}, "spec.engine.gpuMemoryUtilization", "less than or equal to 0.99"),
        ({"engine__extraArgs": ["--port=9000"]}, "spec.engine.extraArgs", "--port is set by Shoal"),
        ({"engine__maxModelLen": 12}, "spec.engine.maxModelLen", "greater than or equal to 128"),
        ({"autoscaling__engine": "hpa"}, "spec.autoscaling.engine", "Input should be 'shoal', 'keda' or 'none'"),
        ({"engine__typo": 1}, "spec.engine.typo", "Extra inputs are not permitted"),
    ],
)
def test_bad_tier_spec_is_rejected_naming_the_field(small_tier_body, patch, field, words):
    message = _error(_tier(small_tier_body, **patch))
    assert field in message
    assert words in message


def test_over_long_tier_name_is_rejected(small_tier_body):
    small_tier_body["metadata"]["name"] = "a" * 41
    message = _error(small_tier_body)
    assert "metadata" in message
    assert "at most 40 characters" in message


def test_tier_name_must_start_with_a_letter(small_tier_body):
    small_tier_body["metadata"]["name"] = "8b-tier"
    assert "lowercase DNS label" in _error(small_tier_body)


def test_env_var_needs_exactly_one_source(small_tier_body):
    body = _tier(small_tier_body, engine__env=[{"name": "A"}])
    assert "set exactly one of value or valueFrom" in _error(body)


def test_prometheus_metrics_source_needs_a_query(small_tier_body):
    body = _tier(small_tier_body, autoscaling__metricsSource="prometheus")
    assert "autoscaling.prometheus is required" in _error(body)


def test_replicas_min_zero_is_allowed_for_scale_to_zero(large_tier_body):
    tier = ModelTier.from_body(large_tier_body)
    assert tier.spec.replicas.min == 0
    assert tier.spec.replicas.max == 2


def test_desired_replicas_outside_bounds_is_rejected(small_tier_body):
    body = _tier(small_tier_body, replicas={"min": 1, "max": 4, "desired": 9})
    assert "replicas.desired (9) must lie between replicas.min (1) and replicas.max (4)" in _error(body)


def test_example_policy_is_valid(policy_body):
    policy = RoutePolicy.from_body(policy_body)
    assert [t.name for t in policy.spec.tiers] == ["small", "large", "frontier"]
    assert policy.spec.entry_tier().name == "small"
    assert policy.spec.tiers[2].external.input_usd_per_million_tokens == 2.0
    assert [(r.name, r.tier) for r in policy.spec.rules] == [("long-context", "large"), ("legal", "large")]


def test_policy_with_duplicate_tier_names_is_rejected(policy_body):
    policy_body["spec"]["tiers"][1]["name"] = "small"
    assert "tier names must be unique; repeated: small" in _error(policy_body, RoutePolicy)


def test_policy_tier_with_both_targets_is_rejected(policy_body):
    policy_body["spec"]["tiers"][0]["external"] = {"url": "https://x/v1", "model": "m"}
    assert "tier small: set exactly one of modelTierRef or external" in _error(policy_body, RoutePolicy)


def test_policy_rule_naming_an_unknown_tier_is_rejected(policy_body):
    policy_body["spec"]["rules"][0]["tier"] = "huge"
    assert "rule long-context names tier 'huge', which is not in tiers" in _error(policy_body, RoutePolicy)


def test_policy_rule_with_broken_regex_is_rejected(policy_body):
    policy_body["spec"]["rules"][0]["match"] = {"regex": ["(unclosed"]}
    message = _error(policy_body, RoutePolicy)
    assert "spec.rules.0.match.regex" in message
    assert "does not compile" in message


def test_policy_without_any_model_tier_is_rejected(policy_body):
    policy_body["spec"]["tiers"] = [policy_body["spec"]["tiers"][2]]
    assert "at least one tier must reference a ModelTier" in _error(policy_body, RoutePolicy)


def test_enabled_classifier_needs_its_config_map(policy_body):
    policy_body["spec"]["classifier"] = {"mode": "enabled"}
    assert "classifier.configMapRef is required" in _error(policy_body, RoutePolicy)
