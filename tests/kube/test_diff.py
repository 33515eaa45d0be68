"""Applying only what differs keeps the steady state free of writes."""

from __future__ import annotations

from shoal.kube.diff import contains, needs_apply


def test_server_defaults_do_not_count_as_a_difference():
    desired = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"ports": [{"port": 80, "targetPort": "http"}]}}
    observed = {
        "metadata": {"name": "a", "labels": {"x": "1", "extra": "y"}, "resourceVersion": "9"},
        "spec": {"ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}], "clusterIP": "10.0.0.1"},
    }
    assert needs_apply(observed, desired) is False


def test_a_changed_value_or_list_length_is_a_difference():
    assert contains({"a": [1, 2]}, {"a": [1, 2, 3]}) is False
    assert contains({"a": {"b": "x"}}, {"a": {"b": "y"}}) is False
    assert needs_apply({"data": {"k": "old"}}, {"data": {"k": "new"}}) is True


def test_missing_object_needs_apply():
    assert needs_apply(None, {"spec": {}}) is True


def test_numbers_and_their_string_form_match():
    assert contains({"replicas": "2"}, {"replicas": 2}) is True


def test_new_owner_reference_needs_apply():
    desired = {"metadata": {"ownerReferences": [{"uid": "new"}]}}
    assert needs_apply({"metadata": {"ownerReferences": [{"uid": "old"}]}}, desired) is True
