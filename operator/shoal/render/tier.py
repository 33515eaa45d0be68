"""Everything one ModelTier becomes, in the order it is applied.

The ConfigMap comes first so the pods never start without their router configuration.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from shoal.api.modeltier import ModelTier
from shoal.api.naming import CONFIG_KEY, child_metadata, learned_classifier_configmap_name, router_configmap_name, tier_labels
from shoal.api.routepolicy import RoutePolicy

from .deployment import DeploymentContext, SecretMount, render_deployment
from .keda import render_scaled_object
from .pdb import render_pdb
from .routerconfig import render_router_config
from .service import render_service

# Sections of the router configuration the sidecar cannot change while running: a change
# to them rolls the pods (through the checksum annotation). Everything else (the ladder,
# rules, classifier, cache, budgets) is reloaded in place, so a routing change never
# restarts a GPU pod and never drops a request in flight.
RESTART_SECTIONS = ("version", "modelTier", "localTier", "server", "engine")


def restart_checksum(config: dict[str, Any]) -> str:
    startup = {k: config.get(k) for k in RESTART_SECTIONS}
    data = json.dumps(startup, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def secret_mounts(policy: RoutePolicy | None) -> tuple[SecretMount, ...]:
    """Secrets holding external tiers' API keys, grouped per Secret, in a stable order."""
    if policy is None:
        return ()
    keys: dict[str, set[str]] = {}
    for ref in policy.spec.secret_refs():
        keys.setdefault(ref.name, set()).add(ref.key)
    return tuple(SecretMount(name, tuple(sorted(k))) for name, k in sorted(keys.items()))


def render_router_configmap(tier: ModelTier, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata("ModelTier", tier, router_configmap_name(tier.name), tier_labels(tier.name, component="router-config")),
        "data": {CONFIG_KEY: json.dumps(config, indent=2, sort_keys=True) + "\n"},
    }


def render_tier(
    tier: ModelTier,
    *,
    replicas: int,
    checkpoint: str,
    policy: RoutePolicy | None = None,
    peers: dict[str, ModelTier] | None = None,
    adapters: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """`adapters`: adapter name -> the source to serve, as the pass's plan decided (None:
    as the tier's status says, see render/routerconfig.py `serving_adapters`)."""
    config = render_router_config(tier, policy, peers or {}, tier.namespace, adapters=adapters)
    ctx = DeploymentContext(
        replicas=replicas,
        checkpoint=checkpoint,
        config_checksum=restart_checksum(config),
        secret_mounts=secret_mounts(policy),
        classifier_config_map=(
            policy.spec.classifier.config_map_ref.name
            if policy and policy.spec.classifier.mode == "enabled" and policy.spec.classifier.config_map_ref
            else None
        ),
        learned_classifier_config_map=(
            learned_classifier_configmap_name(policy.name) if policy is not None and policy.spec.classifier.learns() else None
        ),
    )
    manifests = [
        render_router_configmap(tier, config),
        render_deployment(tier, ctx),
        render_service(tier),
        render_pdb(tier),
    ]
    if tier.spec.autoscaling.engine == "keda":
        manifests.append(render_scaled_object(tier))
    return manifests
