"""The autoscaler: one operator-wide loop that sizes every ModelTier on queue depth.

Each tier's pass runs when its `autoscaling.metricsPeriodSeconds` has come round: it reads
the tier, its Deployment and its pods from the in-memory view (no API request), scrapes
each ready pod's router sidecar, calls `plan.autoscale.decide_scale`, and changes the
Deployment's scale subresource only when the decision differs from its current size, with
an Event for each scale action (recorded first, so a kill between the two loses nothing:
the Event's name makes a second recording of it a no-op).

One loop for all tiers rather than a timer per tier: a tier that is not due costs one
comparison, and no task or API request exists per tier.

The decision's history (the recommendations of its windows) lives in this process only
and is written to the ModelTier status only together with a change the user should see (a
new desired size, reason or ScalingActive condition). A steady tier is therefore never
written to; after an operator restart the windows start empty, which can only delay a
scale-down by one window, never cause one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
from pydantic import ValidationError

from shoal.api import conditions as C
from shoal.api.modeltier import ModelTier
from shoal.api.times import rfc3339
from shoal.kube.client import Kube
from shoal.kube.observe import route_policy
from shoal.kube.view import View
from shoal.plan.autoscale import History, Observed, ScaleDecision, decide_scale
from shoal.plan.conditions import Cond, update_conditions

from .clock import Clock, seconds
from .metrics_source import PodTarget, query_prometheus, scrape_pods, scrape_spillovers, spread_total

log = logging.getLogger("shoal.autoscaler")


def _ready(pod: dict[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    for cond in pod.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


@dataclass
class TierMemory:
    history: History = field(default_factory=History)
    last_run: float = float("-inf")
    # Last spill-over counter seen per peer pod. The baseline is taken on the pass that
    # puts the tier to sleep (before the scale call), so a request spilled in the moment
    # between that pass and the next one still wakes the tier.
    spill_counters: dict[str, float] = field(default_factory=dict)
    # When this operator put the tier to sleep (None: not seen, e.g. after a restart).
    asleep_since: float | None = None

    def spilled_since(self, readings: dict[str, float | None], new_pods: frozenset[str] = frozenset()) -> int:
        """Requests counted since the previous readings (a restarted pod counts from 0).

        A pod without a previous reading is a baseline, except one in `new_pods` (started
        after the tier went to sleep): everything it counted came after, so all of it is new.
        """
        new = 0.0
        for pod, value in readings.items():
            if value is None:
                continue
            before = self.spill_counters.get(pod)
            if before is not None:
                new += value - before if value >= before else value
            elif pod in new_pods:
                new += value
            self.spill_counters[pod] = value
        for pod in list(self.spill_counters):
            if pod not in readings:
                del self.spill_counters[pod]
        return int(new)


def _started_at(pod: dict[str, Any]) -> float | None:
    started = (pod.get("status") or {}).get("startTime")
    if not started:
        return None
    try:
        return datetime.fromisoformat(str(started).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Autoscaler:
    def __init__(self, kube: Kube, view: View, http: httpx.AsyncClient, clock: Clock) -> None:
        self.kube = kube
        self.view = view
        self.http = http
        self.clock = clock
        self._memory: dict[tuple[str, str], TierMemory] = {}
        # Parsed specs by (namespace, name) -> (generation, tier): validating every tier's
        # spec on every tick would cost more than the whole pass of a tier that is not due.
        self._parsed: dict[tuple[str, str], tuple[Any, ModelTier]] = {}

    def forget(self, namespace: str, name: str) -> None:
        self._memory.pop((namespace, name), None)
        self._parsed.pop((namespace, name), None)

    def due(self, namespace: str, name: str, body: dict[str, Any]) -> bool:
        """Whether the tier's metrics period has come round (read off the raw spec)."""
        memory = self._memory.get((namespace, name))
        if memory is None:
            return True
        period = ((body.get("spec") or {}).get("autoscaling") or {}).get("metricsPeriodSeconds") or 5
        return seconds(self.clock) - memory.last_run >= period

    def parsed(self, body: dict[str, Any]) -> ModelTier | None:
        meta = body["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        cached = self._parsed.get(key)
        stamp = (meta.get("uid"), meta.get("generation"))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            tier = ModelTier.from_body(body)
        except ValidationError:
            return None  # the tier's reconcile reports it
        self._parsed[key] = (stamp, tier)
        return tier

    async def peer_spills(self, tier: ModelTier) -> tuple[dict[str, float | None], dict[str, float | None]]:
        """Per ready pod of the policy's other tiers: its router's count of requests sent
        past this tier's rungs (None where the read failed), and when the pod started."""
        if not tier.spec.router.route_policy:
            return {}, {}
        policy = route_policy(self.view, tier.namespace, tier.spec.router.route_policy)
        if policy is None:
            return {}, {}
        mine = frozenset(t.name for t in policy.spec.tiers if t.model_tier_ref and t.model_tier_ref.name == tier.name)
        peers = {t.model_tier_ref.name for t in policy.spec.tiers if t.model_tier_ref and t.model_tier_ref.name != tier.name}
        if not mine or not peers:
            return {}, {}
        targets: list[PodTarget] = []
        started: dict[str, float | None] = {}
        for peer in sorted(peers):
            for pod in self.view.pods(tier.namespace, peer):
                if _ready(pod) and pod.get("status", {}).get("podIP"):
                    targets.append(PodTarget(pod["metadata"]["name"], pod["status"]["podIP"], tier.spec.router.port))
                    started[pod["metadata"]["name"]] = _started_at(pod)
        return await scrape_spillovers(self.http, targets, mine), started

    async def spilled(self, tier: ModelTier, memory: TierMemory) -> int:
        """Requests the other tiers' routers sent past this tier (it was asleep or full)
        since the last pass: the wake-up signal of a tier at zero."""
        readings, started = await self.peer_spills(tier)
        asleep = memory.asleep_since
        new_pods = frozenset(p for p, t in started.items() if asleep is not None and t is not None and t > asleep)
        return memory.spilled_since(readings, new_pods)

    async def observe(self, tier: ModelTier, deployment: dict[str, Any], memory: TierMemory) -> Observed:
        current = int(deployment.get("spec", {}).get("replicas") or 0)
        ready = [p for p in self.view.pods(tier.namespace, tier.name) if _ready(p) and p.get("status", {}).get("podIP")]
        autoscaling = tier.spec.autoscaling
        if autoscaling.engine != "shoal":
            loads: tuple[Any, ...] = ()  # the decision does not read load for none or keda
        elif autoscaling.metrics_source == "prometheus" and autoscaling.prometheus is not None:
            total = await query_prometheus(self.http, autoscaling.prometheus.url, autoscaling.prometheus.query)
            loads = spread_total(total, [p["metadata"]["name"] for p in ready], seconds(self.clock))
        else:
            targets = [PodTarget(p["metadata"]["name"], p["status"]["podIP"], tier.spec.router.port) for p in ready]
            loads = await scrape_pods(self.http, targets, clock=lambda: seconds(self.clock))
        # Spill-overs are only the wake-up signal of a sleeping tier; a running tier reports
        # its own load. Reading them only at zero keeps the common pass to one scrape.
        spilled = await self.spilled(tier, memory) if current == 0 and autoscaling.engine == "shoal" else 0
        if current > 0:
            memory.spill_counters.clear()
            memory.asleep_since = None
        return Observed(current_replicas=current, pods=loads, spilled_requests=spilled)

    async def run(self, body: dict[str, Any]) -> None:
        """One autoscaling pass over the tier `body`. The caller holds the tier's lock."""
        tier = self.parsed(body)
        if tier is None:
            return
        key = (tier.namespace, tier.name)
        memory = self._memory.setdefault(key, TierMemory())
        memory.last_run = seconds(self.clock)
        deployment = self.view.get("Deployment", tier.namespace, tier.name)
        if deployment is None:
            return
        observed = await self.observe(tier, deployment, memory)
        now = seconds(self.clock)
        decision = decide_scale(tier.spec.autoscaling, tier.spec.replicas, observed, memory.history, now=now)
        memory.history = decision.history
        if decision.changes(observed.current_replicas):
            if decision.desired_replicas == 0 and tier.spec.autoscaling.engine == "shoal":
                # Going to sleep: the peers' counters now are the baseline of the wake-up
                # signal, read before the scale so no spilled request falls in between.
                readings, _ = await self.peer_spills(tier)
                memory.spill_counters = {p: v for p, v in readings.items() if v is not None}
                memory.asleep_since = now
            verb = "up" if decision.desired_replicas > observed.current_replicas else "down"
            await self.kube.event(
                body,
                "Normal",
                f"Scaled{verb.capitalize()}",
                f"Scaled {verb} from {observed.current_replicas} to {decision.desired_replicas} replicas ({decision.reason}): {decision.message}",
                now=self.clock.now(),
            )
            scale = await self.kube.scale("apps/v1", "Deployment", tier.namespace, tier.name, decision.desired_replicas)
            # The view shows the new size at once, so a reconcile that runs before the
            # watch delivers it does not put the old size back.
            resized = {**deployment, "spec": {**deployment.get("spec", {}), "replicas": decision.desired_replicas}}
            resized["metadata"] = {**deployment.get("metadata", {}), "resourceVersion": (scale.get("metadata") or {}).get("resourceVersion")}
            self.view.remember(resized)
        patch = autoscaler_status_patch(body.get("status") or {}, decision, tier.generation, now)
        if patch:
            self.view.remember(await self.kube.patch_status("shoal.dev/v1alpha1", "ModelTier", tier.namespace, tier.name, patch))


def autoscaler_status_patch(stored: dict[str, Any], decision: ScaleDecision, generation: int | None, now: float) -> dict[str, Any] | None:
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
        autoscaler["lastScaleTime"] = rfc3339(history.last_scale_time)
    if history.last_request_time is not None:
        autoscaler["lastRequestTime"] = rfc3339(history.last_request_time)
    conditions = update_conditions(
        stored.get("conditions"),
        [Cond(C.SCALING_ACTIVE, "True" if decision.scaling_active else "False", decision.condition_reason, decision.message)],
        generation,
        datetime.fromtimestamp(now, tz=timezone.utc),
    )
    return {"autoscaler": autoscaler, "conditions": conditions}
