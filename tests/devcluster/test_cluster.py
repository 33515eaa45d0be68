"""Pure pieces of the control plane: audit filtering, waiting, state-directory safety."""

import json

import pytest

from shoal.devcluster.cluster import (
    OPERATOR_USER,
    ClusterError,
    ComponentFailed,
    ControlPlane,
    audit_policy,
    controller_manager_tuning,
    scheduler_config,
    wait_until,
    write_events,
)
from shoal.devcluster.commands import node_rows


def _event(verb, user=OPERATOR_USER, at="2026-01-01T00:00:10.000000Z", resource="deployments"):
    return {"kind": "Event", "verb": verb, "user": {"username": user},
            "requestReceivedTimestamp": at, "objectRef": {"resource": resource},
            "requestURI": f"/apis/apps/v1/{resource}"}


def test_audit_events_are_filtered_by_user_and_received_time(tmp_path):
    cluster = ControlPlane(tmp_path)
    cluster.audit_log.parent.mkdir(parents=True)
    lines = [
        _event("get", at="2026-01-01T00:00:05.000000Z"),
        _event("patch", at="2026-01-01T00:00:10.000000Z"),
        _event("create", user="shoal-admin", at="2026-01-01T00:00:10.000000Z"),
        _event("delete", at="2026-01-01T00:00:20.000000Z"),
    ]
    cluster.audit_log.write_text("\n".join(json.dumps(e) for e in lines) + '\n{"partial')
    base = 1767225600.0  # 2026-01-01T00:00:00Z
    events = cluster.audit_events(since=base + 6, until=base + 15)
    assert [e["verb"] for e in events] == ["patch"]
    assert [e["verb"] for e in cluster.audit_events()] == ["get", "patch", "delete"]


def test_write_events_are_the_mutating_verbs():
    events = [_event(v) for v in ("get", "list", "watch", "create", "update", "patch",
                                  "delete", "deletecollection")]
    assert [e["verb"] for e in write_events(events)] == [
        "create", "update", "patch", "delete", "deletecollection"]


def test_audit_policy_logs_only_the_operator_at_metadata_level():
    rules = audit_policy()["rules"]
    assert rules[0] == {"level": "Metadata", "users": [OPERATOR_USER]}
    assert rules[-1] == {"level": "None"}


def test_controller_manager_runs_with_a_raised_client_rate_and_more_workers():
    assert controller_manager_tuning() == [
        "--kube-api-qps=500",
        "--kube-api-burst=1000",
        "--concurrent-deployment-syncs=50",
        "--concurrent-replicaset-syncs=50",
        "--concurrent-service-endpoint-syncs=20",
    ]


def test_scheduler_config_carries_the_kubeconfig_the_raised_rate_and_no_leader_election(tmp_path):
    config = scheduler_config(tmp_path / "scheduler.yaml")
    assert config == {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(tmp_path / "scheduler.yaml"), "qps": 500, "burst": 1000},
        "leaderElection": {"leaderElect": False},
    }


def test_wait_until_returns_the_first_truthy_value():
    values = iter([None, 0, [], "done"])
    assert wait_until(lambda: next(values), timeout_s=5, what="x", interval_s=0) == "done"


def test_wait_until_fails_with_the_last_value_seen():
    with pytest.raises(ComponentFailed, match=r"waiting for the thing; last seen: \[\]"):
        wait_until(lambda: [], timeout_s=0.05, what="the thing", interval_s=0.01)


def test_wait_until_fails_at_once_when_the_component_died():
    with pytest.raises(ComponentFailed, match="etcd exited"):
        wait_until(lambda: None, timeout_s=60, what="x", alive=lambda: "etcd exited")


def test_start_refuses_to_wipe_a_directory_that_is_not_cluster_state(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(ClusterError, match="refusing to reuse"):
        ControlPlane(tmp_path).start(None, None, [])  # type: ignore[arg-type]
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_node_rows_show_gpu_product_and_count():
    nodes = {"items": [
        {"metadata": {"name": "gpu-l4-0", "labels": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
         "status": {"capacity": {"nvidia.com/gpu": "4", "cpu": "48", "memory": "192Gi"},
                    "conditions": [{"type": "Ready", "status": "True"}]}},
        {"metadata": {"name": "cpu-0", "labels": {}},
         "status": {"capacity": {"cpu": "16", "memory": "64Gi"}}},
    ]}
    assert node_rows(nodes) == [
        ["NODE", "READY", "GPU", "GPUS", "CPU", "MEMORY"],
        ["gpu-l4-0", "True", "NVIDIA-L4", "4", "48", "192Gi"],
        ["cpu-0", "Unknown", "-", "0", "16", "64Gi"],
    ]
