"""What the autoscaler writes to the ModelTier status, and when it writes nothing."""

from __future__ import annotations

from shoal.controller.autoscaler import autoscaler_status_patch
from shoal.plan.autoscale import History, ScaleDecision

NOW = 1_795_000_000.0  # 2026-11-18T11:06:40Z


def decision(desired=2, reason="ScaleUp", active=True, cond_reason="MetricsFresh", queue=20.0):
    return ScaleDecision(
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
    patch = autoscaler_status_patch({}, decision(), 7, NOW)
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
    first = autoscaler_status_patch({}, decision(), 7, NOW)
    stored = {"autoscaler": first["autoscaler"], "conditions": first["conditions"]}
    assert autoscaler_status_patch(stored, decision(queue=21.5), 7, NOW + 5) is None


def test_missing_metrics_flip_scaling_active_and_keep_other_conditions():
    ready = {"type": "Ready", "status": "True", "reason": "Available", "message": "", "lastTransitionTime": "2026-11-18T08:00:00Z"}
    first = autoscaler_status_patch({"conditions": [ready]}, decision(), 7, NOW)
    stored = {"autoscaler": first["autoscaler"], "conditions": first["conditions"]}
    patch = autoscaler_status_patch(stored, decision(reason="MetricsMissing", active=False, cond_reason="MetricsMissing", queue=None), 7, NOW + 30)
    types = [(c["type"], c["status"], c["reason"]) for c in patch["conditions"]]
    assert types == [("Ready", "True", "Available"), ("ScalingActive", "False", "MetricsMissing")]
    assert "queueDepth" not in patch["autoscaler"]
    scaling = patch["conditions"][1]
    assert scaling["lastTransitionTime"] == "2026-11-18T11:07:10Z"


def test_a_pod_started_after_the_tier_fell_asleep_counts_all_its_spills():
    from shoal.controller.autoscaler import TierMemory

    # The baseline taken when the tier went to sleep: large-a had spilled 7 before.
    memory = TierMemory(spill_counters={"large-a": 7.0}, asleep_since=100.0)
    # large-a spilled once more; large-b started after the sleep and spilled 2; large-c was
    # running at sleep time but unreadable then: its first reading is only a baseline.
    assert memory.spilled_since({"large-a": 8.0, "large-b": 2.0, "large-c": 5.0}, frozenset({"large-b"})) == 3
    assert memory.spilled_since({"large-a": 8.0, "large-b": 2.0, "large-c": 6.0}, frozenset({"large-b"})) == 1


def test_spill_counters_count_new_requests_only_after_a_baseline():
    from shoal.controller.autoscaler import TierMemory
    from shoal.controller.metrics_source import parse_spillovers

    memory = TierMemory()
    assert memory.spilled_since({"large-a": 7.0}) == 0  # first sight: a baseline
    assert memory.spilled_since({"large-a": 9.0, "large-b": 1.0}) == 2  # b is new: baseline
    assert memory.spilled_since({"large-a": 9.0, "large-b": 4.0}) == 3
    assert memory.spilled_since({"large-a": 1.0, "large-b": None}) == 1  # a restarted; b unreadable
    # The exposition a router sidecar serves (its own metrics class, a fresh registry).
    from prometheus_client import CollectorRegistry, generate_latest

    from shoal.router.metrics import RouterMetrics

    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    metrics.spillovers.labels("small").inc(5)
    metrics.spillovers.labels("large").inc(2)
    text = generate_latest(registry).decode()
    assert parse_spillovers(text, frozenset({"small"})) == 5.0
    assert parse_spillovers(text, frozenset({"medium"})) == 0.0
