"""The drift watch: each shadowed tier's agreement counters in, its Drifting condition out.

Every DRIFT_PERIOD_SECONDS, inside the operator-wide loop and under the tier's lock (after
its autoscaling pass), for each ModelTier whose RoutePolicy shadows one of its rungs
(`spec.shadow.tiers`):

1. read `shoal_shadow_samples_total` for the tier's rungs from the router sidecars of
   EVERY tier of the policy (the sidecar that routed a request counts its sample, in
   whichever tier's pod it runs), from the view's ready pods, no API request;
2. `plan.drift.step`: the samples graded since the last check go to the sequential test
   (a new serving checkpoint starts a new one);
3. set the `shoal_modeltier_drifting` gauge (1 while True), and when the condition's
   status or reason changes: record an Event (Warning when drift starts), then write the
   condition. The message names the agreement, the baseline and the sample count at that
   transition; between transitions nothing is written (the sidecars' and the operator's
   metrics show the live values), so a steady tier costs no write.

The test's state lives in this process: a restarted operator starts a new test on the
counters it finds (the samples already graded by the running pods count as its first
batch), which can delay a detection, never invent one.

A tier that is no longer shadowed loses its Drifting condition and its gauge.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Gauge

from shoal.api import conditions as C
from shoal.api.modeltier import ModelTier
from shoal.api.routepolicy import RoutePolicy
from shoal.kube.client import Kube
from shoal.kube.observe import route_policy
from shoal.kube.view import View
from shoal.plan import drift as plan
from shoal.plan.conditions import Cond, find, update_conditions

from .clock import Clock, seconds
from .metrics_source import PodTarget, scrape_shadow_counts

log = logging.getLogger("shoal.drift")

# As in the drift benchmark (benchmarks/drift), whose error rates assume checks this often.
DRIFT_PERIOD_SECONDS = 30.0
DEFAULT_ROUTER_PORT = 8080


def _ready_ip(pod: dict[str, Any]) -> str | None:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return None
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions", []) or [])
    return pod.get("status", {}).get("podIP") if ready else None


def policy_targets(view: View, policy: RoutePolicy, namespace: str) -> tuple[list[PodTarget], frozenset[str]]:
    """Ready pods of every ModelTier of the policy, and the names of those not ready."""
    targets: list[PodTarget] = []
    absent: set[str] = set()
    for name in sorted({t.model_tier_ref.name for t in policy.spec.tiers if t.model_tier_ref}):
        body = view.tier(namespace, name)
        port = ((body or {}).get("spec", {}).get("router") or {}).get("port") or DEFAULT_ROUTER_PORT
        for pod in view.pods(namespace, name):
            ip = _ready_ip(pod)
            if ip is None:
                absent.add(pod["metadata"]["name"])
            else:
                targets.append(PodTarget(pod["metadata"]["name"], ip, int(port)))
    return targets, frozenset(absent)


class DriftWatch:
    def __init__(self, kube: Kube, view: View, http: httpx.AsyncClient, clock: Clock, registry: CollectorRegistry | None = None) -> None:
        self.kube = kube
        self.view = view
        self.http = http
        self.clock = clock
        self._memory: dict[tuple[str, str], plan.DriftMemory] = {}
        self._last_run: dict[tuple[str, str], float] = {}
        self.drifting = Gauge(
            "shoal_modeltier_drifting", "1 while a ModelTier's Drifting condition is True (shadow evaluation), else 0.",
            ["namespace", "modeltier"], registry=registry if registry is not None else CollectorRegistry(),
        )

    def forget(self, namespace: str, name: str) -> None:
        self._memory.pop((namespace, name), None)
        self._last_run.pop((namespace, name), None)
        try:
            self.drifting.remove(namespace, name)
        except KeyError:
            pass

    def state(self, namespace: str, name: str) -> plan.DriftState | None:
        """The test's current state for a tier (None before its first check)."""
        memory = self._memory.get((namespace, name))
        return memory.state if memory is not None else None

    def due(self, namespace: str, name: str) -> bool:
        last = self._last_run.get((namespace, name))
        return last is None or seconds(self.clock) - last >= DRIFT_PERIOD_SECONDS

    def _targets(self, policy: RoutePolicy, namespace: str) -> tuple[list[PodTarget], frozenset[str]]:
        return policy_targets(self.view, policy, namespace)

    async def run(self, tier: ModelTier, body: dict[str, Any]) -> None:
        """One check of `tier` (the caller holds its lock and passes its newest body)."""
        key = (tier.namespace, tier.name)
        self._last_run[key] = seconds(self.clock)
        policy = route_policy(self.view, tier.namespace, tier.spec.router.route_policy) if tier.spec.router.route_policy else None
        shadow = policy.spec.shadow if policy is not None else None
        rungs = [t.name for t in policy.spec.tiers
                 if t.model_tier_ref and t.model_tier_ref.name == tier.name and shadow is not None and shadow.for_tier(t.name)] if policy else []
        stored = body.get("status") or {}
        if policy is None or shadow is None or not rungs:
            self._memory.pop(key, None)
            try:
                self.drifting.remove(*key)
            except KeyError:
                pass
            if find(stored.get("conditions"), C.DRIFTING) is not None:
                kept = [c for c in stored.get("conditions") or [] if c.get("type") != C.DRIFTING]
                self.view.remember(await self.kube.patch_status("shoal.dev/v1alpha1", "ModelTier", tier.namespace, tier.name, {"conditions": kept}))
            return
        settings = plan.settings_for(shadow, rungs[0])
        pair = shadow.for_tier(rungs[0])
        targets, not_ready = self._targets(policy, tier.namespace)
        scraped = await scrape_shadow_counts(self.http, targets, frozenset(rungs))
        unreadable = frozenset(t.name for t in targets if t.name not in scraped) | not_ready
        # From the body, not the parsed tier: the parse is cached per generation, and a
        # promotion changes only the status.
        checkpoint = stored.get("servingCheckpoint") or tier.spec.model.served_uri()
        memory = self._memory[key] = plan.step(self._memory.get(key), settings, checkpoint, scraped, unreadable)
        verdict = plan.verdict(memory.state, settings, sampling_rate=pair.sample_percent / 100.0 if pair else None)
        self.drifting.labels(*key).set(1 if verdict.status == "True" else 0)
        previous = find(stored.get("conditions"), C.DRIFTING)
        if previous is not None and previous.get("status") == verdict.status and previous.get("reason") == verdict.reason:
            return
        if previous is not None or verdict.status != "Unknown":
            # Every transition is an Event, drift starting as a Warning; a first
            # "calibrating" is not news.
            await self.kube.event(body, "Warning" if verdict.status == "True" else "Normal", verdict.reason, verdict.message,
                                  now=self.clock.now())
        conditions = update_conditions(
            stored.get("conditions"), [Cond(C.DRIFTING, verdict.status, verdict.reason, verdict.message)],
            tier.generation, self.clock.now(),
        )
        self.view.remember(await self.kube.patch_status("shoal.dev/v1alpha1", "ModelTier", tier.namespace, tier.name, {"conditions": conditions}))
