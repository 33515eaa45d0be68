"""Pure decisions for one RoutePolicy: which references resolve, and its status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shoal.api import conditions as C
from shoal.api.naming import policy_endpoint
from shoal.api.routepolicy import RoutePolicy

from .conditions import Cond, merge_conditions

__all__ = ["PolicyObservation", "entry_model_tier", "policy_status", "unresolved"]


@dataclass(frozen=True)
class PolicyObservation:
    model_tiers: frozenset[str] = frozenset()  # ModelTiers that exist in the namespace
    ready_replicas: dict[str, int] = field(default_factory=dict)  # ModelTier -> status.readyReplicas
    secrets: dict[str, frozenset[str]] = field(default_factory=dict)  # Secret -> key names
    config_maps: dict[str, frozenset[str]] = field(default_factory=dict)
    adapters: dict[str, frozenset[str]] = field(default_factory=dict)  # ModelTier -> its adapter names


def unresolved(policy: RoutePolicy, observed: PolicyObservation) -> list[tuple[str, str]]:
    """(reason, sentence) for every reference that does not resolve, in spec order."""
    ns = policy.namespace
    out: list[tuple[str, str]] = []
    for i, tier in enumerate(policy.spec.tiers):
        if tier.model_tier_ref and tier.model_tier_ref.name not in observed.model_tiers:
            out.append(
                (C.REASON_MODEL_TIER_NOT_FOUND, f"spec.tiers[{i}] ({tier.name}) refers to ModelTier {tier.model_tier_ref.name!r}, which does not exist in namespace {ns!r}")
            )
        elif tier.model_tier_ref and tier.model_tier_ref.adapter and tier.model_tier_ref.adapter not in observed.adapters.get(tier.model_tier_ref.name, frozenset()):
            out.append(
                (C.REASON_ADAPTER_NOT_FOUND, f"spec.tiers[{i}] ({tier.name}) refers to adapter {tier.model_tier_ref.adapter!r} of ModelTier {tier.model_tier_ref.name!r}, which lists no such adapter in spec.adapters")
            )
        ref = tier.external.api_key_secret_ref if tier.external else None
        if ref is not None:
            keys = observed.secrets.get(ref.name)
            if keys is None:
                out.append((C.REASON_SECRET_NOT_FOUND, f"spec.tiers[{i}] ({tier.name}) refers to Secret {ref.name!r}, which does not exist in namespace {ns!r}"))
            elif ref.key not in keys:
                out.append((C.REASON_SECRET_NOT_FOUND, f"spec.tiers[{i}] ({tier.name}) refers to key {ref.key!r} of Secret {ref.name!r}, which has no such key"))
    classifier = policy.spec.classifier
    if classifier.mode == "enabled" and classifier.config_map_ref:
        ref = classifier.config_map_ref
        keys = observed.config_maps.get(ref.name)
        if keys is None or ref.key not in keys:
            out.append((C.REASON_CONFIGMAP_NOT_FOUND, f"spec.classifier.configMapRef refers to key {ref.key!r} of ConfigMap {ref.name!r}, which does not exist in namespace {ns!r}"))
    return out


def entry_model_tier(policy: RoutePolicy, observed: PolicyObservation) -> str:
    """The ModelTier whose pods the entry Service selects.

    The entry tier, unless it has no ready pod (scaled to zero, or not started): then the
    next in-cluster tier up the ladder that has one, whose router sends the requests on
    (and counts the skipped tier, which wakes it). With nothing ready anywhere, the entry
    tier, so the Service is right the moment it starts.
    """
    entry = policy.spec.entry_tier()
    assert entry.model_tier_ref is not None
    rungs = [t for t in policy.spec.tiers if t.model_tier_ref]
    start = next(i for i, t in enumerate(rungs) if t.name == entry.name)
    for rung in rungs[start:]:
        assert rung.model_tier_ref is not None
        if observed.ready_replicas.get(rung.model_tier_ref.name, 0) > 0:
            return rung.model_tier_ref.name
    return entry.model_tier_ref.name


def policy_status(policy: RoutePolicy, observed: PolicyObservation, now: datetime, previous: dict[str, Any] | None) -> dict[str, Any]:
    previous = previous or {}
    problems = unresolved(policy, observed)
    entry = policy.spec.entry_tier()
    serving_entry = entry_model_tier(policy, observed)
    wanted: list[Cond] = []
    if problems:
        message = "; ".join(p[1] for p in problems) + "."
        wanted.append(Cond(C.READY, "False", problems[0][0], message))
        wanted.append(Cond(C.RESOLVED_REFS, "False", problems[0][0], message))
    else:
        enters = f"requests enter at {entry.name}"
        if entry.model_tier_ref is not None and serving_entry != entry.model_tier_ref.name:
            enters += f" (through ModelTier {serving_entry} while {entry.model_tier_ref.name} has no ready pod)"
        wanted.append(Cond(C.READY, "True", C.REASON_RESOLVED, f"Routing across {len(policy.spec.tiers)} tiers; {enters}."))
        wanted.append(Cond(C.RESOLVED_REFS, "True", C.REASON_RESOLVED, "Every referenced ModelTier, Secret and ConfigMap exists."))
    return {
        "observedGeneration": policy.metadata.get("generation"),
        "endpoint": policy_endpoint(policy.name, policy.namespace),
        "conditions": merge_conditions(previous.get("conditions"), wanted, policy.metadata.get("generation"), now),
    }
