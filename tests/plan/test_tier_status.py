"""ModelTier status and conditions computed purely from observations."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from shoal.api.modeltier import ModelTier
from shoal.api.routepolicy import RoutePolicy
from shoal.plan.tier import TierObservation, desired_replicas, plan_tier, pod_problem

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


def deployment(replicas=1, ready=1, updated=1, total=None, generation=5, observed_generation=5, available="True", progressing_reason="NewReplicaSetAvailable", checkpoint="s3://acme-models/support-8b/ckpt-0042"):
    return {
        "metadata": {"name": "small", "generation": generation},
        "spec": {"replicas": replicas, "template": {"metadata": {"annotations": {"shoal.dev/checkpoint": checkpoint}}}},
        "status": {
            "observedGeneration": observed_generation,
            "replicas": replicas if total is None else total,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": updated,
            "conditions": [
                {"type": "Available", "status": available},
                {"type": "Progressing", "status": "True", "reason": progressing_reason},
            ],
        },
    }


def pending_pod(message="0/5 nodes are available: 5 node(s) didn't match Pod's node affinity/selector."):
    return {
        "metadata": {"name": "small-abc"},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]},
    }


def waiting_pod(reason, message="", last_exit=None):
    cs = {"name": "engine", "state": {"waiting": {"reason": reason, "message": message}}}
    if last_exit is not None:
        cs["lastState"] = {"terminated": {"exitCode": last_exit, "reason": "Error"}}
    return {"metadata": {"name": "small-xyz"}, "status": {"phase": "Pending", "containerStatuses": [cs]}}


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_available_deployment_makes_the_tier_ready(small_tier_body, policy_body):
    tier = ModelTier.from_body(small_tier_body)
    observed = TierObservation(deployment=deployment(replicas=2, ready=2, updated=2), route_policy=RoutePolicy.from_body(policy_body))
    plan = plan_tier(tier, observed, NOW)
    status = plan.status
    assert cond(status, "Ready") == {
        "type": "Ready",
        "status": "True",
        "reason": "Available",
        "message": "2/2 replicas ready; serving support-8b.",
        "lastTransitionTime": "2026-11-22T12:00:00Z",
        "observedGeneration": 3,
    }
    assert cond(status, "Progressing")["status"] == "False"
    assert cond(status, "Progressing")["reason"] == "RolloutComplete"
    assert status["replicas"] == 2
    assert status["readyReplicas"] == 2
    assert status["observedGeneration"] == 3
    assert status["endpoint"] == "http://small.llm.svc/v1"
    assert status["selector"] == "app.kubernetes.io/component=inference,app.kubernetes.io/name=modeltier,shoal.dev/tier=small"
    assert status["servingCheckpoint"] == "s3://acme-models/support-8b/ckpt-0042"


def test_serving_pods_without_the_tiers_service_are_not_ready_until_it_exists(small_tier_body, policy_body):
    tier = ModelTier.from_body(small_tier_body)
    policy = RoutePolicy.from_body(policy_body)
    observed = TierObservation(deployment=deployment(replicas=2, ready=2, updated=2), route_policy=policy, service_exists=False)
    status = plan_tier(tier, observed, NOW).status
    assert cond(status, "Ready")["status"] == "False"
    assert cond(status, "Ready")["reason"] == "ServicePending"
    assert cond(status, "Ready")["message"] == (
        "Pods serve, but Service small does not exist yet; the tier is not reachable at http://small.llm.svc/v1 until it does."
    )
    # The Deployment itself is fine: only Ready waits.
    assert cond(status, "Available")["status"] == "True"
    observed = TierObservation(deployment=deployment(replicas=2, ready=2, updated=2), route_policy=policy, service_exists=True)
    assert cond(plan_tier(tier, observed, NOW).status, "Ready")["reason"] == "Available"


def test_unschedulable_pods_report_the_schedulers_message(small_tier_body):
    tier = ModelTier.from_body(small_tier_body)
    msg = "0/5 nodes are available: 3 Insufficient nvidia.com/gpu, 2 node(s) didn't match Pod's node affinity/selector."
    observed = TierObservation(deployment=deployment(ready=0, available="False"), pods=[pending_pod(msg)])
    ready = cond(plan_tier(tier, observed, NOW).status, "Ready")
    assert ready["status"] == "False"
    assert ready["reason"] == "Unschedulable"
    assert ready["message"] == f"Pod small-abc cannot be scheduled: {msg}"


@pytest.mark.parametrize(
    ("pod", "reason", "fragment"),
    [
        (waiting_pod("ImagePullBackOff", "Back-off pulling image \"vllm/vllm-openai:v9\""), "ImagePullFailed", "cannot pull its image (ImagePullBackOff)"),
        (waiting_pod("CrashLoopBackOff", last_exit=137), "CrashLoop", "last exit code 137 (Error)"),
        (waiting_pod("CreateContainerConfigError", 'secret "hf-token" not found'), "InvalidSpec", 'secret "hf-token" not found'),
    ],
)
def test_pod_failures_become_reasons(small_tier_body, pod, reason, fragment):
    tier = ModelTier.from_body(small_tier_body)
    observed = TierObservation(deployment=deployment(ready=0, available="False"), pods=[pod])
    ready = cond(plan_tier(tier, observed, NOW).status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert fragment in ready["message"]


def test_pods_still_loading_are_waiting_not_failing(small_tier_body):
    tier = ModelTier.from_body(small_tier_body)
    ready = cond(plan_tier(tier, TierObservation(deployment=deployment(ready=0, available="False")), NOW).status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "WaitingForPods")
    assert ready["message"].startswith("0/1 replicas ready")


def test_missing_deployment_is_pending(small_tier_body):
    tier = ModelTier.from_body(small_tier_body)
    status = plan_tier(tier, TierObservation(), NOW).status
    assert cond(status, "Ready")["reason"] == "DeploymentPending"
    assert status["readyReplicas"] == 0


def test_spec_update_in_flight_is_progressing_while_old_pods_serve(small_tier_body, policy_body):
    tier = ModelTier.from_body(small_tier_body)
    observed = TierObservation(
        deployment=deployment(replicas=1, ready=1, updated=0, total=2, generation=6, observed_generation=6),
        route_policy=RoutePolicy.from_body(policy_body),
    )
    status = plan_tier(tier, observed, NOW).status
    assert cond(status, "Progressing")["status"] == "True"
    assert cond(status, "Progressing")["reason"] == "RollingOut"
    assert cond(status, "Progressing")["message"] == "0/1 replicas run the current spec."
    assert cond(status, "Ready")["status"] == "True"


def test_deployment_not_yet_observed_by_its_controller_is_progressing(small_tier_body):
    tier = ModelTier.from_body(small_tier_body)
    observed = TierObservation(deployment=deployment(generation=7, observed_generation=6))
    assert cond(plan_tier(tier, observed, NOW).status, "Progressing")["status"] == "True"


def test_serving_checkpoint_moves_only_when_the_rollout_completes(small_tier_body, policy_body):
    small_tier_body["spec"]["model"]["checkpoint"] = "s3://bucket/ckpt-2"
    tier = ModelTier.from_body(small_tier_body)
    policy = RoutePolicy.from_body(policy_body)
    rolling = plan_tier(tier, TierObservation(deployment=deployment(updated=0, total=2, checkpoint="s3://bucket/ckpt-2"), route_policy=policy), NOW)
    assert rolling.status["servingCheckpoint"] == "s3://acme-models/support-8b/ckpt-0042"
    assert rolling.status["candidateCheckpoint"] == "s3://bucket/ckpt-2"
    assert (cond(rolling.status, "Ready")["status"], cond(rolling.status, "Ready")["reason"]) == ("False", "RollingOut")
    assert rolling.checkpoint == "s3://bucket/ckpt-2"
    done = plan_tier(tier, TierObservation(deployment=deployment(checkpoint="s3://bucket/ckpt-2"), route_policy=policy), NOW)
    assert done.status["servingCheckpoint"] == "s3://bucket/ckpt-2"
    assert done.status["candidateCheckpoint"] is None
    assert cond(done.status, "Ready")["status"] == "True"
    assert [e.reason for e in done.events][0] == "Promoted"


def test_stalled_rollout_is_reported(small_tier_body):
    tier = ModelTier.from_body(small_tier_body)
    observed = TierObservation(deployment=deployment(progressing_reason="ProgressDeadlineExceeded", updated=0, total=2))
    progressing = cond(plan_tier(tier, observed, NOW).status, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "RolloutStalled")


def test_missing_route_policy_sets_ready_false_naming_it(small_tier_body):
    tier = ModelTier.from_body(small_tier_body)
    status = plan_tier(tier, TierObservation(deployment=deployment()), NOW).status
    ready = cond(status, "Ready")
    refs = cond(status, "ResolvedRefs")
    assert (ready["status"], ready["reason"]) == ("False", "RoutePolicyNotFound")
    assert refs["message"] == "spec.router.routePolicy refers to RoutePolicy 'support', which does not exist in namespace 'llm'."


def test_missing_secret_key_is_named(small_tier_body, policy_body):
    small_tier_body["spec"]["engine"]["env"] = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}]
    tier = ModelTier.from_body(small_tier_body)
    observed = TierObservation(deployment=deployment(), route_policy=RoutePolicy.from_body(policy_body), secrets={"hf": frozenset({"other"})})
    ready = cond(plan_tier(tier, observed, NOW).status, "Ready")
    assert ready["reason"] == "SecretNotFound"
    assert ready["message"] == "spec.engine.env[0].valueFrom.secretKeyRef refers to key 'token' of Secret 'hf', which does not exist in namespace 'llm'."


def test_scaled_to_zero_tier_is_ready_and_says_so(large_tier_body, policy_body):
    tier = ModelTier.from_body(large_tier_body)
    observed = TierObservation(deployment=deployment(replicas=0, ready=0, updated=0), route_policy=RoutePolicy.from_body(policy_body))
    ready = cond(plan_tier(tier, observed, NOW).status, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero")


def test_transition_time_moves_only_when_status_flips(small_tier_body, policy_body):
    tier = ModelTier.from_body(small_tier_body)
    policy = RoutePolicy.from_body(policy_body)
    first = plan_tier(tier, TierObservation(deployment=deployment(ready=0, available="False"), route_policy=policy), NOW).status
    later = NOW + timedelta(minutes=3)
    # Still not ready, different reason: the transition time stays.
    second = plan_tier(tier, TierObservation(deployment=deployment(ready=0, available="False"), pods=[pending_pod()], route_policy=policy), later, first).status
    assert cond(second, "Ready")["lastTransitionTime"] == "2026-11-22T12:00:00Z"
    assert cond(second, "Ready")["reason"] == "Unschedulable"
    third = plan_tier(tier, TierObservation(deployment=deployment(), route_policy=policy), later, second).status
    assert cond(third, "Ready")["lastTransitionTime"] == "2026-11-22T12:03:00Z"


def test_unchanged_observations_produce_no_status_patch_and_no_events(small_tier_body, policy_body):
    tier = ModelTier.from_body(small_tier_body)
    observed = TierObservation(deployment=deployment(), route_policy=RoutePolicy.from_body(policy_body))
    first = plan_tier(tier, observed, NOW)
    second = plan_tier(tier, observed, NOW + timedelta(minutes=5), first.status)
    assert second.status_merge_patch(first.status) is None
    assert second.events == []
    assert [e.reason for e in first.events] == ["Available", "RolloutComplete"]


def test_only_changed_fields_are_patched(small_tier_body, policy_body):
    tier = ModelTier.from_body(small_tier_body)
    policy = RoutePolicy.from_body(policy_body)
    first = plan_tier(tier, TierObservation(deployment=deployment(replicas=2, ready=1), route_policy=policy), NOW)
    second = plan_tier(tier, TierObservation(deployment=deployment(replicas=2, ready=2), route_policy=policy), NOW, first.status)
    patch = second.status_merge_patch(first.status)
    assert set(patch) == {"readyReplicas", "conditions"}
    assert patch["readyReplicas"] == 2


@pytest.mark.parametrize(
    ("replicas_spec", "engine", "current", "expected"),
    [
        ({"min": 1, "max": 4}, "shoal", None, 1),
        ({"min": 0, "max": 4}, "shoal", None, 1),
        ({"min": 2, "max": 4}, "shoal", None, 2),
        ({"min": 1, "max": 4}, "shoal", 3, 3),
        ({"min": 1, "max": 4}, "shoal", 9, 4),
        ({"min": 1, "max": 4}, "none", 3, 1),
        # replicas.desired (kubectl scale) is a floor for an autoscaled tier, not a size:
        # the autoscaler's 3 stays, a size below the floor is raised to it.
        ({"min": 1, "max": 4, "desired": 2}, "shoal", 3, 3),
        ({"min": 1, "max": 4, "desired": 2}, "shoal", 1, 2),
        ({"min": 1, "max": 4, "desired": 3}, "keda", 2, 3),
        ({"min": 1, "max": 4, "desired": 2}, "none", 4, 2),
        ({"min": 0, "max": 2}, "shoal", 0, 0),
    ],
)
def test_replicas_to_apply(small_tier_body, replicas_spec, engine, current, expected):
    small_tier_body["spec"]["replicas"] = replicas_spec
    small_tier_body["spec"]["autoscaling"]["engine"] = engine
    if engine == "keda":
        small_tier_body["spec"]["autoscaling"]["prometheus"] = {"url": "http://prometheus:9090", "query": "sum(q)"}
    tier = ModelTier.from_body(small_tier_body)
    dep = None if current is None else {"spec": {"replicas": current}}
    assert desired_replicas(tier, dep) == expected


def test_terminating_pods_are_ignored():
    pod = pending_pod()
    pod["metadata"]["deletionTimestamp"] = "2026-11-22T12:00:00Z"
    assert pod_problem([pod]) is None
