"""ModelTier -> a KEDA ScaledObject, for `autoscaling.engine: keda`.

Clusters that already run KEDA can let it scale a tier instead of the operator. The
ScaledObject scales the tier's Deployment on the same signal Shoal's own autoscaler uses:
the tier's total in-flight requests (waiting + running), read from Prometheus with
`autoscaling.prometheus.query`, against `targetQueueDepth` per replica. The windows, the
scale-down step and the bounds carry over to the HPA that KEDA creates.

KEDA cannot sum a gauge over every pod of a Deployment by itself, so it needs a Prometheus
that scrapes the sidecars: `autoscaling.prometheus` is required with engine keda.
"""

from __future__ import annotations

from typing import Any

from shoal.api.modeltier import ModelTier
from shoal.api.naming import child_metadata, tier_labels

KEDA_API_VERSION = "keda.sh/v1alpha1"


def render_scaled_object(tier: ModelTier, deployment_name: str | None = None) -> dict[str, Any]:
    """The ScaledObject for a tier whose autoscaling.engine is keda.

    deployment_name defaults to the tier's name (the Deployment render_deployment makes).
    The API requires autoscaling.prometheus whenever the engine is keda.
    """
    autoscaling = tier.spec.autoscaling
    replicas = tier.spec.replicas
    assert autoscaling.prometheus is not None, "validated by AutoscalingSpec"
    period = autoscaling.metrics_period_seconds
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name or tier.name},
        "pollingInterval": period,
        # replicas.desired (kubectl scale) raises the floor, as it does for Shoal's own
        # autoscaler, so KEDA and a manual scale never undo each other.
        "minReplicaCount": replicas.floor,
        "maxReplicaCount": replicas.max,
        "advanced": {
            "horizontalPodAutoscalerConfig": {
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": autoscaling.scale_up_window_seconds},
                    "scaleDown": {
                        "stabilizationWindowSeconds": autoscaling.scale_down_window_seconds,
                        "policies": [
                            {"type": "Pods", "value": autoscaling.scale_down_step_replicas, "periodSeconds": period}
                        ],
                    },
                }
            }
        },
        "triggers": [
            {
                "type": "prometheus",
                # AverageValue: KEDA's HPA divides the tier total by the replica count,
                # i.e. desired = ceil(total / targetQueueDepth), Shoal's own rule.
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": autoscaling.prometheus.url,
                    "query": autoscaling.prometheus.query,
                    "threshold": f"{autoscaling.target_queue_depth:g}",
                    # Any request wakes a tier at zero (KEDA's activation phase).
                    "activationThreshold": "0",
                },
            }
        ],
    }
    if replicas.floor == 0:
        # Scale to zero only after the tier's idle period without load.
        spec["cooldownPeriod"] = autoscaling.scale_to_zero_idle_seconds
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": child_metadata("ModelTier", tier, tier.name, tier_labels(tier.name)),
        "spec": spec,
    }
