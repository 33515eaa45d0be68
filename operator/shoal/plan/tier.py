"""Pure decisions for one ModelTier: (spec, observations, now) -> what to apply and report.

The controller gathers observations (`TierObservation`), calls `plan_tier`, applies the
manifests, and writes the status only when it differs from the stored one. Nothing here
talks to the API server or reads the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from shoal.api import conditions as C
from shoal.api.modeltier import ModelTier
from shoal.api.routepolicy import RoutePolicy
from shoal.api.naming import CHECKPOINT_ANNOTATION, selector_string, tier_endpoint, tier_selector

from .conditions import Cond, EventSpec, find, flips, status_merge_patch, update_conditions
from .adapters import AdaptersPlan, plan_adapters, plan_base_change
from .learning import Learner, held_for_learning
from .rollout import RolloutObservation, RolloutPlan, eval_job_observation, plan_rollout

__all__ = ["EventSpec", "MissingRef", "TierObservation", "TierPlan", "plan_tier"]


@dataclass(frozen=True)
class MissingRef:
    kind: str  # Secret, ConfigMap, RoutePolicy, ModelTier
    name: str
    key: str | None
    field: str  # the spec field that refers to it

    @property
    def reason(self) -> str:
        return {
            "Secret": C.REASON_SECRET_NOT_FOUND,
            "ConfigMap": C.REASON_CONFIGMAP_NOT_FOUND,
            "RoutePolicy": C.REASON_ROUTE_POLICY_NOT_FOUND,
            "ModelTier": C.REASON_MODEL_TIER_NOT_FOUND,
        }[self.kind]

    def sentence(self, namespace: str) -> str:
        what = f"{self.kind} {self.name!r}"
        if self.key:
            return f"{self.field} refers to key {self.key!r} of {what}, which does not exist in namespace {namespace!r}"
        return f"{self.field} refers to {what}, which does not exist in namespace {namespace!r}"


@dataclass(frozen=True)
class TierObservation:
    """What the controller saw of a tier's world in one pass."""

    deployment: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    route_policy: RoutePolicy | None = None
    # ModelTiers of the route policy, by name (absent names are missing).
    peers: dict[str, ModelTier] = field(default_factory=dict)
    # Keys of each referenced Secret / ConfigMap that exists; a missing object is absent.
    secrets: dict[str, frozenset[str]] = field(default_factory=dict)
    config_maps: dict[str, frozenset[str]] = field(default_factory=dict)
    # The tier's evaluation Jobs, each with the pods it ran.
    eval_jobs: list[tuple[dict[str, Any], list[dict[str, Any]]]] = field(default_factory=list)
    # The tier's Service has been observed. Ready waits for it: a tier is reachable at its
    # endpoint only once the Service (and its cluster IP) exists, which the API server can
    # take tens of seconds to allocate when hundreds of tiers are created at once.
    service_exists: bool = True
    # The RoutePolicies that learn from this tier's evaluations, and which Jobs' outcomes
    # each has kept: a promoted Job stays until they have (plan/learning.py).
    learners: tuple[Learner, ...] = ()


@dataclass
class TierPlan:
    replicas: int  # replica count the Deployment is applied with
    checkpoint: str  # checkpoint URI the pods are rendered to serve
    status: dict[str, Any]
    events: list[EventSpec]
    # The candidate whose evaluation Job must exist, and Jobs that must go.
    create_job_for: str | None = None
    delete_jobs: tuple[str, ...] = ()
    # Each adapter's gate: what serves (the router ConfigMap lists plan.adapters.serving()),
    # the adapter evaluation Jobs to create and to delete.
    adapters: AdaptersPlan = field(default_factory=AdaptersPlan)

    def status_merge_patch(self, stored: dict[str, Any] | None) -> dict[str, Any] | None:
        """The status fields that differ from what is stored, or None when nothing does."""
        return status_merge_patch(self.status, stored, _OBSERVED_FIELDS)


# Status fields rebuilt from observations on every pass. Others (the autoscaler's part)
# are written by their own planners and left alone here.
_OBSERVED_FIELDS = frozenset({"observedGeneration", "conditions", "replicas", "readyReplicas", "updatedReplicas", "selector", "endpoint", "adapters"})


def referenced_objects(tier: ModelTier) -> tuple[set[str], set[str]]:
    """Names of the Secrets and ConfigMaps a tier's spec refers to."""
    secrets: set[str] = set()
    config_maps: set[str] = set()
    spec = tier.spec
    if spec.model.credentials_secret_ref:
        secrets.add(spec.model.credentials_secret_ref.name)
    for env in spec.engine.env:
        if env.value_from and env.value_from.secret_key_ref:
            secrets.add(env.value_from.secret_key_ref.name)
        if env.value_from and env.value_from.config_map_key_ref:
            config_maps.add(env.value_from.config_map_key_ref.name)
    evaluation = spec.rollout.evaluation
    if evaluation and evaluation.dataset.config_map_ref:
        config_maps.add(evaluation.dataset.config_map_ref.name)
    for adapter in spec.adapters:
        own = adapter.rollout.evaluation
        if own and own.dataset.config_map_ref:
            config_maps.add(own.dataset.config_map_ref.name)
    return secrets, config_maps


def missing_refs(tier: ModelTier, observed: TierObservation) -> list[MissingRef]:
    spec = tier.spec
    missing: list[MissingRef] = []

    def secret(name: str, key: str | None, where: str) -> None:
        keys = observed.secrets.get(name)
        if keys is None:
            missing.append(MissingRef("Secret", name, None, where))
        elif key is not None and key not in keys:
            missing.append(MissingRef("Secret", name, key, where))

    def config_map(name: str, key: str | None, where: str) -> None:
        keys = observed.config_maps.get(name)
        if keys is None:
            missing.append(MissingRef("ConfigMap", name, None, where))
        elif key is not None and key not in keys:
            missing.append(MissingRef("ConfigMap", name, key, where))

    if spec.router.route_policy and observed.route_policy is None:
        missing.append(MissingRef("RoutePolicy", spec.router.route_policy, None, "spec.router.routePolicy"))
    if spec.model.credentials_secret_ref:
        secret(spec.model.credentials_secret_ref.name, None, "spec.model.credentialsSecretRef")
    for i, env in enumerate(spec.engine.env):
        source = env.value_from
        if source and source.secret_key_ref:
            secret(source.secret_key_ref.name, source.secret_key_ref.key, f"spec.engine.env[{i}].valueFrom.secretKeyRef")
        if source and source.config_map_key_ref:
            config_map(source.config_map_key_ref.name, source.config_map_key_ref.key, f"spec.engine.env[{i}].valueFrom.configMapKeyRef")
    evaluation = spec.rollout.evaluation
    if evaluation and evaluation.dataset.config_map_ref:
        ref = evaluation.dataset.config_map_ref
        config_map(ref.name, ref.key, "spec.rollout.evaluation.dataset.configMapRef")
    for i, adapter in enumerate(spec.adapters):
        own = adapter.rollout.evaluation
        if own and own.dataset.config_map_ref:
            ref = own.dataset.config_map_ref
            config_map(ref.name, ref.key, f"spec.adapters[{i}].rollout.evaluation.dataset.configMapRef")
    return missing


# --- pods -----------------------------------------------------------------------------------

_IMAGE_PULL = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError"}


def pod_problem(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The most telling reason pods are not serving, as (reason, message), or None."""
    found: list[tuple[int, str, str]] = []
    for pod in pods:
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status", {})
        for cond in status.get("conditions", []) or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
                found.append((0, C.REASON_UNSCHEDULABLE, f"Pod {name} cannot be scheduled: {cond.get('message', '').strip()}"))
        for cs in status.get("containerStatuses", []) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            why = waiting.get("reason")
            detail = (waiting.get("message") or "").strip()
            if why in _IMAGE_PULL:
                found.append((1, C.REASON_IMAGE_PULL_FAILED, f"Container {cs.get('name')} of pod {name} cannot pull its image ({why}): {detail}".rstrip(": ")))
            elif why in _CONFIG_ERRORS:
                found.append((1, C.REASON_INVALID_SPEC, f"Container {cs.get('name')} of pod {name} cannot start ({why}): {detail}".rstrip(": ")))
            elif why == "CrashLoopBackOff":
                last = ((cs.get("lastState") or {}).get("terminated")) or {}
                exit_info = f"last exit code {last.get('exitCode')} ({last.get('reason', 'Error')})" if last else "it keeps exiting"
                found.append((2, C.REASON_CRASH_LOOP, f"Container {cs.get('name')} of pod {name} is crash-looping: {exit_info}; see its logs"))
    if not found:
        return None
    found.sort(key=lambda f: f[0])
    return found[0][1], found[0][2]


def _dep_condition(deployment: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return find(deployment.get("status", {}).get("conditions"), type_)


def _rolling(deployment: dict[str, Any]) -> bool:
    meta = deployment.get("metadata", {})
    status = deployment.get("status", {})
    desired = deployment.get("spec", {}).get("replicas", 1)
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return True
    updated = status.get("updatedReplicas", 0) or 0
    total = status.get("replicas", 0) or 0
    available = status.get("availableReplicas", 0) or 0
    return updated < desired or total > updated or available < min(desired, updated)


# --- the plan -------------------------------------------------------------------------------


def desired_replicas(tier: ModelTier, deployment: dict[str, Any] | None) -> int:
    """The replica count to apply; one owner per mode, so nothing fights over it.

    engine none: replicas.desired (the scale subresource), else min. With an autoscaler (the
    built-in one or KEDA) the autoscaler owns the Deployment's size: the current size is
    kept, only clamped into [floor, max] where the floor is min raised to replicas.desired
    (a `kubectl scale` sets a floor the autoscaler honours, never a size it undoes).
    """
    rep = tier.spec.replicas
    if tier.spec.autoscaling.engine == "none":
        return rep.desired if rep.desired is not None else rep.min
    if deployment is not None:
        current = deployment.get("spec", {}).get("replicas")
        if isinstance(current, int):
            return max(rep.floor, min(rep.max, current))
    # A new tier starts warm with one replica (within bounds); the autoscaler takes over.
    return max(rep.floor, min(rep.max, 1))


def plan_tier(tier: ModelTier, observed: TierObservation, now: datetime, previous_status: dict[str, Any] | None = None) -> TierPlan:
    previous_status = previous_status or {}
    dep = observed.deployment
    template_ckpt = None
    if dep is not None:
        template_ckpt = dep.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {}).get(CHECKPOINT_ANNOTATION)
    jobs = tuple(eval_job_observation(job, pods) for job, pods in observed.eval_jobs)
    adapter_jobs = tuple(j for j in jobs if j.adapter is not None)
    # While spec.model names a new checkpoint, the gated adapters that serve are evaluated
    # on it too, and it rolls out only when they pass (spec.rollout.adapters).
    desired, serving = tier.spec.model.served_uri(), tier.status.serving_checkpoint
    changing = serving is not None and desired != serving and tier.spec.rollout.adapters == "evaluate"
    base_change = plan_base_change(tier, adapter_jobs, desired, now) if changing else None
    rollout = plan_rollout(
        tier,
        RolloutObservation(
            jobs=tuple(j for j in jobs if j.adapter is None),
            deployment_checkpoint=template_ckpt,
            deployment_complete=dep is not None and _complete(dep),
        ),
        now,
        base_change.gate() if base_change is not None else None,
    )
    # Adapters are evaluated on the base checkpoint that serves (or, while nothing serves
    # yet, the one being rolled out); none while no checkpoint may serve. While a new
    # checkpoint replaces a serving one, candidate sources wait for it.
    replacing = rollout.step == "RollingOut" and rollout.serving_checkpoint is not None
    adapters = plan_adapters(
        tier, adapter_jobs, rollout.serving_checkpoint or rollout.deploy_checkpoint, now,
        base_change=base_change, held_by=rollout.candidate_checkpoint if replacing else None,
    )
    status, conds = tier_status(tier, observed, now, previous_status, rollout, adapters)
    events = [
        EventSpec(
            type="Normal" if c["status"] == "True" or c["reason"] in _QUIET_REASONS else "Warning",
            reason=c["reason"],
            message=f"{c['type']}={c['status']}: {c['message']}",
        )
        for c in flips(previous_status.get("conditions"), conds)
        if c["type"] in ("Ready", "Progressing")
    ]
    # A promotion's Job stays until the policies learning from it kept its outcomes.
    held = held_for_learning(_promoted_jobs(rollout, adapters), jobs, observed.learners) if observed.learners else frozenset()
    if held:
        adapters = replace(adapters, delete_jobs=tuple(j for j in adapters.delete_jobs if j not in held))
    # Nothing may serve before the first checkpoint passed (firstCheckpoint: evaluate).
    serving_allowed = rollout.deploy_checkpoint is not None
    return TierPlan(
        replicas=desired_replicas(tier, dep) if serving_allowed else 0,
        checkpoint=rollout.deploy_checkpoint or tier.spec.model.served_uri(),
        status=status,
        events=rollout.events + adapters.events + events,
        create_job_for=rollout.create_job_for,
        delete_jobs=tuple(j for j in rollout.delete_jobs if j not in held),
        adapters=adapters,
    )


def _promoted_jobs(rollout: RolloutPlan, adapters: AdaptersPlan) -> dict[str | None, str]:
    """What serves after this pass (None: the base checkpoint; else an adapter's name) ->
    the Job of the passed evaluation that promoted it."""
    out: dict[str | None, str] = {}
    record = rollout.last_evaluation
    if record is not None and record.verdict == "Passed" and record.job_name and record.checkpoint == rollout.serving_checkpoint:
        out[None] = record.job_name
    for decision in adapters.adapters:
        record = decision.last_evaluation
        if record is not None and record.verdict == "Passed" and record.job_name and record.checkpoint == decision.serving_source:
            out[decision.name] = record.job_name
    return out


def _complete(deployment: dict[str, Any]) -> bool:
    """The Deployment's current template is fully rolled out and serving."""
    ready = deployment.get("status", {}).get("readyReplicas", 0) or 0
    desired = deployment.get("spec", {}).get("replicas", 1)
    return not _rolling(deployment) and (ready >= 1 or desired == 0)


_QUIET_REASONS = {C.REASON_DEPLOYMENT_PENDING, C.REASON_WAITING_FOR_PODS, C.REASON_ROLLOUT_COMPLETE, C.REASON_ROLLING_OUT}


def tier_status(
    tier: ModelTier,
    observed: TierObservation,
    now: datetime,
    previous_status: dict[str, Any],
    rollout: RolloutPlan,
    adapters: AdaptersPlan | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The status rebuilt from observations, and its conditions."""
    missing = missing_refs(tier, observed)
    dep = observed.deployment
    wanted: list[Cond] = []

    if missing:
        message = "; ".join(m.sentence(tier.namespace) for m in missing) + "."
        wanted.append(Cond(C.RESOLVED_REFS, "False", missing[0].reason, message))
    else:
        wanted.append(Cond(C.RESOLVED_REFS, "True", C.REASON_RESOLVED, "Every referenced object exists."))

    problem = pod_problem(observed.pods)
    ready_n = 0
    desired = 0
    status: dict[str, Any] = {
        "observedGeneration": tier.generation,
        "selector": selector_string(tier_selector(tier.name)),
        "endpoint": tier_endpoint(tier.name, tier.namespace),
    }
    if dep is None:
        wanted.append(Cond(C.AVAILABLE, "False", C.REASON_DEPLOYMENT_PENDING, f"Deployment {tier.name} has not been created yet."))
        wanted.append(Cond(C.PROGRESSING, "True", C.REASON_DEPLOYMENT_PENDING, f"Creating Deployment {tier.name}."))
        ready_reason = Cond(C.READY, "False", C.REASON_DEPLOYMENT_PENDING, f"Deployment {tier.name} has not been created yet.")
        status.update({"replicas": 0, "readyReplicas": 0, "updatedReplicas": 0})
    else:
        dstatus = dep.get("status", {})
        desired = dep.get("spec", {}).get("replicas", 1)
        ready_n = dstatus.get("readyReplicas", 0) or 0
        status.update(
            {
                "replicas": dstatus.get("replicas", 0) or 0,
                "readyReplicas": ready_n,
                "updatedReplicas": dstatus.get("updatedReplicas", 0) or 0,
            }
        )
        available = (_dep_condition(dep, "Available") or {}).get("status") == "True" and (ready_n >= 1 or desired == 0)
        counts = f"{ready_n}/{desired} replicas ready"
        if available:
            wanted.append(Cond(C.AVAILABLE, "True", C.REASON_AVAILABLE, f"{counts}."))
        elif problem:
            wanted.append(Cond(C.AVAILABLE, "False", problem[0], problem[1]))
        else:
            wanted.append(Cond(C.AVAILABLE, "False", C.REASON_WAITING_FOR_PODS, f"{counts}; engines are starting and loading weights."))

        stalled = (_dep_condition(dep, "Progressing") or {}).get("reason") == "ProgressDeadlineExceeded"
        if stalled:
            wanted.append(Cond(C.PROGRESSING, "False", C.REASON_ROLLOUT_STALLED, (problem[1] if problem else "The rollout exceeded its progress deadline.")))
        elif _rolling(dep):
            updated = dstatus.get("updatedReplicas", 0) or 0
            msg = f"{updated}/{desired} replicas run the current spec."
            if problem:
                msg += f" {problem[1]}"
            wanted.append(Cond(C.PROGRESSING, "True", problem[0] if problem else C.REASON_ROLLING_OUT, msg))
        else:
            wanted.append(Cond(C.PROGRESSING, "False", C.REASON_ROLLOUT_COMPLETE, f"Every replica runs generation {tier.generation}."))

        if desired == 0:
            ready_reason = Cond(C.READY, "True", C.REASON_SCALED_TO_ZERO, "Scaled to zero; requests go to the next tier until the tier wakes.")
        elif available:
            ready_reason = Cond(C.READY, "True", C.REASON_AVAILABLE, f"{counts}; serving {tier.spec.model.name}.")
        elif problem:
            ready_reason = Cond(C.READY, "False", problem[0], problem[1])
        else:
            ready_reason = Cond(C.READY, "False", C.REASON_WAITING_FOR_PODS, f"{counts}; engines are starting and loading weights.")

    if not observed.service_exists and ready_reason.status == "True":
        ready_reason = Cond(C.READY, "False", C.REASON_SERVICE_PENDING,
                            f"Pods serve, but Service {tier.name} does not exist yet; the tier is not reachable at {status['endpoint']} until it does.")
    if missing and ready_reason.status == "True":
        # Serving, but not as the user asked: say what is missing rather than "ready".
        ready_reason = Cond(C.READY, "False", missing[0].reason, "; ".join(m.sentence(tier.namespace) for m in missing) + ".")
    if rollout.candidate_checkpoint is not None and ready_reason.status == "True":
        # The spec names a checkpoint that does not serve yet (being evaluated, rolling
        # out, or blocked): not Ready, so `kubectl wait --for=condition=Ready` after a
        # promotion waits for the promotion itself.
        serving = rollout.serving_checkpoint
        keeps = f" {serving} keeps serving." if serving else ""
        reason = rollout.evaluated.reason if rollout.step in ("Evaluating", "Blocked") else C.REASON_ROLLING_OUT
        ready_reason = Cond(C.READY, "False", reason, f"{rollout.candidate_checkpoint} does not serve yet: {rollout.evaluated.message}" if rollout.step == "Blocked" else f"{rollout.candidate_checkpoint} does not serve yet ({rollout.step}).{keeps}")
    wanted.insert(0, ready_reason)
    wanted.append(rollout.evaluated)
    if rollout.progressing is not None:
        wanted = [c for c in wanted if c.type != C.PROGRESSING] + [rollout.progressing]
    status.update(rollout.status_fields())
    adapters_ready = adapters.condition() if adapters is not None else None
    if adapters is not None and adapters_ready is not None:
        wanted.append(adapters_ready)
        status["adapters"] = adapters.status_adapters(previous_status.get("adapters"), tier.generation, now)

    conds = update_conditions(previous_status.get("conditions"), wanted, tier.generation, now)
    if adapters_ready is None:
        # The tier lists no adapters (any more): the condition goes with them.
        conds = [c for c in conds if c.get("type") != C.ADAPTERS_READY]
    status["conditions"] = conds
    return status, conds
