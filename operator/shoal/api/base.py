"""Shared building blocks of the Shoal API models.

Every model here serialises to camelCase (the Kubernetes convention) and rejects unknown
fields, so a typo in a manifest is an error that names the field rather than a silently
ignored setting.

Cross-field rules are written twice on purpose, side by side: once as CEL
(`x-kubernetes-validations`, enforced by the API server at admission) and once in Python
(enforced by `shoal render` and by the operator before it acts). The helper `cel()` keeps
the CEL text beside the Python check that mirrors it.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "shoal.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# A Kubernetes resource quantity (cpu "500m", memory "32Gi").
QUANTITY_PATTERN = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
# Names of objects Shoal creates from a tier name must stay valid DNS-1035 labels
# (Services) after suffixes such as "-router" or "-eval-0123abcd" are appended.
DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_TIER_NAME_LENGTH = 40


def wire_name(field_name: str) -> str:
    """snake_case -> camelCase, keeping the currency acronym whole (gpuHourUSD)."""
    return to_camel(field_name).replace("Usd", "USD")


class ShoalModel(BaseModel):
    """Base for every spec/status model: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=wire_name,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        # Field names such as model_tier_ref are part of the API; pydantic's own
        # methods are not shadowed by them.
        protected_namespaces=(),
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase, unset optionals omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class KubeObject(ShoalModel):
    """A whole object as the API server stores it; `from_body` validates it.

    Subclasses declare apiVersion, kind, spec and status. Fields the API server adds
    (managedFields, kopf's annotations) are accepted and ignored.
    """

    model_config = ShoalModel.model_config | {"extra": "ignore"}

    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Any) -> Self:
        return cls.model_validate(dict(body))

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def namespace(self) -> str:
        return self.metadata.get("namespace") or "default"

    @property
    def uid(self) -> str | None:
        return self.metadata.get("uid")

    @property
    def generation(self) -> int | None:
        return self.metadata.get("generation")


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """One CEL validation rule, in the shape `x-kubernetes-validations` expects."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, Any]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules into the generated CRD."""
    return {"x-kubernetes-validations": list(rules)}


class LocalObjectReference(ShoalModel):
    name: str = Field(
        min_length=1,
        max_length=253,
        description="Name of the object, in the same namespace as the resource that refers to it.",
    )


class SecretKeyReference(ShoalModel):
    name: str = Field(
        min_length=1,
        max_length=253,
        description="Name of the Secret, in the same namespace as the resource that refers to it.",
    )
    key: str = Field(
        min_length=1,
        max_length=253,
        description="Key inside the Secret whose value is used.",
    )


class ConfigMapKeyReference(ShoalModel):
    name: str = Field(
        min_length=1,
        max_length=253,
        description="Name of the ConfigMap, in the same namespace as the resource that refers to it.",
    )
    key: str = Field(
        min_length=1,
        max_length=253,
        description="Key inside the ConfigMap whose value is used.",
    )

