"""The CRDs are generated from the models, structural, documented, and committed fresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shoal.api.crds import crd_filename, generate_crds
from shoal.cli import crd_yaml

ROOT = Path(__file__).resolve().parents[2]


def _walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def _schema(kind_plural: str) -> dict[str, Any]:
    crd = next(c for c in generate_crds() if c["spec"]["names"]["plural"] == kind_plural)
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("directory", ["crds", "charts/shoal/crds"])
def test_committed_crds_match_the_models(directory):
    for crd in generate_crds():
        path = ROOT / directory / crd_filename(crd)
        assert path.exists(), f"{path} is missing; run `shoal crds --out crds/ --out charts/shoal/crds/`"
        assert path.read_text() == crd_yaml(crd), f"{path} is stale; run `shoal crds --out crds/ --out charts/shoal/crds/`"


@pytest.mark.parametrize("plural", ["modeltiers", "routepolicies"])
def test_every_field_has_a_type_and_a_description(plural):
    for path, node in _walk(_schema(plural)):
        if path in ("", ".metadata", ".metadata.name"):
            continue
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{plural}{path} has no type"
        if not path.endswith("[]") and not path.endswith("{}"):
            assert node.get("description"), f"{plural}{path} has no description"


@pytest.mark.parametrize("plural", ["modeltiers", "routepolicies"])
def test_schema_is_structural(plural):
    for path, node in _walk(_schema(plural)):
        for banned in ("$ref", "anyOf", "allOf", "oneOf", "title", "const"):
            assert banned not in node, f"{plural}{path} carries {banned}"
        assert not ("properties" in node and "additionalProperties" in node), f"{plural}{path}"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node


def test_modeltier_schema_has_defaults_enums_bounds_and_cel_rules():
    spec = _schema("modeltiers")["properties"]["spec"]["properties"]
    engine = spec["engine"]["properties"]
    assert engine["image"]["default"] == "vllm/vllm-openai:v0.11.0"
    assert engine["dtype"]["enum"] == ["auto", "half", "float16", "bfloat16", "float", "float32"]
    assert engine["tensorParallelSize"] == {**engine["tensorParallelSize"], "minimum": 1, "maximum": 16, "default": 1}
    assert spec["resources"]["properties"]["gpu"]["properties"]["count"]["minimum"] == 0
    assert spec["replicas"]["default"] == {"min": 1, "max": 1}
    rules = {r["rule"]: r for r in spec["replicas"]["x-kubernetes-validations"]}
    assert rules["self.min <= self.max"]["fieldPath"] == ".min"
    spec_rules = _schema("modeltiers")["properties"]["spec"]["x-kubernetes-validations"]
    assert "self.resources.gpu.count % self.engine.tensorParallelSize == 0" in spec_rules[0]["rule"]
    name = _schema("modeltiers")["properties"]["metadata"]["properties"]["name"]
    assert name == {"type": "string", "maxLength": 40, "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"}
    assert spec["cost"]["properties"]["gpuHourUSD"]["minimum"] == 0


def test_modeltier_crd_has_subresources_printer_columns_and_names():
    crd = generate_crds()[0]
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas.desired",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Model", "Checkpoint", "Replicas", "Drifting", "Reason", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["mt", "tier"]
    assert crd["spec"]["names"]["categories"] == ["shoal"]


def test_routepolicy_crd_rules_bound_their_cost():
    spec = _schema("routepolicies")["properties"]["spec"]
    assert spec["properties"]["tiers"]["maxItems"] == 16
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert "self.tiers.all(t, self.tiers.exists_one(u, u.name == t.name))" in rules
    tier_rules = spec["properties"]["tiers"]["items"]["x-kubernetes-validations"]
    assert tier_rules[0]["rule"] == "has(self.modelTierRef) != has(self.external)"


def test_generated_yaml_round_trips():
    for crd in generate_crds():
        assert yaml.safe_load(crd_yaml(crd)) == crd
