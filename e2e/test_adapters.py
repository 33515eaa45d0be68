"""LoRA adapters on the real control plane: the API server enforces the adapter rules, and
re-pointing an adapter reaches the sidecars through their ConfigMap without restarting a pod."""

from __future__ import annotations

import json

import pytest

from e2e.helpers import wait_for
from e2e.test_modeltier import ready_tier, tier, tier_pods
from shoal.devcluster.kubectl import KubectlError

pytestmark = pytest.mark.e2e

# Hub sources: a pvc:// source would need a claim, which kwok nodes cannot bind.
ADAPTERS = [{"name": "refunds", "source": "hf://acme/refunds-lora-v1"}, {"name": "triage", "source": "hf://acme/triage-lora"}]


@pytest.mark.parametrize(
    ("adapters", "message"),
    [
        ([{"name": "a", "source": "pvc://x/a"}, {"name": "a", "source": "pvc://x/b"}], "adapter names must be unique"),
        ([{"name": "m", "source": "pvc://x/a"}], "an adapter's name must differ from spec.model.name"),
        ([{"name": f"a{i}", "source": "pvc://x/a"} for i in range(65)], "spec.adapters: Too many: 65: must have at most 64 items"),
        ([{"name": "a", "source": "ftp://x/a"}], "spec.adapters[0].source"),
    ],
    ids=["duplicate", "base-name", "too-many", "bad-source"],
)
def test_invalid_adapters_are_rejected_by_the_apiserver(kubectl, operator_installed, namespace, adapters, message):
    with pytest.raises(KubectlError) as rejected:
        kubectl.apply([tier("lora", namespace, adapters=adapters)])
    assert "is invalid" in rejected.value.stderr
    assert message in rejected.value.stderr


def test_repointing_an_adapter_updates_the_sidecar_config_and_restarts_no_pod(kubectl, running_operator, namespace):
    kubectl.apply([tier("lora", namespace, replicas=2, adapters=ADAPTERS)])
    ready_tier(kubectl, "lora", namespace)
    pods = {p["metadata"]["uid"] for p in tier_pods(kubectl, "lora", namespace)}
    deployment = kubectl("get", "deployment", "lora", "-n", namespace)
    engine = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "engine")
    assert engine["args"][-5:] == ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "16"]

    kubectl.run("patch", "modeltier", "lora", "-n", namespace, "--type=merge", "-p",
                json.dumps({"spec": {"adapters": [{"name": "refunds", "source": "hf://acme/refunds-lora-v2"}, ADAPTERS[1]]}}))

    def config_adapters():
        data = kubectl("get", "configmap", "lora-router", "-n", namespace)["data"]["router.json"]
        return [(a["name"], a["source"], a.get("path")) for a in json.loads(data).get("adapters", [])]

    wait_for(lambda: config_adapters()[0] == ("refunds", "hf://acme/refunds-lora-v2", "acme/refunds-lora-v2"), 60,
             "the router ConfigMap to carry the new source")
    ready_tier(kubectl, "lora", namespace)
    after = kubectl("get", "deployment", "lora", "-n", namespace)
    assert after["metadata"]["generation"] == deployment["metadata"]["generation"]
    assert {p["metadata"]["uid"] for p in tier_pods(kubectl, "lora", namespace)} == pods


def test_a_policy_rung_on_an_adapter_resolves_once_the_tier_lists_it(kubectl, namespace, running_operator):
    from e2e.helpers import condition

    policy = {
        "apiVersion": "shoal.dev/v1alpha1", "kind": "RoutePolicy", "metadata": {"name": "tasks", "namespace": namespace},
        "spec": {"tiers": [
            {"name": "refunds", "modelTierRef": {"name": "base", "adapter": "refunds"}},
            {"name": "base", "modelTierRef": {"name": "base"}},
        ]},
    }
    base = tier("base", namespace, router={"routePolicy": "tasks"})
    kubectl.apply([policy, base])

    def refs():
        return condition(kubectl("get", "routepolicy", "tasks", "-n", namespace), "ResolvedRefs") or {}

    missing = wait_for(lambda: refs().get("reason") == "AdapterNotFound" and refs(), 60, "ResolvedRefs=False AdapterNotFound")
    assert missing["message"] == (
        "spec.tiers[0] (refunds) refers to adapter 'refunds' of ModelTier 'base', which lists no such adapter in spec.adapters."
    )

    kubectl.run("patch", "modeltier", "base", "-n", namespace, "--type=merge", "-p",
                json.dumps({"spec": {"adapters": [ADAPTERS[0]]}}))
    wait_for(lambda: refs().get("reason") == "Resolved", 90, "the adapter found")

    def ladder():
        config = json.loads(kubectl("get", "configmap", "base-router", "-n", namespace)["data"]["router.json"])
        return [(t["name"], t["kind"], t["model"]) for t in config["tiers"]]

    wait_for(lambda: ladder() == [("refunds", "local", "refunds"), ("base", "local", "m")], 60, "the adapter rung in the sidecar config")
