"""The autoscaler's pass for one ModelTier: read queue depth, decide (pure), scale.

Every `autoscaling.metricsPeriodSeconds` the pass scrapes each ready pod's router sidecar,
calls `plan.autoscale.decide`, and changes the Deployment's scale subresource only when the
decision differs from its current size, with an Event for each scale action.

The decision's history (the recommendations of its windows) lives in this process and is
written to the ModelTier status only together with a change the user should see (a new
desired size, reason or ScalingActive condition). A steady tier is therefore never written
to; after an operator restart the windows start empty, which can only delay a scale-down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

from shoal.api import conditions as C
from pydantic import ValidationError

from shoal.api.modeltier import ModelTier
from shoal.api.routepolicy import RoutePolicy
from shoal.api.naming import selector_string, tier_selector
from shoal.kube.client import Kube
from shoal.plan.autoscale import Decision, History, Observed, decide
from shoal.plan.conditions import Cond, update_conditions

from .metrics_source import PodTarget, query_prometheus, scrape_pods, scrape_spillovers, spread_total

log = logging.getLogger("shoal.autoscaler")


def _ready(pod: dict[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    for cond in pod.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class TierMemory:
    history: History = field(default_factory=History)
    last_run: float = 0.0
    # Last spill-over counter seen per peer pod; the first reading of a pod is a baseline.
    spill_counters: dict[str, float] = field(default_factory=dict)

    def spilled_since(self, readings: dict[str, float | None]) -> int:
        """Requests counted since the previous readings (a restarted pod counts from 0)."""
        new = 0.0
        for pod, value in readings.items():
            if value is None:
                continue
            before = self.spill_counters.get(pod)
            if before is not None:
                new += value - before if value >= before else value
            self.spill_counters[pod] = value
        for pod in list(self.spill_counters):
            if pod not in readings:
                del self.spill_counters[pod]
        return int(new)


class Autoscaler:
    def __init__(self, kube: Kube, http: httpx.AsyncClient, clock: Callable[[], float] = time.time) -> None:
        self.kube = kube
        self.http = http
        self.clock = clock
        self._memory: dict[tuple[str, str], TierMemory] = {}

    def forget(self, namespace: str, name: str) -> None:
        self._memory.pop((namespace, name), None)

    def due(self, tier: ModelTier) -> bool:
        memory = self._memory.get((tier.namespace, tier.name))
        return memory is None or self.clock() - memory.last_run >= tier.spec.autoscaling.metrics_period_seconds

    async def spilled(self, tier: ModelTier, memory: TierMemory) -> int:
        """Requests the other tiers' routers sent past this tier (it was asleep or full)
        since the last pass: the wake-up signal of a tier at zero."""
        if not tier.spec.router.route_policy:
            return 0
        body = await self.kube.get("shoal.dev/v1alpha1", "RoutePolicy", tier.namespace, tier.spec.router.route_policy)
        if body is None:
            return 0
        try:
            policy = RoutePolicy.from_body(body)
        except ValidationError:
            return 0
        mine = frozenset(t.name for t in policy.spec.tiers if t.model_tier_ref and t.model_tier_ref.name == tier.name)
        peers = {t.model_tier_ref.name for t in policy.spec.tiers if t.model_tier_ref and t.model_tier_ref.name != tier.name}
        if not mine or not peers:
            return 0
        targets: list[PodTarget] = []
        for peer in sorted(peers):
            for pod in await self.kube.list("v1", "Pod", tier.namespace, selector_string(tier_selector(peer))):
                if _ready(pod) and pod.get("status", {}).get("podIP"):
                    targets.append(PodTarget(pod["metadata"]["name"], pod["status"]["podIP"], tier.spec.router.port))
        return memory.spilled_since(await scrape_spillovers(self.http, targets, mine))

    async def observe(self, tier: ModelTier, deployment: dict[str, Any], memory: TierMemory) -> Observed:
        current = int(deployment.get("spec", {}).get("replicas") or 0)
        pods = await self.kube.list("v1", "Pod", tier.namespace, selector_string(tier_selector(tier.name)))
        ready = [p for p in pods if _ready(p) and p.get("status", {}).get("podIP")]
        autoscaling = tier.spec.autoscaling
        if autoscaling.metrics_source == "prometheus" and autoscaling.prometheus is not None:
            total = await query_prometheus(self.http, autoscaling.prometheus.url, autoscaling.prometheus.query)
            loads = spread_total(total, [p["metadata"]["name"] for p in ready], self.clock())
        else:
            targets = [PodTarget(p["metadata"]["name"], p["status"]["podIP"], tier.spec.router.port) for p in ready]
            loads = await scrape_pods(self.http, targets, clock=self.clock)
        # Spill-overs are only the wake-up signal of a sleeping tier; a running tier reports
        # its own load. Reading them only at zero keeps the common pass to one scrape.
        spilled = await self.spilled(tier, memory) if current == 0 else 0
        if current > 0:
            memory.spill_counters.clear()
        return Observed(current_replicas=current, pods=loads, spilled_requests=spilled)

    async def run(self, tier: ModelTier, body: dict[str, Any]) -> None:
        """One autoscaling pass. The caller holds the tier's lock."""
        key = (tier.namespace, tier.name)
        memory = self._memory.setdefault(key, TierMemory())
        memory.last_run = self.clock()
        deployment = await self.kube.get("apps/v1", "Deployment", tier.namespace, tier.name)
        if deployment is None:
            return
        observed = await self.observe(tier, deployment, memory)
        decision = decide(tier.spec.autoscaling, tier.spec.replicas, observed, memory.history, now=self.clock())
        memory.history = decision.history
        if decision.changes(observed.current_replicas):
            await self.kube.scale("apps/v1", "Deployment", tier.namespace, tier.name, decision.desired_replicas)
            verb = "up" if decision.desired_replicas > observed.current_replicas else "down"
            await self.kube.event(
                body,
                "Normal",
                f"Scaled{verb.capitalize()}",
                f"Scaled {verb} from {observed.current_replicas} to {decision.desired_replicas} replicas ({decision.reason}): {decision.message}",
            )
        patch = status_patch(body.get("status") or {}, decision, tier.generation, self.clock())
        if patch:
            await self.kube.patch_status("shoal.dev/v1alpha1", "ModelTier", tier.namespace, tier.name, patch)


def status_patch(stored: dict[str, Any], decision: Decision, generation: int | None, now: float) -> dict[str, Any] | None:
    """The autoscaler's part of the status, when something a user would notice changed."""
    before = stored.get("autoscaler") or {}
    history = decision.history
    wanted = {
        "desiredReplicas": decision.desired_replicas,
        "reason": decision.reason,
    }
    if before.get("desiredReplicas") == wanted["desiredReplicas"] and before.get("reason") == wanted["reason"]:
        scaling_cond_same = any(
            c.get("type") == C.SCALING_ACTIVE
            and c.get("status") == ("True" if decision.scaling_active else "False")
            and c.get("reason") == decision.condition_reason
            for c in stored.get("conditions") or []
        )
        if scaling_cond_same:
            return None
    autoscaler: dict[str, Any] = {**wanted, "message": decision.message}
    if decision.queue_depth is not None:
        autoscaler["queueDepth"] = round(decision.queue_depth, 3)
    if decision.waiting is not None:
        autoscaler["waiting"] = round(decision.waiting, 3)
    if history.last_scale_time is not None:
        autoscaler["lastScaleTime"] = _rfc3339(history.last_scale_time)
    if history.last_request_time is not None:
        autoscaler["lastRequestTime"] = _rfc3339(history.last_request_time)
    conditions = update_conditions(
        stored.get("conditions"),
        [Cond(C.SCALING_ACTIVE, "True" if decision.scaling_active else "False", decision.condition_reason, decision.message)],
        generation,
        datetime.fromtimestamp(now, tz=timezone.utc),
    )
    return {"autoscaler": autoscaler, "conditions": conditions}
