"""kwok's configuration: default Stages plus Shoal's, with pod-complete stepping aside."""

import pytest
import yaml

from shoal.devcluster.stages import kwok_config, shoal_stages

DEFAULTS = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-ready}
spec: {selector: {matchExpressions: []}}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-complete}
spec:
  selector:
    matchExpressions:
    - {key: .status.phase, operator: In, values: [Running]}
"""


def test_pod_complete_leaves_job_pods_with_a_simulated_exit_or_hold_alone():
    documents = list(yaml.safe_load_all(kwok_config(DEFAULTS, extra=[])))
    complete = next(d for d in documents if d["metadata"]["name"] == "pod-complete")
    assert complete["spec"]["selector"]["matchExpressions"][-2:] == [
        {"key": '.metadata.annotations["shoal.dev/simulate-exit-code"]', "operator": "DoesNotExist"},
        {"key": '.metadata.annotations["shoal.dev/simulate-hold"]', "operator": "DoesNotExist"},
    ]
    ready = next(d for d in documents if d["metadata"]["name"] == "pod-ready")
    assert ready["spec"]["selector"]["matchExpressions"] == []


def test_shoals_stages_follow_kwoks_and_select_on_the_same_annotation():
    documents = list(yaml.safe_load_all(kwok_config(DEFAULTS)))
    assert [d["metadata"]["name"] for d in documents] == [
        "pod-ready", "pod-complete", "shoal-job-pod-exit"]
    (exit_stage,) = shoal_stages()
    keys = [e["key"] for e in exit_stage["spec"]["selector"]["matchExpressions"]]
    assert '.metadata.annotations["shoal.dev/simulate-exit-code"]' in keys


def test_defaults_without_pod_complete_are_refused():
    with pytest.raises(ValueError, match="pod-complete"):
        kwok_config("kind: Stage\nmetadata: {name: pod-ready}\n")


def test_with_evaluation_pods_held_pod_complete_also_leaves_shoals_evaluation_pods_alone():
    documents = list(yaml.safe_load_all(kwok_config(DEFAULTS, extra=[], hold_evaluation_pods=True)))
    complete = next(d for d in documents if d["metadata"]["name"] == "pod-complete")
    assert complete["spec"]["selector"]["matchExpressions"][-1] == {
        "key": '.metadata.labels["app.kubernetes.io/component"]', "operator": "NotIn", "values": ["evaluation"]}
    held = list(yaml.safe_load_all(kwok_config(DEFAULTS, extra=[])))
    assert len(next(d for d in held if d["metadata"]["name"] == "pod-complete")["spec"]["selector"]["matchExpressions"]) == 3
