"""RoutePolicy against the real control plane: references, entry Service, sidecar config."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from .helpers import condition, wait_for

pytestmark = pytest.mark.e2e


def tier(name: str, routePolicy: str) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "ModelTier",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": f"{name}-model", "source": f"hf://org/{name}"},
            "resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}, "cpu": "1", "memory": "2Gi"},
            "router": {"routePolicy": routePolicy},
        },
    }


POLICY = {
    "apiVersion": "shoal.dev/v1alpha1",
    "kind": "RoutePolicy",
    "metadata": {"name": "ladder"},
    "spec": {
        "tiers": [
            {"name": "small", "modelTierRef": {"name": "small"}},
            {"name": "large", "modelTierRef": {"name": "large"}},
            {
                "name": "frontier",
                "external": {
                    "url": "https://frontier.example/v1",
                    "model": "big",
                    "apiKeySecretRef": {"name": "frontier-key", "key": "api-key"},
                    "inputUSDPerMillionTokens": 3,
                    "outputUSDPerMillionTokens": 15,
                },
            },
        ]
    },
}


def apply(kubectl: Any, namespace: str, *objects: dict[str, Any]) -> None:
    kubectl.run("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def policy(kubectl: Any, namespace: str) -> dict[str, Any]:
    return kubectl("get", "routepolicy", "ladder", "-n", namespace)


def test_policy_reports_missing_refs_then_resolves_and_configures_the_sidecars(kubectl, namespace, running_operator):
    apply(kubectl, namespace, POLICY, tier("small", "ladder"))

    def unresolved() -> dict[str, Any] | None:
        refs = condition(policy(kubectl, namespace), "ResolvedRefs")
        return refs if refs and refs["status"] == "False" else None

    refs = wait_for(unresolved, 60, "ResolvedRefs=False on the policy")
    assert refs["reason"] == "ModelTierNotFound"
    assert "spec.tiers[1] (large) refers to ModelTier 'large', which does not exist" in refs["message"]
    assert "spec.tiers[2] (frontier) refers to Secret 'frontier-key', which does not exist" in refs["message"]
    assert condition(policy(kubectl, namespace), "Ready")["status"] == "False"

    # The missing objects appear: the policy resolves without anyone touching it. The
    # Secret comes last, and nothing about the policy or its tiers changes when it does.
    apply(kubectl, namespace, tier("large", "ladder"))
    wait_for(lambda: "refers to ModelTier" not in (unresolved() or {}).get("message", "refers to ModelTier"), 60, "the large tier found")
    kubectl.run("create", "secret", "generic", "frontier-key", "-n", namespace, "--from-literal=api-key=sk-test-not-real")
    ready = wait_for(
        lambda: (p := policy(kubectl, namespace)) and (condition(p, "Ready") or {}).get("status") == "True" and p,
        90, "the policy Ready once the tier and the Secret exist",
    )
    assert ready["status"]["endpoint"] == f"http://ladder-route.{namespace}.svc/v1"
    assert condition(ready, "ResolvedRefs")["reason"] == "Resolved"

    entry = kubectl("get", "service", "ladder-route", "-n", namespace)
    assert entry["spec"]["selector"] == {"app.kubernetes.io/name": "modeltier", "app.kubernetes.io/component": "inference", "shoal.dev/tier": "small"}
    assert entry["metadata"]["ownerReferences"][0]["kind"] == "RoutePolicy"

    def ladder() -> list[str] | None:
        data = kubectl("get", "configmap", "small-router", "-n", namespace)["data"]["router.json"]
        names = [t["name"] for t in json.loads(data)["tiers"]]
        return names if names == ["small", "large", "frontier"] else None

    wait_for(ladder, 60, "the small tier's sidecar config carrying the whole ladder")
    config = json.loads(kubectl("get", "configmap", "small-router", "-n", namespace)["data"]["router.json"])
    assert config["tiers"][1]["url"] == f"http://large.{namespace}.svc/v1"
    assert config["tiers"][2]["apiKeyFile"] == "/var/run/shoal/secrets/frontier-key/api-key"
    raw = json.dumps(config) + json.dumps(ready)
    assert "sk-test-not-real" not in raw

    deployment = kubectl("get", "deployment", "small", "-n", namespace)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secret-frontier-key"]["secret"]["secretName"] == "frontier-key"


def test_tier_naming_a_missing_policy_is_not_ready_and_says_so(kubectl, namespace, running_operator):
    apply(kubectl, namespace, tier("orphan", "no-such-policy"))

    def refs() -> dict[str, Any] | None:
        cond = condition(kubectl("get", "modeltier", "orphan", "-n", namespace), "ResolvedRefs")
        return cond if cond and cond["status"] == "False" else None

    cond = wait_for(refs, 60, "ResolvedRefs=False on the tier")
    assert cond["reason"] == "RoutePolicyNotFound"
    assert cond["message"] == f"spec.router.routePolicy refers to RoutePolicy 'no-such-policy', which does not exist in namespace '{namespace}'."
    ready = wait_for(
        lambda: (c := condition(kubectl("get", "modeltier", "orphan", "-n", namespace), "Ready")) and c["reason"] == "RoutePolicyNotFound" and c,
        60, "Ready=False RoutePolicyNotFound",
    )
    assert ready["status"] == "False"
    # Not a crash loop: the operator is still the same process.
    assert running_operator.pid is not None


def test_policy_the_schema_accepts_but_cannot_work_gets_a_condition_not_a_crash_loop(kubectl, namespace, running_operator):
    broken = {
        **POLICY,
        "spec": {**POLICY["spec"], "rules": [{"name": "code", "match": {"regex": ["(unclosed"]}, "tier": "large"}]},
    }
    apply(kubectl, namespace, broken)

    def invalid() -> dict[str, Any] | None:
        cond = condition(policy(kubectl, namespace), "Ready")
        return cond if cond and cond["reason"] == "InvalidSpec" else None

    cond = wait_for(invalid, 60, "Ready=False InvalidSpec on a policy whose regex does not compile")
    assert cond["status"] == "False"
    assert "spec.rules.0.match.regex" in cond["message"]
    assert "does not compile" in cond["message"]
    events = kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.name=ladder,reason=InvalidSpec")["items"]
    assert len(events) == 1
    pid = running_operator.pid
    assert pid is not None
    # Fixing the spec clears it.
    apply(kubectl, namespace, POLICY)
    wait_for(lambda: (condition(policy(kubectl, namespace), "Ready") or {}).get("reason") != "InvalidSpec", 60, "the condition cleared")
    assert running_operator.pid == pid
