"""Gather what the controller needs to plan a ModelTier or RoutePolicy: reads only."""

from __future__ import annotations

from pydantic import ValidationError

from shoal.api.modeltier import ModelTier
from shoal.api.naming import evaluation_selector, selector_string, tier_selector
from shoal.api.routepolicy import RoutePolicy
from shoal.plan.policy import PolicyObservation
from shoal.plan.tier import TierObservation, referenced_objects

from .client import Kube

TIER_API = ("shoal.dev/v1alpha1", "ModelTier")
POLICY_API = ("shoal.dev/v1alpha1", "RoutePolicy")


async def secret_keys(kube: Kube, namespace: str, names: set[str]) -> dict[str, frozenset[str]]:
    """Key names (never values) of the Secrets that exist among `names`."""
    found: dict[str, frozenset[str]] = {}
    for name in sorted(names):
        body = await kube.get("v1", "Secret", namespace, name)
        if body is not None:
            found[name] = frozenset((body.get("data") or {}).keys())
    return found


async def config_map_keys(kube: Kube, namespace: str, names: set[str]) -> dict[str, frozenset[str]]:
    found: dict[str, frozenset[str]] = {}
    for name in sorted(names):
        body = await kube.get("v1", "ConfigMap", namespace, name)
        if body is not None:
            found[name] = frozenset((body.get("data") or {}).keys()) | frozenset((body.get("binaryData") or {}).keys())
    return found


async def route_policy(kube: Kube, namespace: str, name: str) -> RoutePolicy | None:
    body = await kube.get(*POLICY_API, namespace, name)
    if body is None:
        return None
    try:
        return RoutePolicy.from_body(body)
    except ValidationError:
        # The policy's own status says what is wrong with it; for the tier it is unusable.
        return None


async def model_tiers(kube: Kube, namespace: str, names: list[str]) -> dict[str, ModelTier]:
    tiers: dict[str, ModelTier] = {}
    for name in names:
        body = await kube.get(*TIER_API, namespace, name)
        if body is None:
            continue
        try:
            tiers[name] = ModelTier.from_body(body)
        except ValidationError:
            continue
    return tiers


async def observe_tier(kube: Kube, tier: ModelTier) -> TierObservation:
    ns = tier.namespace
    deployment = await kube.get("apps/v1", "Deployment", ns, tier.name)
    pods = await kube.list("v1", "Pod", ns, selector_string(tier_selector(tier.name)))
    policy = None
    peers: dict[str, ModelTier] = {}
    if tier.spec.router.route_policy:
        policy = await route_policy(kube, ns, tier.spec.router.route_policy)
        if policy is not None:
            names = [t.model_tier_ref.name for t in policy.spec.tiers if t.model_tier_ref]
            peers = await model_tiers(kube, ns, names)
    secret_names, config_map_names = referenced_objects(tier)
    eval_jobs = []
    if tier.spec.rollout.evaluation is not None or tier.status.candidate_checkpoint is not None:
        for job in await kube.list("batch/v1", "Job", ns, selector_string(evaluation_selector(tier.name))):
            job_pods = await kube.list("v1", "Pod", ns, f"job-name={job['metadata']['name']}")
            eval_jobs.append((job, job_pods))
    return TierObservation(
        deployment=deployment,
        pods=pods,
        route_policy=policy,
        peers=peers,
        secrets=await secret_keys(kube, ns, secret_names),
        config_maps=await config_map_keys(kube, ns, config_map_names),
        eval_jobs=eval_jobs,
    )


async def observe_policy(kube: Kube, policy: RoutePolicy) -> PolicyObservation:
    ns = policy.namespace
    tiers = await kube.list(*TIER_API, ns)
    secret_names = {ref.name for ref in policy.spec.secret_refs()}
    cm_names = set()
    if policy.spec.classifier.config_map_ref:
        cm_names.add(policy.spec.classifier.config_map_ref.name)
    return PolicyObservation(
        model_tiers=frozenset(t["metadata"]["name"] for t in tiers),
        ready_replicas={t["metadata"]["name"]: int((t.get("status") or {}).get("readyReplicas") or 0) for t in tiers},
        secrets=await secret_keys(kube, ns, secret_names),
        config_maps=await config_map_keys(kube, ns, cm_names),
    )


async def tiers_using_policy(kube: Kube, namespace: str, policy_name: str) -> list[dict]:
    """ModelTiers whose sidecars serve `policy_name` (spec.router.routePolicy)."""
    return [
        t
        for t in await kube.list(*TIER_API, namespace)
        if ((t.get("spec") or {}).get("router") or {}).get("routePolicy") == policy_name
    ]
