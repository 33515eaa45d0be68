"""The share watch: the sidecars' held target shares in, a RoutePolicy's status.targetShares out.

Every SHARE_PERIOD_SECONDS, inside the operator-wide loop after the autoscaling pass of a
policy's entry ModelTier (one tier per policy, so a policy is read once per period), for a
RoutePolicy with `spec.classifier.targetShares`:

1. read `shoal_classifier_share_ratio{tier}` and `shoal_classifier_threshold{tier}` from
   the router sidecars of every tier of the policy (ready pods of the view; no API
   request);
2. `plan.shares.share_status`: per held tier, the target and the means over the sidecars;
3. write `status.targetShares` when it differs from what is stored (values are rounded to
   3 decimals, so steady traffic costs no write). A policy that no longer holds a share
   loses the field.

This status field is the watch's alone: the policy's own pass neither writes nor clears it.
"""

from __future__ import annotations

from typing import Any

import httpx

from shoal.api.modeltier import ModelTier
from shoal.kube.client import Kube
from shoal.kube.observe import route_policy
from shoal.kube.view import View
from shoal.plan.shares import share_status

from .clock import Clock, seconds
from .drift import policy_targets
from .metrics_source import scrape_held_shares

SHARE_PERIOD_SECONDS = 30.0
POLICY = ("shoal.dev/v1alpha1", "RoutePolicy")


class ShareWatch:
    def __init__(self, kube: Kube, view: View, http: httpx.AsyncClient, clock: Clock) -> None:
        self.kube = kube
        self.view = view
        self.http = http
        self.clock = clock
        self._last_run: dict[tuple[str, str], float] = {}

    def forget(self, namespace: str, name: str) -> None:
        self._last_run.pop((namespace, name), None)

    def due(self, namespace: str, tier: str) -> bool:
        last = self._last_run.get((namespace, tier))
        return last is None or seconds(self.clock) - last >= SHARE_PERIOD_SECONDS

    async def run(self, tier: ModelTier, body: dict[str, Any]) -> None:
        """One read of the shares of the policy whose entry tier is `tier` (if any)."""
        self._last_run[(tier.namespace, tier.name)] = seconds(self.clock)
        name = tier.spec.router.route_policy
        policy = route_policy(self.view, tier.namespace, name) if name else None
        if policy is None:
            return
        entry = policy.spec.entry_tier().model_tier_ref
        if entry is None or entry.name != tier.name:
            return
        stored = (self.view.policy(tier.namespace, policy.name) or {}).get("status") or {}
        wanted = None
        if policy.spec.classifier.mode == "enabled" and policy.spec.classifier.target_shares:
            targets, _ = policy_targets(self.view, policy, tier.namespace)
            wanted = share_status(policy, await scrape_held_shares(self.http, targets))
        if wanted == stored.get("targetShares"):
            return
        self.view.remember(await self.kube.patch_status(*POLICY, tier.namespace, policy.name, {"targetShares": wanted}))
