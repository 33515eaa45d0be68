"""ModelTiers on the real control plane, reconciled by the operator running as the chart's
ServiceAccount (so every test also proves the chart's RBAC is enough)."""

from __future__ import annotations

import subprocess
import time

import pytest

from e2e.helpers import Watch, condition, is_true, unique_name, wait_for
from shoal.api import conditions as C
from shoal.devcluster.install import chart_dir, repo_root
from shoal.devcluster.kubectl import KubectlError

pytestmark = pytest.mark.e2e

EXAMPLES = repo_root() / "examples"
L4_NODES = {"gpu-l4-0", "gpu-l4-1"}


def tier(name: str, namespace: str, *, product: str = "NVIDIA-L4", gpus: int = 1,
         replicas: int = 1, **spec_extra) -> dict:
    spec = {
        "model": {"name": "m", "source": "hf://org/model"},
        "resources": {"gpu": {"count": gpus, "product": product}, "cpu": "1", "memory": "4Gi"},
        "replicas": {"min": replicas, "max": max(replicas, 1)},
    }
    for key, value in spec_extra.items():
        spec[key] = value
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelTier",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def ready_tier(kubectl, name: str, namespace: str, timeout: float = 90) -> dict:
    def ready():
        got = kubectl("get", "modeltier", name, "-n", namespace)
        cond = condition(got, C.READY)
        if cond and cond["status"] == "True" and \
                got["status"].get("observedGeneration") == got["metadata"]["generation"]:
            return got
        return None

    return wait_for(ready, timeout, f"ModelTier {namespace}/{name} Ready=True at its generation")


def owned_by(kubectl, namespace: str, uid: str) -> list[str]:
    """Every object in ``namespace`` with an ownerReference to ``uid`` (direct children)."""
    kinds = "deployments,services,poddisruptionbudgets,configmaps,secrets,serviceaccounts,jobs"
    listed = kubectl("get", kinds, "-n", namespace)["items"]
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in listed
                  if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences", [])))


def tier_pods(kubectl, name: str, namespace: str) -> list[dict]:
    return kubectl("get", "pods", "-n", namespace, "-l", f"shoal.dev/tier={name}")["items"]


def test_small_example_tier_becomes_ready_with_pods_on_l4_nodes(kubectl, running_operator, namespace):
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLES / "modeltier-small.yaml"),
                "-f", str(EXAMPLES / "routepolicy.yaml"), "-f", str(EXAMPLES / "evaluation-dataset.yaml"))
    got = ready_tier(kubectl, "small", namespace)
    assert got["status"]["readyReplicas"] == 1
    deployment = kubectl("get", "deployment", "small", "-n", namespace)
    assert deployment["status"]["readyReplicas"] == 1
    pods = tier_pods(kubectl, "small", namespace)
    assert len(pods) == 1
    assert pods[0]["spec"]["nodeName"] in L4_NODES
    assert is_true(pods[0], "Ready")
    table = kubectl.run("get", "modeltiers", "-n", namespace)
    header, row = table.strip().splitlines()
    assert header.split() == ["NAME", "READY", "MODEL", "CHECKPOINT", "REPLICAS", "DRIFTING", "AGE"]
    assert row.split()[:5] == ["small", "True", "support-8b",
                               "s3://acme-models/support-8b/ckpt-0042", "1"]


def test_tier_without_matching_gpu_nodes_reports_unschedulable(kubectl, running_operator, namespace):
    kubectl.apply([tier("b200", namespace, product="NVIDIA-B200")])

    def unschedulable():
        got = kubectl("get", "modeltier", "b200", "-n", namespace)
        cond = condition(got, C.READY)
        return cond if cond and cond["reason"] == C.REASON_UNSCHEDULABLE else None

    cond = wait_for(unschedulable, 90, "Ready=False reason Unschedulable")
    assert cond["status"] == "False"
    # The scheduler's own words reach the user.
    assert "didn't match Pod's node affinity/selector" in cond["message"]


INVALID = [
    ("bad-enum", {"engine": {"dtype": "int3"}}, "spec.engine.dtype"),
    ("min-over-max", {"replicas": {"min": 3, "max": 2}},
     "replicas.min must be less than or equal to replicas.max"),
    ("negative-gpus", {"resources": {"gpu": {"count": -1}}}, "spec.resources.gpu.count"),
    ("tp-not-dividing", {"resources": {"gpu": {"count": 4, "product": "NVIDIA-L4"}},
                         "engine": {"tensorParallelSize": 3}},
     "resources.gpu.count must be a multiple of engine.tensorParallelSize"),
]


@pytest.mark.parametrize(("name", "spec", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_tier_is_rejected_by_the_apiserver_naming_the_field(kubectl, operator_installed,
                                                                    namespace, name, spec, message):
    obj = tier(name, namespace)
    for key, value in spec.items():
        obj["spec"][key] = value
    with pytest.raises(KubectlError) as rejected:
        kubectl.apply([obj])
    assert "is invalid" in rejected.value.stderr
    assert message in rejected.value.stderr


def test_tier_with_an_over_long_name_is_rejected(kubectl, operator_installed, namespace):
    with pytest.raises(KubectlError) as rejected:
        kubectl.apply([tier("t" * 41, namespace)])
    stderr = rejected.value.stderr
    assert "metadata.name" in stderr and "40" in stderr, stderr


def test_spec_update_rolls_pods_and_reports_progressing_then_ready(kubectl, running_operator, namespace, tools):
    kubectl.apply([tier("roll", namespace, replicas=2)])
    before = ready_tier(kubectl, "roll", namespace)
    old_pods = {p["metadata"]["name"] for p in tier_pods(kubectl, "roll", namespace)}
    assert len(old_pods) == 2

    argv = [str(tools.kubectl), f"--kubeconfig={kubectl.kubeconfig}", "get", "modeltier", "roll",
            "-n", namespace, "-o", "json", "--watch"]
    with Watch(argv) as watch:
        wait_for(lambda: watch.objects, 30, "the watch's first object")
        kubectl.run("patch", "modeltier", "roll", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"engine":{"extraArgs":["--enforce-eager"]}}}')
        after = ready_tier(kubectl, "roll", namespace)
        seen = list(watch.objects)
    generation = after["metadata"]["generation"]
    assert generation == before["metadata"]["generation"] + 1
    progressing_at_new_generation = [
        o for o in seen
        if o["status"].get("observedGeneration") == generation
        and (c := condition(o, C.PROGRESSING)) and c["status"] == "True"
    ]
    assert progressing_at_new_generation, [
        (o["status"].get("observedGeneration"), [(c["type"], c["status"], c["reason"])
                                                for c in o["status"].get("conditions", [])])
        for o in seen]
    assert is_true(after, C.READY)
    new_pods = wait_for(
        lambda: (pods := {p["metadata"]["name"] for p in tier_pods(kubectl, "roll", namespace)
                          if not p["metadata"].get("deletionTimestamp")})
        and len(pods) == 2 and not pods & old_pods and pods,
        60, "two new pods replacing the old ones")
    for pod in tier_pods(kubectl, "roll", namespace):
        if pod["metadata"]["name"] in new_pods:
            engine = next(c for c in pod["spec"]["containers"] if "--enforce-eager" in
                          (c.get("args", []) + c.get("command", [])))
            assert engine


def test_deleting_a_tier_garbage_collects_every_child(kubectl, running_operator, namespace):
    kubectl.apply([tier("doomed", namespace)])
    got = ready_tier(kubectl, "doomed", namespace)
    children = owned_by(kubectl, namespace, got["metadata"]["uid"])
    assert any(c.startswith("Deployment/") for c in children), children
    assert any(c.startswith("Service/") for c in children), children
    kubectl.run("delete", "modeltier", "doomed", "-n", namespace)
    wait_for(lambda: not owned_by(kubectl, namespace, got["metadata"]["uid"])
             and not tier_pods(kubectl, "doomed", namespace), 90,
             f"the garbage collector to delete {children} and the pods")


def test_operator_killed_mid_reconcile_converges_without_duplicates(kubectl, running_operator, namespace):
    names = [f"crash-{i}" for i in range(3)]
    since = time.time()
    kubectl.apply([tier(n, namespace) for n in names])
    # Kill the operator as soon as it has started writing children: mid-reconcile.
    wait_for(lambda: [e for e in running_operator.writes(since)
                      if e.get("objectRef", {}).get("namespace") == namespace
                      and e["objectRef"].get("resource") != "events"],
             60, "the operator's first write for the new tiers")
    running_operator.kill()
    running_operator.start()
    for name in names:
        ready_tier(kubectl, name, namespace)
    deployments = kubectl("get", "deployments", "-n", namespace)["items"]
    assert sorted(d["metadata"]["name"] for d in deployments) == names
    services = kubectl("get", "services", "-n", namespace)["items"]
    assert sorted(s["metadata"]["name"] for s in services) == names
    for name in names:
        replicasets = kubectl("get", "replicasets", "-n", namespace, "-l", f"shoal.dev/tier={name}")
        assert len(replicasets["items"]) == 1, [r["metadata"]["name"] for r in replicasets["items"]]
        assert len(tier_pods(kubectl, name, namespace)) == 1


def test_operator_makes_no_writes_at_steady_state(kubectl, running_operator, namespace):
    kubectl.run("apply", "-n", namespace, "-f", str(EXAMPLES / "modeltier-small.yaml"),
                "-f", str(EXAMPLES / "routepolicy.yaml"), "-f", str(EXAMPLES / "evaluation-dataset.yaml"))
    kubectl.apply([tier("steady", namespace)])
    ready_tier(kubectl, "small", namespace)
    ready_tier(kubectl, "steady", namespace)

    # Settled: ten seconds in a row without a write from the operator.
    wait_for(lambda: not running_operator.writes(time.time() - 10), 120,
             "ten seconds without a write from the operator", interval=1)
    start = time.time()
    # The 60 s window is the measurement itself, not a wait for something to happen.
    time.sleep(60)
    writes = running_operator.write_summary(start, time.time())
    assert writes == []


def test_tier_pods_are_admitted_in_a_restricted_namespace(kubectl, running_operator, namespace):
    kubectl.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    kubectl.apply([tier("strict", namespace)])
    got = ready_tier(kubectl, "strict", namespace)
    assert got["status"]["readyReplicas"] == 1
    events = kubectl("get", "events", "-n", namespace)["items"]
    assert not [e for e in events if e["reason"] == "FailedCreate"], events


def test_helm_install_runs_the_operator_in_a_restricted_namespace_and_uninstall_leaves_only_crds(
        kubectl, tools, operator_installed):
    release, namespace = "helm-e2e", unique_name("shoal-helm")
    kubectl.run("create", "namespace", namespace)
    kubectl.run("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    wait_for(lambda: kubectl("get", "serviceaccount", "default", "-n", namespace), 60,
             "the default ServiceAccount")
    helm = [str(tools.helm), f"--kubeconfig={kubectl.kubeconfig}"]
    installed = subprocess.run(
        [*helm, "install", release, str(chart_dir()), "-n", namespace, "--wait", "--timeout=120s"],
        capture_output=True, text=True, timeout=180, check=False)
    assert installed.returncode == 0, installed.stderr
    selector = f"app.kubernetes.io/instance={release}"
    deployment = kubectl("get", "deployments", "-n", namespace, "-l", selector)["items"]
    assert [d["status"].get("readyReplicas") for d in deployment] == [1]
    crds_before = {c["metadata"]["name"] for c in kubectl("get", "crds")["items"]}

    uninstalled = subprocess.run([*helm, "uninstall", release, "-n", namespace, "--wait"],
                                 capture_output=True, text=True, timeout=180, check=False)
    assert uninstalled.returncode == 0, uninstalled.stderr

    def leftovers():
        namespaced = kubectl("get", "all,serviceaccounts,roles,rolebindings,configmaps",
                             "-n", namespace, "-l", selector)["items"]
        cluster = kubectl("get", "clusterroles,clusterrolebindings", "-l", selector)["items"]
        return [f"{o['kind']}/{o['metadata']['name']}" for o in namespaced + cluster]

    wait_for(lambda: not leftovers(), 60, "every object of the release to be deleted")
    crds_after = {c["metadata"]["name"] for c in kubectl("get", "crds")["items"]}
    assert {"modeltiers.shoal.dev", "routepolicies.shoal.dev"} <= crds_after == crds_before
    kubectl.run("delete", "namespace", namespace, "--wait=false")


def test_operator_was_never_forbidden_during_the_session(running_operator):
    # Runs after the scenarios above (same module, later in the file): every request the
    # operator made as the chart's ServiceAccount in this session is in the audit log.
    events = running_operator.cluster.audit_events()
    assert events, "the audit log recorded no request from the operator"
    # RBAC denials only: a 403 for writing into a namespace being deleted is not one.
    forbidden = [f"{e['verb']} {e.get('requestURI')}" for e in events
                 if e.get("annotations", {}).get("authorization.k8s.io/decision") == "forbid"]
    assert any(e.get("annotations", {}).get("authorization.k8s.io/decision") == "allow"
               for e in events), "the audit log carries no authorization decisions"
    assert forbidden == []
