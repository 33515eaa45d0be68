"""What the operator applies for a ModelTier: the plan's decisions rendered to manifests.

`shoal render` calls the same function with an empty observation, so what it prints is
exactly what the operator would apply to a cluster where the tier does not exist yet.
"""

from __future__ import annotations

from typing import Any

from shoal.api.modeltier import ModelTier
from shoal.plan.tier import TierObservation, TierPlan
from shoal.render.tier import render_tier


def tier_manifests(tier: ModelTier, plan: TierPlan, observed: TierObservation) -> list[dict[str, Any]]:
    return render_tier(
        tier,
        replicas=plan.replicas,
        checkpoint=plan.checkpoint,
        policy=observed.route_policy,
        peers=observed.peers,
        adapters=plan.adapters.serving(),
    )
