"""RoutePolicy -> the entry Service clients use, selecting the entry tier's pods."""

from __future__ import annotations

from typing import Any

from shoal.api.naming import (
    MANAGED_BY,
    POLICY_LABEL,
    SERVICE_PORT,
    child_metadata,
    policy_service_name,
    tier_selector,
)
from shoal.api.routepolicy import RoutePolicy


def render_entry_service(policy: RoutePolicy, entry_model_tier: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(
            "RoutePolicy",
            policy,
            policy_service_name(policy.name),
            {
                "app.kubernetes.io/name": "routepolicy",
                "app.kubernetes.io/instance": policy.name,
                "app.kubernetes.io/component": "entry",
                "app.kubernetes.io/managed-by": MANAGED_BY,
                "app.kubernetes.io/part-of": "shoal",
                POLICY_LABEL: policy.name,
            },
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": tier_selector(entry_model_tier),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"}],
        },
    }
