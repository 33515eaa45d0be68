"""Generate the CustomResourceDefinitions from the pydantic models.

The models are the single source of truth; `shoal crds --out crds/` writes what this
module returns, and a test fails when the committed files (or the chart's copy) differ.

Pydantic emits JSON Schema 2020-12; the API server wants a *structural* OpenAPI v3
schema: no `$ref`, no `anyOf` for optionals, every node typed, `additionalProperties`
never beside `properties`, numeric exclusive bounds as booleans. `to_structural` does
that translation and nothing else, so what the API server enforces is what the models say.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from .base import GROUP, VERSION
from .base import DNS_LABEL_PATTERN, MAX_TIER_NAME_LENGTH
from .modeltier import ModelTierSpec, ModelTierStatus
from .routepolicy import RoutePolicySpec, RoutePolicyStatus

_DROP = {"title"}


class SchemaError(ValueError):
    """The models produced a schema the API server would not accept."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Inline `$ref`/`allOf`/nullable `anyOf`. Returns (schema, was_optional)."""
    optional = False
    node = dict(node)
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        optional = True
        if len(variants) != 1:
            raise SchemaError(f"union types are not supported in CRDs: {variants}")
        inner, _ = _resolve(variants[0], defs)
        merged = {**inner, **{k: v for k, v in node.items() if k != "default" or v is not None}}
        return merged, optional
    if "allOf" in node and len(node["allOf"]) == 1:
        inner, _ = _resolve(node.pop("allOf")[0], defs)
        return {**inner, **node}, optional
    if "$ref" in node:
        ref = node.pop("$ref").rsplit("/", 1)[-1]
        inner, _ = _resolve(defs[ref], defs)
        return {**inner, **node}, optional
    return node, optional


def _filled_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """The object an absent field defaults to, with every leaf default filled in.

    The API server validates a default against the CEL rules as it is, before leaf
    defaults apply, so `{}` would fail rules such as `self.min <= self.max`.
    """
    out: dict[str, Any] = {}
    for name, sub in schema.get("properties", {}).items():
        if "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
    return out


def to_structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node, _ = _resolve(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            props: dict[str, Any] = {}
            required = set(node.get("required", []))
            for name, sub in value.items():
                resolved, optional = _resolve(sub, defs)
                converted = to_structural(resolved, defs)
                # An object whose fields all have defaults is defaulted to {} so the API
                # server fills in the leaf defaults and `kubectl get -o yaml` shows the
                # effective configuration.
                if (
                    name not in required
                    and not optional
                    and converted.get("type") == "object"
                    and "properties" in converted
                    and not converted.get("required")
                    and "default" not in converted
                ):
                    converted["default"] = _filled_defaults(converted)
                props[name] = converted
            out["properties"] = props
        elif key == "items":
            out["items"] = to_structural(value, defs)
        elif key == "additionalProperties":
            if value is True or value is False:
                continue  # structural schemas prune unknown fields instead
            out["additionalProperties"] = to_structural(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        elif key == "minItems" and value == 0:
            continue
        else:
            out[key] = copy.deepcopy(value)
    if "properties" in out and "additionalProperties" in out:
        del out["additionalProperties"]
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaError(f"schema node without a type: {node}")
    return out


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return to_structural(raw, defs)


def _root(
    spec: type[BaseModel],
    status: type[BaseModel],
    kind: str,
    root_rules: list[dict[str, Any]],
    name_schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec_schema = _schema_of(spec)
    spec_schema.setdefault("description", f"Desired state of the {kind}.")
    status_schema = _schema_of(status)
    status_schema["description"] = f"Observed state of the {kind}, written by the Shoal operator."
    root: dict[str, Any] = {
        "type": "object",
        "description": spec.__doc__.strip().splitlines()[0] if spec.__doc__ else kind,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object: shoal.dev/v1alpha1."},
            "kind": {"type": "string", "description": f"Kind of this object: {kind}."},
            # The API server owns metadata's schema; only name (and generateName) may be
            # narrowed, which makes an over-long name an error that names the field.
            "metadata": {"type": "object", **({"properties": {"name": name_schema}} if name_schema else {})},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    if root_rules:
        root["x-kubernetes-validations"] = root_rules
    return root


_TIER_DOC = (
    "A ModelTier serves one model checkpoint with vLLM on GPUs, behind the Shoal router "
    "sidecar, scaled on queue depth, with eval-gated checkpoint rollouts."
)
_POLICY_DOC = (
    "A RoutePolicy sends each request to the smallest tier that can handle it, escalates "
    "and falls back along an ordered ladder of ModelTiers and external endpoints, caches "
    "deterministic answers and accounts cost per request."
)


def _crd(names: dict[str, Any], schema: dict[str, Any], subresources: dict[str, Any], columns: list[dict[str, Any]]) -> dict[str, Any]:
    """The CustomResourceDefinition envelope shared by every Shoal kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{names['plural']}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "shoal"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {**names, "categories": ["shoal"]},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def _ready_column(what: str) -> dict[str, Any]:
    return {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status', "description": what}


_REASON_COLUMN = {"name": "Reason", "type": "string", "priority": 1, "jsonPath": '.status.conditions[?(@.type=="Ready")].reason', "description": "Why it is or is not ready."}
_AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def modeltier_crd() -> dict[str, Any]:
    schema = _root(
        ModelTierSpec,
        ModelTierStatus,
        "ModelTier",
        [],
        name_schema={"type": "string", "maxLength": MAX_TIER_NAME_LENGTH, "pattern": DNS_LABEL_PATTERN},
    )
    schema["description"] = _TIER_DOC
    return _crd(
        {"kind": "ModelTier", "listKind": "ModelTierList", "plural": "modeltiers", "singular": "modeltier", "shortNames": ["mt", "tier"]},
        schema,
        {
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas.desired",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        [
            _ready_column("Whether the tier serves the checkpoint its spec asks for."),
            {"name": "Model", "type": "string", "jsonPath": ".spec.model.name", "description": "Served model name."},
            {"name": "Checkpoint", "type": "string", "jsonPath": ".status.servingCheckpoint", "description": "Checkpoint serving traffic."},
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas", "description": "Ready replicas."},
            {
                "name": "Drifting", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Drifting")].status',
                "description": "Whether the tier agrees less with its shadow reference than at promotion (empty without shadow evaluation).",
            },
            _REASON_COLUMN,
            _AGE_COLUMN,
        ],
    )


def routepolicy_crd() -> dict[str, Any]:
    schema = _root(RoutePolicySpec, RoutePolicyStatus, "RoutePolicy", [])
    schema["description"] = _POLICY_DOC
    return _crd(
        {"kind": "RoutePolicy", "listKind": "RoutePolicyList", "plural": "routepolicies", "singular": "routepolicy", "shortNames": ["rp"]},
        schema,
        {"status": {}},
        [
            _ready_column("Whether the policy routes traffic."),
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "description": "In-cluster URL of the policy."},
            _REASON_COLUMN,
            _AGE_COLUMN,
        ],
    )


def generate_crds() -> list[dict[str, Any]]:
    """Every CRD Shoal defines, in a stable order."""
    return [modeltier_crd(), routepolicy_crd()]


def crd_filename(crd: dict[str, Any]) -> str:
    return f"{crd['spec']['group']}_{crd['spec']['names']['plural']}.yaml"
