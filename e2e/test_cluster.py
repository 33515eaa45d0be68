"""The local control plane behaves like a real cluster with GPU nodes."""

from __future__ import annotations

import json

import pytest

from e2e.helpers import condition, is_true, unique_name, wait_for
from shoal.devcluster.build import KUBERNETES_VERSION
from shoal.devcluster.kubectl import KubectlError

pytestmark = pytest.mark.e2e

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _pod_spec(*, gpus: int = 0, product: str | None = None, **extra) -> dict:
    container = {"name": "main", "image": "registry.invalid/shoal/noop:1"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    spec: dict = {"containers": [container], **extra}
    if product:
        spec["nodeSelector"] = {"nvidia.com/gpu.product": product}
        spec["tolerations"] = [GPU_TOLERATION]
    return spec


def test_apiserver_is_ready_and_reports_the_pinned_version(kubectl):
    assert kubectl.run("get", "--raw", "/readyz").strip() == "ok"
    version = json.loads(kubectl.run("version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_gpu_nodes_have_capacity_labels_and_the_gpu_taint(kubectl):
    nodes = {n["metadata"]["name"]: n for n in kubectl("get", "nodes")["items"]}
    assert sorted(nodes) == ["cpu-0", "gpu-h100-0", "gpu-h100-1", "gpu-l4-0", "gpu-l4-1"]
    expected = {
        "gpu-h100-0": ("NVIDIA-H100-80GB-HBM3", "8"),
        "gpu-h100-1": ("NVIDIA-H100-80GB-HBM3", "8"),
        "gpu-l4-0": ("NVIDIA-L4", "4"),
        "gpu-l4-1": ("NVIDIA-L4", "4"),
    }
    for name, (product, count) in expected.items():
        node = nodes[name]
        labels = node["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == product
        assert labels["nvidia.com/gpu.present"] == "true"
        assert labels["nvidia.com/gpu.count"] == count
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == count
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]
        assert is_true(node, "Ready"), node["status"].get("conditions")
    cpu = nodes["cpu-0"]
    assert "nvidia.com/gpu" not in cpu["status"]["allocatable"]
    assert not cpu["spec"].get("taints")
    assert is_true(cpu, "Ready")


def test_deployment_requesting_l4_gpus_lands_only_on_l4_nodes_and_becomes_ready(kubectl, namespace):
    # Two replicas of four GPUs each: only two L4 nodes exist, so each pod needs its own node.
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "l4-workload", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "l4-workload"}},
            "template": {"metadata": {"labels": {"app": "l4-workload"}},
                         "spec": _pod_spec(gpus=4, product="NVIDIA-L4")},
        },
    }
    kubectl.apply([deployment])
    wait_for(lambda: kubectl("get", "deployment", "l4-workload", "-n", namespace)
             ["status"].get("readyReplicas") == 2, 90, "2 ready replicas")
    pods = kubectl("get", "pods", "-n", namespace, "-l", "app=l4-workload")["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["gpu-l4-0", "gpu-l4-1"]
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert is_true(pod, "Ready")


def test_pod_asking_for_a_gpu_product_no_node_has_stays_pending_as_unschedulable(kubectl, namespace):
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "wants-b200", "namespace": namespace},
           "spec": _pod_spec(gpus=1, product="NVIDIA-B200")}
    kubectl.apply([pod])

    def unschedulable():
        got = kubectl("get", "pod", "wants-b200", "-n", namespace)
        scheduled = condition(got, "PodScheduled")
        return got if scheduled and scheduled["reason"] == "Unschedulable" else None

    got = wait_for(unschedulable, 60, "PodScheduled=False reason Unschedulable")
    assert got["status"]["phase"] == "Pending"
    assert "node affinity/selector" in condition(got, "PodScheduled")["message"]
    events = wait_for(
        lambda: [e for e in kubectl("get", "events", "-n", namespace,
                                    "--field-selector", "involvedObject.name=wants-b200")["items"]
                 if e["reason"] == "FailedScheduling"],
        60, "a FailedScheduling event")
    assert events[0]["type"] == "Warning"


def test_pod_asking_for_more_gpus_than_any_node_has_is_unschedulable(kubectl, namespace):
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "wants-16", "namespace": namespace},
           "spec": _pod_spec(gpus=16, product="NVIDIA-H100-80GB-HBM3")}
    kubectl.apply([pod])
    got = wait_for(lambda: (c := condition(kubectl("get", "pod", "wants-16", "-n", namespace),
                                           "PodScheduled")) and c["reason"] == "Unschedulable" and c,
                   60, "PodScheduled=False reason Unschedulable")
    assert "Insufficient nvidia.com/gpu" in got["message"]


def test_gpu_pod_without_a_toleration_is_kept_off_gpu_nodes(kubectl, namespace):
    spec = _pod_spec(gpus=1)
    spec["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-L4"}
    kubectl.apply([{"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "no-toleration", "namespace": namespace}, "spec": spec}])
    got = wait_for(lambda: (c := condition(kubectl("get", "pod", "no-toleration", "-n", namespace),
                                           "PodScheduled")) and c["reason"] == "Unschedulable" and c,
                   60, "PodScheduled=False reason Unschedulable")
    assert "untolerated taint" in got["message"]


def test_job_pod_completes_so_the_job_completes(kubectl, namespace):
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "one-shot", "namespace": namespace},
           "spec": {"backoffLimit": 0, "template": {
               "spec": _pod_spec(restartPolicy="Never")}}}
    kubectl.apply([job])
    done = wait_for(lambda: (j := kubectl("get", "job", "one-shot", "-n", namespace))
                    and is_true(j, "Complete") and j, 90, "the Job to complete")
    assert done["status"]["succeeded"] == 1


def test_restricted_namespace_rejects_a_privileged_pod_and_admits_a_compliant_one(kubectl, namespace):
    kubectl.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    privileged = {"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "privileged", "namespace": namespace},
                  "spec": {"containers": [{"name": "main", "image": "registry.invalid/x:1",
                                           "securityContext": {"privileged": True}}]}}
    with pytest.raises(KubectlError) as rejected:
        kubectl.apply([privileged])
    assert 'violates PodSecurity "restricted:latest"' in rejected.value.stderr
    compliant = {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "compliant", "namespace": namespace},
                 "spec": {
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "main", "image": "registry.invalid/x:1",
                                     "securityContext": {
                                         "allowPrivilegeEscalation": False,
                                         "capabilities": {"drop": ["ALL"]}}}]}}
    kubectl.apply([compliant])
    wait_for(lambda: is_true(kubectl("get", "pod", "compliant", "-n", namespace), "Ready"),
             60, "the compliant pod to be Ready")


def test_garbage_collector_deletes_objects_owned_by_a_deleted_owner(kubectl, namespace):
    owner = kubectl("create", "configmap", "owner", "-n", namespace, "--from-literal=a=b")
    child = unique_name("child")
    kubectl.apply([{"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": child, "namespace": namespace, "ownerReferences": [{
                        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                        "uid": owner["metadata"]["uid"]}]}}])
    kubectl.run("delete", "configmap", "owner", "-n", namespace)

    def child_gone():
        names = [c["metadata"]["name"] for c in kubectl("get", "configmaps", "-n", namespace)["items"]]
        return child not in names

    wait_for(child_gone, 60, f"the garbage collector to delete {child}")


def test_namespace_deletion_finishes(kubectl):
    name = unique_name("e2e-ns")
    kubectl.run("create", "namespace", name)
    kubectl.run("create", "configmap", "x", "-n", name)
    kubectl.run("delete", "namespace", name, "--wait=false")

    def gone():
        try:
            kubectl("get", "namespace", name)
        except Exception as error:  # noqa: BLE001
            return "NotFound" in str(error)
        return False

    wait_for(gone, 90, f"namespace {name} to be deleted (needs the namespace controller)")


def _job(name: str, namespace: str, annotations: dict[str, str]) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"backoffLimit": 0, "template": {
                "metadata": {"annotations": annotations},
                "spec": _pod_spec(restartPolicy="Never")}}}


def test_job_pod_with_a_simulated_failure_fails_the_job_with_its_exit_code_and_message(
        kubectl, namespace):
    message = '{"verdict": "JobError", "message": "engine did not start"}'
    kubectl.apply([_job("fails", namespace, {
        "shoal.dev/simulate-exit-code": "2",
        "shoal.dev/simulate-termination-message": message})])
    failed = wait_for(lambda: (j := kubectl("get", "job", "fails", "-n", namespace))
                      and is_true(j, "Failed") and j, 90, "the Job to fail")
    assert failed["status"].get("succeeded", 0) == 0
    (pod,) = kubectl("get", "pods", "-n", namespace, "-l", "job-name=fails")["items"]
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 2
    assert terminated["reason"] == "Error"
    assert terminated["message"] == message


def test_job_pod_with_a_simulated_success_completes_with_its_termination_message(kubectl, namespace):
    kubectl.apply([_job("passes", namespace, {
        "shoal.dev/simulate-exit-code": "0",
        "shoal.dev/simulate-termination-message": '{"verdict": "Passed"}'})])
    wait_for(lambda: is_true(kubectl("get", "job", "passes", "-n", namespace), "Complete"),
             90, "the Job to complete")
    (pod,) = kubectl("get", "pods", "-n", namespace, "-l", "job-name=passes")["items"]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["message"]) == (0, '{"verdict": "Passed"}')
