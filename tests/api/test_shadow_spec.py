"""RoutePolicy.spec.shadow: what it accepts, and the field each refusal names."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from shoal.api.routepolicy import RoutePolicy


def _with_shadow(policy_body: dict[str, Any], shadow: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(policy_body)
    body["spec"]["shadow"] = shadow
    return body


def test_a_shadow_spec_takes_its_documented_defaults(policy_body):
    policy = RoutePolicy.from_body(_with_shadow(policy_body, {"tiers": [{"tier": "small", "reference": "frontier"}]}))
    shadow = policy.spec.shadow
    assert shadow is not None
    assert (shadow.tiers[0].sample_percent, shadow.max_usd_per_hour, shadow.max_concurrency, shadow.max_queue) == (5.0, 1.0, 4, 64)
    assert (shadow.grading.type, shadow.exclusions.tool_calls, shadow.exclusions.private, shadow.labels.mode) == (
        "exactMatch", "exclude", "exclude", "off")
    assert (shadow.detection.method, shadow.detection.min_drop_percent, shadow.detection.warmup_samples) == ("cusum", 10.0, 2000)


@pytest.mark.parametrize(
    "shadow, message",
    [
        ({"tiers": [{"tier": "small", "reference": "nope"}]}, "shadow.tiers[0].reference: 'nope' is not a tier of this policy"),
        ({"tiers": [{"tier": "large", "reference": "small"}]}, "shadow.tiers[0].reference: 'small' must come after 'large'"),
        ({"tiers": [{"tier": "frontier", "reference": "small"}]}, "shadow.tiers[0].reference: 'small' must come after 'frontier'"),
        ({"tiers": [{"tier": "small", "reference": "small"}]}, "tier small cannot be its own reference"),
        ({"tiers": [{"tier": "small", "reference": "large"}, {"tier": "small", "reference": "frontier"}]}, "repeated: small"),
        ({"tiers": [{"tier": "small", "reference": "large"}], "grading": {"type": "llmJudge", "judgeTier": "oracle"}},
         "shadow.grading.judgeTier: 'oracle' is not a tier of this policy"),
        ({"tiers": [{"tier": "small", "reference": "large", "samplePercent": 0}]}, "spec.shadow.tiers.0.samplePercent"),
        ({"tiers": [{"tier": "small", "reference": "large"}], "maxUSDPerHour": 0}, "spec.shadow.maxUSDPerHour"),
        ({"tiers": []}, "spec.shadow.tiers"),
    ],
)
def test_a_shadow_spec_that_cannot_work_is_refused_naming_the_field(policy_body, shadow, message):
    with pytest.raises(ValidationError) as info:
        RoutePolicy.from_body(_with_shadow(policy_body, shadow))
    assert message in str(info.value)
