"""The reconcile passes, shared by kopf's handlers and the child-event refresher.

Each pass reads like a sentence: validate, observe, plan (pure), execute, write the
status only if it changed. A per-object lock keeps a spec reconcile and an event-driven
refresh of the same object from interleaving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from pydantic import ValidationError

from shoal.api import conditions as C
from shoal.api.modeltier import ModelTier
from shoal.api.routepolicy import RoutePolicy
from shoal.kube import observe
from shoal.kube.client import Kube
from shoal.kube.diff import needs_apply
from shoal.kube.errors import Invalid, NotFound
from shoal.plan.conditions import Cond, merge_conditions
from shoal.plan.policy import entry_model_tier, policy_status, status_patch
from shoal.plan.tier import TierPlan, plan_tier
from shoal.render.evaljob import EvalJobContext, render_eval_job
from shoal.render.policy import render_entry_service

from .autoscaler import Autoscaler
from .desired import tier_manifests

log = logging.getLogger("shoal.controller")

TIER = ("shoal.dev/v1alpha1", "ModelTier")
POLICY = ("shoal.dev/v1alpha1", "RoutePolicy")
Clock = Callable[[], datetime]
T = TypeVar("T", ModelTier, RoutePolicy)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class InvalidSpec(Exception):
    """The object passed the schema but cannot work; its status says why."""


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts)


class Reconcilers:
    def __init__(
        self,
        kube: Kube,
        autoscaler: Autoscaler | None = None,
        clock: Clock = utcnow,
        on_peer_changed: Callable[[str, str], None] | None = None,
    ) -> None:
        self.kube = kube
        self.autoscaler = autoscaler
        # Called with (namespace, policy) when what other tiers know of this one changed:
        # its serving checkpoint (their caches key its answers by it) or whether it has
        # ready pods (asleep tiers are skipped; the entry Service follows the awake ones).
        self.on_peer_changed = on_peer_changed
        self.clock = clock
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is kept in memory for a deleted tier."""
        self._locks.pop(("ModelTier", namespace, name), None)
        if self.autoscaler is not None:
            self.autoscaler.forget(namespace, name)

    def _lock(self, kind: str, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((kind, namespace, name), asyncio.Lock())

    async def _apply_all(self, manifests: list[dict[str, Any]], observed: dict[tuple[str, str], dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
        """Apply what differs from the cluster; returns the resulting objects by kind."""
        result: dict[str, dict[str, Any]] = {}
        for manifest in manifests:
            key = (manifest["kind"], manifest["metadata"]["name"])
            current = observed.get(key)
            if key not in observed:
                current = await self.kube.get(manifest["apiVersion"], manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
            if needs_apply(current, manifest):
                current = await self.kube.apply(manifest)
            if current is not None:
                result[manifest["kind"]] = current
        return result

    async def _parse(self, kind: tuple[str, str], model: type[T], body: dict[str, Any], what: str) -> T:
        """Validate a stored object; a spec the schema let through but the models refuse
        becomes Ready=False InvalidSpec (and an Event), never a crash loop."""
        try:
            return model.from_body(body)
        except ValidationError as exc:
            message = f"{what}: {validation_message(exc)}."
            await self._invalid(kind, body, message)
            raise InvalidSpec(message) from exc

    async def _invalid(self, kind: tuple[str, str], body: dict[str, Any], message: str) -> None:
        meta = body["metadata"]
        previous = body.get("status") or {}
        conds = merge_conditions(
            previous.get("conditions"),
            [Cond(C.READY, "False", C.REASON_INVALID_SPEC, message)],
            meta.get("generation"),
            self.clock(),
        )
        wanted = {"observedGeneration": meta.get("generation"), "conditions": conds}
        patch = status_patch(wanted, previous)
        if patch:
            await self.kube.patch_status(*kind, meta["namespace"], meta["name"], patch)
            await self.kube.event({**body, "apiVersion": kind[0], "kind": kind[1]}, "Warning", C.REASON_INVALID_SPEC, message)

    # --- ModelTier ---------------------------------------------------------------------

    async def tier(self, namespace: str, name: str) -> None:
        """Bring one ModelTier's children and status in line with its spec and the cluster."""
        async with self._lock("ModelTier", namespace, name):
            body = await self.kube.get(*TIER, namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            tier = await self._parse(TIER, ModelTier, body, "The spec cannot be served")

            observed = await observe.observe_tier(self.kube, tier)
            plan = plan_tier(tier, observed, self.clock(), previous_status=body.get("status"))
            # Applies are diff-gated (nothing is written when the cluster already matches), so
            # every pass, whether a spec change or a child's event started it, also carries
            # out what the plan decided since: a promotion after an evaluation passed, a
            # child deleted by hand.
            manifests = tier_manifests(tier, plan, observed)
            try:
                applied = await self._apply_all(manifests, {("Deployment", tier.name): observed.deployment})
            except Invalid as exc:
                message = f"The API server rejected an object rendered from this spec: {exc}"
                await self._invalid(TIER, body, message)
                raise InvalidSpec(message) from exc
            except NotFound as exc:
                # Applying an object whose kind the cluster does not serve (KEDA's
                # ScaledObject without KEDA installed) cannot succeed by retrying.
                message = f"The cluster does not serve a kind this spec needs (is KEDA installed for autoscaling.engine keda?): {exc}"
                await self._invalid(TIER, body, message)
                raise InvalidSpec(message) from exc
            if "Deployment" in applied:
                observed = dataclasses.replace(observed, deployment=applied["Deployment"])
                plan = plan_tier(tier, observed, self.clock(), previous_status=body.get("status"))

            await self._evaluation_jobs(tier, plan)
            patch = plan.status_patch(body.get("status"))
            if patch:
                await self.kube.patch_status(*TIER, namespace, name, patch)
                before = body.get("status") or {}
                woke_or_slept = "readyReplicas" in patch and (bool(before.get("readyReplicas")) != bool(patch["readyReplicas"]))
                if ("servingCheckpoint" in patch or woke_or_slept) and tier.spec.router.route_policy and self.on_peer_changed:
                    self.on_peer_changed(namespace, tier.spec.router.route_policy)
            for event in plan.events:
                await self.kube.event(body, event.type, event.reason, event.message)

    async def _evaluation_jobs(self, tier: ModelTier, plan: TierPlan) -> None:
        """Delete superseded evaluation Jobs; create the candidate's (by name, so never twice)."""
        for job in plan.delete_jobs:
            await self.kube.delete("batch/v1", "Job", tier.namespace, job)
        if plan.create_job_for is not None:
            job = render_eval_job(tier, EvalJobContext(checkpoint=plan.create_job_for, serving_checkpoint=tier.status.serving_checkpoint))
            existing = await self.kube.get("batch/v1", "Job", tier.namespace, job["metadata"]["name"])
            if existing is None:
                await self.kube.apply(job)

    async def autoscale(self, namespace: str, name: str) -> None:
        """One autoscaling pass for a tier, when its metrics period has come round."""
        if self.autoscaler is None:
            return
        async with self._lock("ModelTier", namespace, name):
            body = await self.kube.get(*TIER, namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                self.autoscaler.forget(namespace, name)
                return
            try:
                tier = ModelTier.from_body(body)
            except ValidationError:
                return  # the spec reconcile reports it
            if self.autoscaler.due(tier):
                await self.autoscaler.run(tier, body)

    # --- RoutePolicy -------------------------------------------------------------------

    async def policy(self, namespace: str, name: str, *, on_tiers: Callable[[str, str], None] | None = None) -> None:
        async with self._lock("RoutePolicy", namespace, name):
            body = await self.kube.get(*POLICY, namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            policy = await self._parse(POLICY, RoutePolicy, body, "The spec cannot be routed")

            observed = await observe.observe_policy(self.kube, policy)
            await self._apply_all([render_entry_service(policy, entry_model_tier(policy, observed))], {})
            wanted = policy_status(policy, observed, self.clock(), body.get("status"))
            patch = status_patch(wanted, body.get("status"))
            if patch:
                await self.kube.patch_status(*POLICY, namespace, name, patch)
                before = {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}
                ready = next(c for c in wanted["conditions"] if c["type"] == C.READY)
                old = before.get(C.READY)
                if old is None or old.get("status") != ready["status"] or old.get("reason") != ready["reason"]:
                    await self.kube.event(body, "Normal" if ready["status"] == "True" else "Warning", ready["reason"], ready["message"])
        # The sidecars of the tiers serving this policy get the new ladder (outside the
        # policy's lock: each tier takes its own).
        if on_tiers is not None:
            for tier in await observe.tiers_using_policy(self.kube, namespace, name):
                on_tiers(namespace, tier["metadata"]["name"])
