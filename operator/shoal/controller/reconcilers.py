"""The reconcile passes of a ModelTier and a RoutePolicy, over the in-memory view.

A pass reads like a sentence: take the object from the view, validate it, observe its
world from the view, plan once (pure), apply what differs, record the plan's Events, then
write the status if it changed. No request reads what the view holds; the writes'
answers go back into the view, so the next pass sees them even before the watch does.

Two choices that keep passes simple and cheap:

- A pass that changed the Deployment writes no status and no Events: it reported on the
  Deployment as it was before the change. It queues the tier again, and that pass reports
  on the Deployment as it now is (and the Deployment's watch events bring more as the
  rollout proceeds). Each pass plans exactly once.
- Events are recorded before the status that makes them due. If the operator is killed in
  between, the next pass still sees the old status, plans the same transition, and records
  the same Event again; its name is derived from the object's version and the Event, so
  the API server keeps one (see Kube.event). Nothing is lost, nothing doubled.

A per-object lock keeps a reconcile and an autoscaling pass of the same tier from
interleaving; the work queue already runs each key once at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from shoal.api import conditions as C
from shoal.api.modeltier import ModelTier
from shoal.api.routepolicy import RoutePolicy
from shoal.api.times import rfc3339
from shoal.kube.client import Kube
from shoal.kube.diff import needs_apply
from shoal.kube.errors import Conflict, Forbidden, Invalid, KubeError, NamespaceTerminating, NotFound
from shoal.kube.observe import SecretKeys, observe_policy, observe_tier, secret_names_of_policy, secret_names_of_tier
from shoal.kube.view import View
from shoal.plan.conditions import Cond, EventSpec, merge_conditions, status_merge_patch
from shoal.plan.learning import status_patch_field
from shoal.plan.policy import entry_model_tier, policy_status
from shoal.plan.tier import TierObservation, TierPlan, plan_tier
from shoal.render.evaljob import AdapterEvalJobContext, EvalJobContext, render_adapter_eval_job, render_eval_job
from shoal.render.policy import render_entry_service

from .autoscaler import Autoscaler
from .learning import ClassifierLearning
from .shares import ShareWatch
from .drift import DriftWatch
from .clock import Clock
from .desired import tier_manifests
from .queue import GiveUp, RetryAfter

log = logging.getLogger("shoal.controller")

TIER = ("shoal.dev/v1alpha1", "ModelTier")
POLICY = ("shoal.dev/v1alpha1", "RoutePolicy")
T = TypeVar("T", ModelTier, RoutePolicy)
ObjectKey = tuple[str, str, str]  # (kind, namespace, name)


class InvalidSpec(Exception):
    """The object passed the schema but cannot work; its status says why."""


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts)


def retry_rule(exc: Exception) -> Exception:
    """What the work queue does after a failed pass, decided once for every error."""
    if isinstance(exc, (InvalidSpec, Invalid)):
        return GiveUp(f"not retried until the object changes: {exc}")
    if isinstance(exc, NamespaceTerminating):
        return GiveUp(f"the namespace is being deleted: {exc}")
    if isinstance(exc, Conflict):
        return RetryAfter(f"conflict, re-reading: {exc}", delay=1)
    if isinstance(exc, Forbidden):
        return RetryAfter(f"forbidden (check the chart's RBAC): {exc}", delay=60)
    return RetryAfter(f"API server error: {exc}")


class Reconcilers:
    def __init__(
        self,
        kube: Kube,
        view: View,
        clock: Clock,
        *,
        requeue: Callable[[ObjectKey], None],
        autoscaler: Autoscaler | None = None,
        drift: DriftWatch | None = None,
        learning: ClassifierLearning | None = None,
        shares: ShareWatch | None = None,
    ) -> None:
        self.kube = kube
        self.view = view
        self.clock = clock
        # Queues an object for another pass (after a pass that changed its Deployment).
        self.requeue = requeue
        self.autoscaler = autoscaler
        self.drift = drift
        # A RoutePolicy's classifier learned from evaluations (controller/learning.py).
        self.learning = learning if learning is not None else ClassifierLearning(kube, view, clock)
        # status.targetShares of the policies whose entry tier this is (controller/shares.py).
        self.shares = shares
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        # A tier's Service apply in flight (see _apply_service_unblocked).
        self._service_applies: dict[tuple[str, str], asyncio.Task[bool]] = {}
        # Namespaces the API server said are being deleted, with when it said so: objects
        # created before that go with the namespace and are not reconciled again (each
        # pod's deletion would otherwise bring another doomed attempt to re-create them).
        self._terminating: dict[str, str] = {}

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is kept in memory for a deleted tier."""
        self._locks.pop((namespace, name), None)
        self._service_applies.pop((namespace, name), None)
        if self.autoscaler is not None:
            self.autoscaler.forget(namespace, name)
        if self.drift is not None:
            self.drift.forget(namespace, name)
        if self.shares is not None:
            self.shares.forget(namespace, name)

    async def reconcile(self, key: ObjectKey) -> None:
        """The work queue's entry point: one pass, errors mapped to the queue's retry rule."""
        kind, namespace, name = key
        body = self.view.get(kind, namespace, name)
        if body is not None and self._doomed(body):
            return
        try:
            if kind == "ModelTier":
                await self.tier(namespace, name)
            else:
                await self.policy(namespace, name)
        except NamespaceTerminating as exc:
            self._terminating[namespace] = rfc3339(self.clock.now())
            raise retry_rule(exc) from exc
        except (InvalidSpec, KubeError) as exc:
            raise retry_rule(exc) from exc

    def _doomed(self, body: dict[str, Any]) -> bool:
        """The object lives in a namespace being deleted and was created before that."""
        meta = body["metadata"]
        since = self._terminating.get(meta.get("namespace") or "")
        return since is not None and (meta.get("creationTimestamp") or "") <= since

    # --- shared ------------------------------------------------------------------------

    async def _secret_keys(self, namespace: str, names: set[str]) -> SecretKeys:
        """Key names (never values) of the named Secrets that exist: the one read a pass
        makes, because the view does not watch Secrets (see kube/view.py)."""
        found: SecretKeys = {}
        for name in sorted(names):
            body = await self.kube.get("v1", "Secret", namespace, name)
            if body is not None:
                found[name] = frozenset((body.get("data") or {}).keys())
        return found

    async def _apply(self, manifest: dict[str, Any]) -> bool:
        """Apply `manifest` if it differs from the view; True when it was written."""
        meta = manifest["metadata"]
        kind = manifest["kind"]
        if kind in ("ConfigMap", "Deployment", "Service", "PodDisruptionBudget"):
            current = self.view.get(kind, meta["namespace"], meta["name"])
        else:
            # Kinds the view does not watch (KEDA's ScaledObject: it may not be installed).
            current = await self.kube.get(manifest["apiVersion"], kind, meta["namespace"], meta["name"])
        if not needs_apply(current, manifest):
            return False
        self.view.remember(await self.kube.apply(manifest))
        return True

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
            self.clock.now(),
        )
        wanted = {"observedGeneration": meta.get("generation"), "conditions": conds}
        patch = status_merge_patch(wanted, previous)
        if patch:
            await self._record(body, kind, [EventSpec("Warning", C.REASON_INVALID_SPEC, message)])
            self.view.remember(await self.kube.patch_status(*kind, meta["namespace"], meta["name"], patch))

    async def _record(self, body: dict[str, Any], kind: tuple[str, str], events: list[EventSpec]) -> None:
        involved = {**body, "apiVersion": kind[0], "kind": kind[1]}
        for event in events:
            await self.kube.event(involved, event.type, event.reason, event.message, now=self.clock.now())

    # --- ModelTier ---------------------------------------------------------------------

    async def tier(self, namespace: str, name: str) -> None:
        """Bring one ModelTier's children and status in line with its spec and the cluster."""
        async with self._lock(namespace, name):
            body = self.view.tier(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            tier = await self._parse(TIER, ModelTier, body, "The spec cannot be served")
            observed = observe_tier(self.view, tier, await self._secret_keys(namespace, secret_names_of_tier(tier)))
            plan = plan_tier(tier, observed, self.clock.now(), previous_status=body.get("status"))
            # Applies are diff-gated (nothing is written when the cluster already matches),
            # so every pass also carries out what the plan decided since: a promotion after
            # an evaluation passed, a child deleted by hand.
            deployment_changed = await self._apply_tier(tier, body, plan, observed)
            await self._evaluation_jobs(tier, plan, observed)
            if deployment_changed:
                self.requeue(("ModelTier", namespace, name))
                return
            patch = plan.status_merge_patch(body.get("status"))
            if patch:
                await self._record(body, TIER, plan.events)
                self.view.remember(await self.kube.patch_status(*TIER, namespace, name, patch))

    async def _apply_tier(self, tier: ModelTier, body: dict[str, Any], plan: TierPlan, observed: TierObservation) -> bool:
        """Apply the tier's children; True when the Deployment was written."""
        manifests = tier_manifests(tier, plan, observed)
        # The ConfigMap before the Deployment (pods never start without their router
        # configuration); everything else at the same time, since each apply waits a round
        # trip to the API server (a Service's seconds, on a busy one, for its cluster IP).
        config = [m for m in manifests if m["kind"] == "ConfigMap"]
        deployment = [m for m in manifests if m["kind"] == "Deployment"]
        others = [m for m in manifests if m["kind"] not in ("ConfigMap", "Deployment")]

        async def config_then_deployment() -> bool:
            for manifest in config:
                await self._apply(manifest)
            changed = False
            for manifest in deployment:
                changed = await self._apply(manifest) or changed
            return changed

        try:
            inline = []
            for manifest in others:
                if manifest["kind"] == "Service":
                    await self._apply_service_unblocked(tier, manifest)
                else:
                    inline.append(manifest)
            results = await asyncio.gather(config_then_deployment(), *(self._apply(m) for m in inline))
            deployment_changed = bool(results[0])
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
        return deployment_changed

    async def _apply_service_unblocked(self, tier: ModelTier, manifest: dict[str, Any]) -> None:
        """Apply a tier's Service without holding up the pass.

        Creating a Service allocates its cluster IP, which the API server does one at a
        time: with hundreds of tiers created at once each took tens of seconds, and every
        pass waiting for its Service held the Deployments and statuses of all the others.
        Nothing else of the tier needs the Service to exist, so the first apply runs on its
        own (in the API client's lane for Services, kube/client.py) and queues the tier
        again when it ends. If it failed, the next pass applies the
        Service itself, so the failure meets the work queue's retry rule like any other.
        """
        key = (tier.namespace, tier.name)
        running = self._service_applies.get(key)
        if running is not None and not running.done():
            return
        if running is not None:
            del self._service_applies[key]
            if running.cancelled() or running.exception() is not None:
                await self._apply(manifest)
                return
        meta = manifest["metadata"]
        if not needs_apply(self.view.get("Service", meta["namespace"], meta["name"]), manifest):
            return
        task = asyncio.create_task(self._apply(manifest), name=f"apply Service {meta['namespace']}/{meta['name']}")

        def ended(task: asyncio.Task[bool]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.warning("apply Service %s/%s: %s; the tier's next pass applies it again", meta["namespace"], meta["name"], task.exception())
            self.requeue(("ModelTier", tier.namespace, tier.name))

        task.add_done_callback(ended)
        self._service_applies[key] = task

    async def _evaluation_jobs(self, tier: ModelTier, plan: TierPlan, observed: TierObservation) -> None:
        """Delete superseded evaluation Jobs; create the candidates' (by name, so never twice):
        the checkpoint's and each adapter's."""
        existing = {job["metadata"]["name"] for job, _ in observed.eval_jobs}
        for job in (*plan.delete_jobs, *plan.adapters.delete_jobs):
            await self.kube.delete("batch/v1", "Job", tier.namespace, job)
        wanted = []
        if plan.create_job_for is not None:
            wanted.append(render_eval_job(tier, EvalJobContext(checkpoint=plan.create_job_for, serving_checkpoint=tier.status.serving_checkpoint)))
        for request in plan.adapters.create_jobs:
            wanted.append(render_adapter_eval_job(tier, AdapterEvalJobContext(
                adapter=request.adapter, source=request.source, base_checkpoint=request.base_checkpoint,
                serving_source=request.serving_source, base_change=request.base_change,
            )))
        for job in wanted:
            name = job["metadata"]["name"]
            if name not in existing and not self.view.recently_written("Job", tier.namespace, name):
                self.view.remember(await self.kube.apply(job))

    async def autoscale(self, namespace: str, name: str) -> None:
        """One autoscaling pass for a tier whose metrics period has come round."""
        if self.autoscaler is None:
            return
        async with self._lock(namespace, name):
            body = self.view.tier(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                self.forget(namespace, name)
                return
            await self.autoscaler.run(body)
            if self.drift is not None and self.drift.due(namespace, name):
                # After the autoscaler's pass: the view has its status write, so the
                # conditions written here are built on it.
                body = self.view.tier(namespace, name)
                tier = self.autoscaler.parsed(body) if body is not None else None
                if body is not None and tier is not None:
                    await self.drift.run(tier, body)
            if self.shares is not None and self.shares.due(namespace, name):
                body = self.view.tier(namespace, name)
                tier = self.autoscaler.parsed(body) if body is not None else None
                if body is not None and tier is not None:
                    await self.shares.run(tier, body)

    # --- RoutePolicy -------------------------------------------------------------------

    async def policy(self, namespace: str, name: str) -> None:
        """The entry Service and the status of one RoutePolicy.

        The tiers' sidecar ConfigMaps are the tiers' own passes (queued by the controller
        when the policy's spec changes), not this one's.
        """
        body = self.view.policy(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        policy = await self._parse(POLICY, RoutePolicy, body, "The spec cannot be routed")
        observed = observe_policy(self.view, policy, await self._secret_keys(namespace, secret_names_of_policy(policy)))
        await self._apply(render_entry_service(policy, entry_model_tier(policy, observed)))
        wanted = policy_status(policy, observed, self.clock.now(), body.get("status"))
        classifier = await self.learning.run(policy)
        if classifier is not None:
            wanted["classifier"] = classifier
        patch = status_merge_patch(wanted, body.get("status"), rebuilt=frozenset({"classifier"}))
        if patch and patch.get("classifier") is not None:
            patch["classifier"] = status_patch_field(classifier, (body.get("status") or {}).get("classifier"))
        if patch:
            before = {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}
            ready = next(c for c in wanted["conditions"] if c["type"] == C.READY)
            old = before.get(C.READY)
            if old is None or old.get("status") != ready["status"] or old.get("reason") != ready["reason"]:
                await self._record(body, POLICY, [EventSpec("Normal" if ready["status"] == "True" else "Warning", ready["reason"], ready["message"])])
            self.view.remember(await self.kube.patch_status(*POLICY, namespace, name, patch))
