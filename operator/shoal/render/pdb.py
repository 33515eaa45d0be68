"""ModelTier -> a PodDisruptionBudget so node drains take replicas one at a time."""

from __future__ import annotations

from typing import Any

from shoal.api.modeltier import ModelTier

from shoal.api.naming import child_metadata, tier_labels, tier_selector


def render_pdb(tier: ModelTier) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_metadata("ModelTier", tier, tier.name, tier_labels(tier.name)),
        "spec": {
            # maxUnavailable rather than minAvailable: a single-replica tier must not
            # block node maintenance forever.
            "maxUnavailable": 1,
            "selector": {"matchLabels": tier_selector(tier.name)},
            # A pod that never became ready (still loading, or crash-looping) serves
            # nothing; evicting it must not wait for the budget.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
