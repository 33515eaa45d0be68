"""ModelTier -> KEDA ScaledObject."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shoal.api.modeltier import ModelTier
from shoal.render.keda import render_scaled_object


def tier(autoscaling: dict, replicas: dict) -> ModelTier:
    return ModelTier.model_validate({
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "ModelTier",
        "metadata": {"name": "small", "namespace": "serving", "uid": "u-1"},
        "spec": {
            "model": {"name": "small", "source": "hf://org/model"},
            "replicas": replicas,
            "autoscaling": autoscaling,
        },
    })


PROMETHEUS = {"url": "http://prometheus.monitoring:9090", "query": 'sum(shoal_engine_requests_waiting{tier="small"} + shoal_engine_requests_running{tier="small"})'}


def test_a_keda_tier_scales_its_deployment_on_total_queue_depth_over_the_target():
    obj = render_scaled_object(tier(
        {"engine": "keda", "targetQueueDepth": 12, "metricsSource": "prometheus", "prometheus": PROMETHEUS,
         "scaleDownWindowSeconds": 600, "scaleDownStepReplicas": 2, "metricsPeriodSeconds": 10},
        {"min": 1, "max": 6},
    ))
    assert obj["apiVersion"] == "keda.sh/v1alpha1"
    assert obj["kind"] == "ScaledObject"
    assert obj["metadata"]["name"] == "small"
    assert obj["metadata"]["namespace"] == "serving"
    assert obj["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    spec = obj["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "small"}
    assert (spec["pollingInterval"], spec["minReplicaCount"], spec["maxReplicaCount"]) == (10, 1, 6)
    assert "cooldownPeriod" not in spec
    assert spec["triggers"] == [{
        "type": "prometheus",
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": "http://prometheus.monitoring:9090",
            "query": PROMETHEUS["query"],
            "threshold": "12",
            "activationThreshold": "0",
        },
    }]
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == {
        "scaleUp": {"stabilizationWindowSeconds": 0},
        "scaleDown": {"stabilizationWindowSeconds": 600, "policies": [{"type": "Pods", "value": 2, "periodSeconds": 10}]},
    }


def test_a_keda_tier_that_may_sleep_waits_its_idle_period_before_zero():
    obj = render_scaled_object(tier(
        {"engine": "keda", "metricsSource": "prometheus", "prometheus": PROMETHEUS, "scaleToZeroIdleSeconds": 1200},
        {"min": 0, "max": 3},
    ))
    assert (obj["spec"]["minReplicaCount"], obj["spec"]["cooldownPeriod"]) == (0, 1200)


def test_a_fractional_target_is_written_as_a_plain_number():
    obj = render_scaled_object(tier(
        {"engine": "keda", "targetQueueDepth": 7.5, "metricsSource": "prometheus", "prometheus": PROMETHEUS}, {"min": 1, "max": 2},
    ))
    assert obj["spec"]["triggers"][0]["metadata"]["threshold"] == "7.5"


def test_keda_without_a_prometheus_query_is_refused_with_what_to_add():
    with pytest.raises(ValidationError, match="autoscaling.prometheus is required when autoscaling.engine is keda"):
        tier({"engine": "keda"}, {"min": 1, "max": 2})


def test_the_deployment_name_can_be_given():
    obj = render_scaled_object(tier({"engine": "keda", "metricsSource": "prometheus", "prometheus": PROMETHEUS}, {"min": 1, "max": 2}), "small-v2")
    assert obj["spec"]["scaleTargetRef"]["name"] == "small-v2"


def test_kubectl_scale_on_a_keda_tier_raises_keda_s_floor_instead_of_fighting_it():
    obj = render_scaled_object(tier(
        {"engine": "keda", "metricsSource": "prometheus", "prometheus": PROMETHEUS},
        {"min": 0, "max": 6, "desired": 3},
    ))
    assert (obj["spec"]["minReplicaCount"], obj["spec"]["maxReplicaCount"]) == (3, 6)
    # With a floor above zero the tier never sleeps, so KEDA's cool-down does not apply.
    assert "cooldownPeriod" not in obj["spec"]
