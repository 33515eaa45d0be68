"""What a ModelTier or RoutePolicy reconcile sees, read from the in-memory view.

No request leaves this module: the view is kept current by watches. The one exception,
Secrets, which the view does not hold (see kube/view.py), arrive as an argument: the
caller GETs the Secrets `secret_names_*` lists.
"""

from __future__ import annotations

from pydantic import ValidationError

from shoal.api.modeltier import ModelTier
from shoal.api.naming import learned_classifier_configmap_name
from shoal.api.routepolicy import RoutePolicy
from shoal.plan.learning import LearnedState, Learner, learning_rungs
from shoal.plan.policy import PolicyObservation
from shoal.plan.tier import TierObservation, referenced_objects

from .view import View

SecretKeys = dict[str, frozenset[str]]


def route_policy(view: View, namespace: str, name: str) -> RoutePolicy | None:
    body = view.policy(namespace, name)
    if body is None:
        return None
    try:
        return RoutePolicy.from_body(body)
    except ValidationError:
        # The policy's own status says what is wrong with it; for the tier it is unusable.
        return None


def model_tiers(view: View, namespace: str, names: list[str]) -> dict[str, ModelTier]:
    tiers: dict[str, ModelTier] = {}
    for name in names:
        body = view.tier(namespace, name)
        if body is None:
            continue
        try:
            tiers[name] = ModelTier.from_body(body)
        except ValidationError:
            continue
    return tiers


def secret_names_of_tier(tier: ModelTier) -> set[str]:
    return referenced_objects(tier)[0]


def secret_names_of_policy(policy: RoutePolicy) -> set[str]:
    return {ref.name for ref in policy.spec.secret_refs()}


def config_map_keys(view: View, namespace: str, names: set[str]) -> dict[str, frozenset[str]]:
    found: dict[str, frozenset[str]] = {}
    for name in sorted(names):
        keys = view.config_map_keys(namespace, name)
        if keys is not None:
            found[name] = keys
    return found


def observe_tier(view: View, tier: ModelTier, secrets: SecretKeys) -> TierObservation:
    ns = tier.namespace
    policy = None
    peers: dict[str, ModelTier] = {}
    if tier.spec.router.route_policy:
        policy = route_policy(view, ns, tier.spec.router.route_policy)
        if policy is not None:
            peers = model_tiers(view, ns, [t.model_tier_ref.name for t in policy.spec.tiers if t.model_tier_ref])
    _, config_map_names = referenced_objects(tier)
    eval_jobs = (
        view.evaluation_jobs(ns, tier.name)
        if tier.spec.rollout.evaluation is not None
        or tier.status.candidate_checkpoint is not None
        or tier.spec.adapters
        or tier.status.adapters
        else []
    )
    return TierObservation(
        deployment=view.get("Deployment", ns, tier.name),
        pods=view.pods(ns, tier.name),
        service_exists=view.get("Service", ns, tier.name) is not None,
        route_policy=policy,
        peers=peers,
        secrets=secrets,
        config_maps=config_map_keys(view, ns, config_map_names),
        eval_jobs=eval_jobs,
        learners=learners(view, ns, tier.name) if eval_jobs else (),
    )


def learners(view: View, namespace: str, tier_name: str) -> tuple[Learner, ...]:
    """The RoutePolicies that learn from ModelTier `tier_name`'s evaluations, each with the
    Jobs whose outcomes its `<policy>-classifier` ConfigMap keeps. A policy whose user model
    does not exist is left out: its pass keeps nothing until the model appears."""
    found = []
    for name in policies_naming_tier(view, namespace, tier_name):
        policy = route_policy(view, namespace, name)
        if policy is None:
            continue
        rungs = frozenset(ref.model_tier_ref.adapter for ref in learning_rungs(policy) if ref.model_tier_ref and ref.model_tier_ref.name == tier_name)
        ref = policy.spec.classifier.config_map_ref
        if not rungs or ref is None or view.config_map_keys(namespace, ref.name) is None:
            continue
        state = LearnedState.from_config_map(view.get("ConfigMap", namespace, learned_classifier_configmap_name(name)))
        found.append(Learner(policy=name, rungs=rungs, kept_jobs=state.kept_jobs))
    return tuple(found)


def observe_policy(view: View, policy: RoutePolicy, secrets: SecretKeys) -> PolicyObservation:
    ns = policy.namespace
    tiers = view.tiers_in(ns)
    cm_names = set()
    if policy.spec.classifier.config_map_ref:
        cm_names.add(policy.spec.classifier.config_map_ref.name)
    return PolicyObservation(
        model_tiers=frozenset(t["metadata"]["name"] for t in tiers),
        ready_replicas={t["metadata"]["name"]: int((t.get("status") or {}).get("readyReplicas") or 0) for t in tiers},
        adapters={
            t["metadata"]["name"]: frozenset(a.get("name") for a in (t.get("spec") or {}).get("adapters") or [] if isinstance(a, dict))
            for t in tiers
        },
        secrets=secrets,
        config_maps=config_map_keys(view, ns, cm_names),
    )


def tiers_using_policy(view: View, namespace: str, policy_name: str) -> list[str]:
    """Names of the ModelTiers whose sidecars serve `policy_name` (spec.router.routePolicy)."""
    return [
        t["metadata"]["name"]
        for t in view.tiers_in(namespace)
        if ((t.get("spec") or {}).get("router") or {}).get("routePolicy") == policy_name
    ]


def policies_naming_tier(view: View, namespace: str, tier_name: str) -> list[str]:
    """Names of the RoutePolicies whose ladder refers to ModelTier `tier_name`."""
    names = []
    for body in view.policies_in(namespace):
        for rung in (body.get("spec") or {}).get("tiers") or []:
            if ((rung or {}).get("modelTierRef") or {}).get("name") == tier_name:
                names.append(body["metadata"]["name"])
                break
    return names
