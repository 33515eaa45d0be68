"""Which objects a watch event puts back on the work queue.

A pass reads its whole world from the view, so an event only has to name the objects
whose world it is part of:

- a ModelTier: itself, and the RoutePolicies that name it or that it names (their status
  and entry Service follow its existence and readiness). When its spec changed (a new
  generation), also the other tiers of its policy: their sidecar ConfigMaps describe it.
  A change of its status alone (readiness, serving checkpoint) never re-renders another
  tier's ConfigMap: sidecars learn live state from their peers directly.
- a RoutePolicy: itself; when its spec changed (or it was deleted), every tier that serves
  it, and the ModelTiers its ladder names now or named before that have an evaluation Job:
  a promoted evaluation's Job is held while a policy learns from its rung, so a policy that
  stops learning (deleted, learnFromEvaluations disabled, the rung removed) releases it at
  once (plan/learning.py `held_for_learning`).
- a Deployment, Pod, Job, Service, PodDisruptionBudget or ConfigMap of Shoal's: its owner
  (the shoal.dev/tier or shoal.dev/route-policy label). A policy's `<policy>-classifier`
  ConfigMap also queues the ModelTiers of its ladder that have an evaluation Job whose
  outcomes it keeps: a promoted evaluation's Job stays until that ConfigMap keeps them, and
  only those tiers' Jobs can be released by the write (not the whole ladder on every write,
  whose tiers would each re-read the policy and the kept outcomes).
- anyone else's ConfigMap: the tiers and policies of its namespace whose references did
  not resolve (one of them may name it), and the policies whose classifier model it holds
  with the ModelTiers of their ladders that have an evaluation Job (a policy whose model is
  gone learns nothing, which releases the Jobs it held).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.api.naming import POLICY_LABEL, TIER_LABEL, learned_classifier_configmap_name
from shoal.kube.observe import policies_naming_tier, tiers_using_policy
from shoal.plan.learning import LearnedState
from shoal.kube.view import View

ObjectKey = tuple[str, str, str]


def unresolved(body: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "ResolvedRefs" and c.get("status") == "False"
        for c in (body.get("status") or {}).get("conditions", []) or []
    )


def ladder(body: dict[str, Any] | None) -> frozenset[str]:
    """The names of the ModelTiers a RoutePolicy body's ladder refers to."""
    names = (((rung or {}).get("modelTierRef") or {}).get("name") for rung in ((body or {}).get("spec") or {}).get("tiers") or [])
    return frozenset(n for n in names if n)


class Triggers:
    def __init__(self, view: View, add: Callable[[ObjectKey], None], forget: Callable[[str, str], None]) -> None:
        self.view = view
        self.add = add
        self.forget = forget
        # Last generation seen per object, to tell a spec change from a status change.
        self._generations: dict[ObjectKey, Any] = {}
        # Per RoutePolicy, the ModelTiers its ladder named when last seen: a rung removed
        # from it no longer appears in the new body.
        self._ladders: dict[ObjectKey, frozenset[str]] = {}

    def _spec_changed(self, key: ObjectKey, body: dict[str, Any], deleted: bool) -> bool:
        if deleted:
            self._generations.pop(key, None)
            return True
        generation = body.get("metadata", {}).get("generation")
        before = self._generations.get(key)
        self._generations[key] = generation
        return before != generation

    def tier_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        namespace, name = meta.get("namespace") or "", meta["name"]
        key = ("ModelTier", namespace, name)
        deleted = event_type == "DELETED"
        spec_changed = self._spec_changed(key, body, deleted)
        if deleted:
            self.forget(namespace, name)
        else:
            self.add(key)
        policy = ((body.get("spec") or {}).get("router") or {}).get("routePolicy")
        policies = set(policies_naming_tier(self.view, namespace, name))
        if policy:
            policies.add(policy)
        for policy_name in sorted(policies):
            self.add(("RoutePolicy", namespace, policy_name))
        if spec_changed and policy:
            for peer in tiers_using_policy(self.view, namespace, policy):
                if peer != name:
                    self.add(("ModelTier", namespace, peer))

    def policy_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        namespace, name = meta.get("namespace") or "", meta["name"]
        key = ("RoutePolicy", namespace, name)
        deleted = event_type == "DELETED"
        spec_changed = self._spec_changed(key, body, deleted)
        if not deleted:
            self.add(key)
        named = ladder(body)
        before = self._ladders.pop(key, frozenset())
        if not deleted:
            self._ladders[key] = named
        if spec_changed:
            serving = tiers_using_policy(self.view, namespace, name)
            for tier in serving:
                self.add(("ModelTier", namespace, tier))
            # A deleted policy is gone from the view: its ladder comes from the event's body.
            self.with_evaluation_jobs(namespace, (before | named) - set(serving))

    def child_event(self, body: dict[str, Any]) -> None:
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace") or ""
        labels = meta.get("labels") or {}
        if labels.get(TIER_LABEL):
            self.add(("ModelTier", namespace, labels[TIER_LABEL]))
        elif labels.get(POLICY_LABEL):
            self.add(("RoutePolicy", namespace, labels[POLICY_LABEL]))

    def config_map_event(self, body: dict[str, Any]) -> None:
        labels = (body.get("metadata") or {}).get("labels") or {}
        if labels.get(TIER_LABEL) or labels.get(POLICY_LABEL):
            self.child_event(body)
            policy = labels.get(POLICY_LABEL)
            meta = body.get("metadata") or {}
            if policy and meta.get("name") == learned_classifier_configmap_name(policy):
                names = ladder(self.view.policy(meta.get("namespace") or "", policy))
                self.with_evaluation_jobs(meta.get("namespace") or "", names, LearnedState.from_config_map(body).kept_jobs)
            return
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace") or ""
        self.unresolved_in(namespace)
        # A policy's classifier model changed: its learned model (built on the old one) is
        # dropped and its status names the new version (controller/learning.py).
        for policy in self.view.policies_in(namespace):
            ref = (((policy.get("spec") or {}).get("classifier") or {}).get("configMapRef") or {})
            if ref.get("name") == meta.get("name"):
                self.add(("RoutePolicy", namespace, policy["metadata"]["name"]))
                self.with_evaluation_jobs(namespace, ladder(policy))

    def with_evaluation_jobs(self, namespace: str, names: frozenset[str] | set[str], jobs: frozenset[str] | None = None) -> None:
        """Queue the ModelTiers among `names` that have an evaluation Job in the view (one
        named in `jobs`, when given): only their passes can hold or release a Job."""
        for name in sorted(names):
            found = self.view.evaluation_job_names(namespace, name)
            if found and (jobs is None or not jobs.isdisjoint(found)):
                self.add(("ModelTier", namespace, name))

    def unresolved_in(self, namespace: str) -> None:
        """Queue the tiers and policies of `namespace` whose references did not resolve."""
        for tier in self.view.tiers_in(namespace):
            if unresolved(tier):
                self.add(("ModelTier", namespace, tier["metadata"]["name"]))
        for policy in self.view.policies_in(namespace):
            if unresolved(policy):
                self.add(("RoutePolicy", namespace, policy["metadata"]["name"]))
