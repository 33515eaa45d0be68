"""ModelTier.spec.adapters: what is accepted, what is refused, and the field each error names."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from shoal.api.crds import generate_crds
from shoal.api.modeltier import MAX_ADAPTERS, ModelTier


def _with(body, adapters, **lora):
    body = copy.deepcopy(body)
    body["spec"]["adapters"] = adapters
    if lora:
        body["spec"]["engine"]["lora"] = lora
    return body


def _error(body) -> str:
    with pytest.raises(ValidationError) as info:
        ModelTier.from_body(body)
    return str(info.value)


def test_adapters_take_a_name_source_own_evaluation_and_cost_center(small_tier_body):
    evaluation = {"dataset": {"configMapRef": {"name": "refunds-eval", "key": "items.jsonl"}}, "scorers": [{"type": "contains"}]}
    tier = ModelTier.from_body(_with(small_tier_body, [
        {"name": "refunds", "source": "pvc://adapters/refunds/v3", "rollout": {"evaluation": evaluation}, "cost": {"costCenter": "billing"}},
        {"name": "triage", "source": "hf://acme/triage-lora"},
    ]))
    refunds, triage = tier.spec.adapters
    assert refunds.rollout.evaluation.dataset.config_map_ref.name == "refunds-eval"
    assert refunds.cost.cost_center == "billing"
    assert triage.rollout.evaluation is None and triage.cost.cost_center is None
    assert (tier.spec.engine.lora.max_loras, tier.spec.engine.lora.max_lora_rank, tier.spec.engine.lora.max_cpu_loras) == (4, 16, None)
    assert tier.spec.adapter("triage") is triage and tier.spec.adapter("nope") is None


@pytest.mark.parametrize(
    ("adapters", "lora", "field", "words"),
    [
        ([{"name": "a", "source": "pvc://x/a"}, {"name": "a", "source": "pvc://x/b"}], {}, "spec", "adapter names must be unique: a appears more than once"),
        ([{"name": "support-8b", "source": "pvc://x/a"}], {}, "spec", "must differ from spec.model.name"),
        ([{"name": "a", "source": "ftp://x/a"}], {}, "spec.adapters.0.source", "String should match pattern"),
        ([{"name": "-a", "source": "pvc://x/a"}], {}, "spec.adapters.0.name", "String should match pattern"),
        ([{"name": "a", "source": "pvc://x/a", "typo": 1}], {}, "spec.adapters.0.typo", "Extra inputs are not permitted"),
        ([{"name": f"a{i}", "source": "pvc://x/a"} for i in range(MAX_ADAPTERS + 1)], {}, "spec.adapters", "at most 64 items"),
        ([{"name": "a", "source": "pvc://x/a"}], {"maxLoraRank": 12}, "spec.engine.lora.maxLoraRank", "Input should be 1, 8, 16"),
        ([{"name": "a", "source": "pvc://x/a"}], {"maxLoras": 8, "maxCpuLoras": 4}, "spec", "maxCpuLoras (4) must be at least engine.lora.maxLoras (8)"),
    ],
)
def test_bad_adapter_spec_is_rejected_naming_the_field(small_tier_body, adapters, lora, field, words):
    message = _error(_with(small_tier_body, adapters, **lora))
    assert field in message
    assert words in message


def test_the_crd_enforces_unique_names_the_base_name_and_a_bounded_count():
    schema = generate_crds()[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert schema["properties"]["adapters"]["maxItems"] == 64
    rules = {r["message"]: r["rule"] for r in schema["x-kubernetes-validations"]}
    assert rules["adapter names must be unique"] == "!has(self.adapters) || self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))"
    assert rules["an adapter's name must differ from spec.model.name (the base model's served name)"] == (
        "!has(self.adapters) || self.adapters.all(a, a.name != self.model.name)"
    )
