"""What the autoscaler writes to the ModelTier status, and when it writes nothing."""

from __future__ import annotations

from shoal.controller.autoscaler import status_patch
from shoal.plan.autoscale import Decision, History

NOW = 1_795_000_000.0  # 2026-11-18T11:06:40Z


def decision(desired=2, reason="ScaleUp", active=True, cond_reason="MetricsFresh", queue=20.0):
    return Decision(
        desired_replicas=desired,
        reason=reason,
        message=f"{reason} to {desired}",
        scaling_active=active,
        condition_reason=cond_reason,
        recommended=desired,
        queue_depth=queue,
        waiting=4.0,
        history=History(last_scale_time=NOW, last_request_time=NOW),
    )


def test_a_scale_decision_is_written_with_its_condition():
    patch = status_patch({}, decision(), 7, NOW)
    assert patch["autoscaler"] == {
        "desiredReplicas": 2,
        "reason": "ScaleUp",
        "message": "ScaleUp to 2",
        "queueDepth": 20.0,
        "waiting": 4.0,
        "lastScaleTime": "2026-11-18T11:06:40Z",
        "lastRequestTime": "2026-11-18T11:06:40Z",
    }
    assert [(c["type"], c["status"], c["reason"], c["observedGeneration"]) for c in patch["conditions"]] == [
        ("ScalingActive", "True", "MetricsFresh", 7)
    ]


def test_same_decision_again_writes_nothing_even_if_the_queue_moved():
    first = status_patch({}, decision(), 7, NOW)
    stored = {"autoscaler": first["autoscaler"], "conditions": first["conditions"]}
    assert status_patch(stored, decision(queue=21.5), 7, NOW + 5) is None


def test_missing_metrics_flip_scaling_active_and_keep_other_conditions():
    ready = {"type": "Ready", "status": "True", "reason": "Available", "message": "", "lastTransitionTime": "2026-11-18T08:00:00Z"}
    first = status_patch({"conditions": [ready]}, decision(), 7, NOW)
    stored = {"autoscaler": first["autoscaler"], "conditions": first["conditions"]}
    patch = status_patch(stored, decision(reason="MetricsMissing", active=False, cond_reason="MetricsMissing", queue=None), 7, NOW + 30)
    types = [(c["type"], c["status"], c["reason"]) for c in patch["conditions"]]
    assert types == [("Ready", "True", "Available"), ("ScalingActive", "False", "MetricsMissing")]
    assert "queueDepth" not in patch["autoscaler"]
    scaling = patch["conditions"][1]
    assert scaling["lastTransitionTime"] == "2026-11-18T11:07:10Z"
