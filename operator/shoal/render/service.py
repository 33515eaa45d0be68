"""ModelTier -> the Service in front of the router sidecar."""

from __future__ import annotations

from typing import Any

from shoal.api.modeltier import ModelTier

from shoal.api.naming import SERVICE_PORT, child_metadata, tier_labels, tier_selector


def render_service(tier: ModelTier) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata("ModelTier", tier, tier.name, tier_labels(tier.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": tier_selector(tier.name),
            "ports": [
                {
                    "name": "http",
                    "port": SERVICE_PORT,
                    # The router sidecar is the only way in: it meters, routes and
                    # caches every request before the engine sees it.
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }
