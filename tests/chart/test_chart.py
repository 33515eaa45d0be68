"""The Helm chart lints, renders, and every object it renders is valid Kubernetes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shoal.cli import render_documents, _read_documents
from shoal.devcluster.tools import ensure_tools

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "shoal"
K8S_VERSION = "1.34.0"


@pytest.fixture(scope="module")
def helm() -> str:
    return str(ensure_tools().helm)


def template(helm: str, *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [helm, "template", "shoal", str(CHART), "--namespace", "shoal-system", *args],
        check=True, capture_output=True, text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_helm_lint_passes(helm):
    result = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_default_render_is_valid_kubernetes(helm):
    objects = template(helm)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    for obj in objects:
        validate(obj)


def test_operator_runs_once_with_recreate_and_restricted_security(helm):
    dep = next(o for o in template(helm) if o["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "shoal"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    assert container["args"] == ["run"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SHOAL_NAMESPACES"] == ""


def test_rbac_grants_only_what_the_controller_uses(helm):
    role = next(o for o in template(helm) if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "shoal")
    grants = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert grants[("", "secrets")] == {"get"}
    assert grants[("", "pods")] == {"get", "list", "watch"}
    assert grants[("apps", "deployments")] == {"get", "list", "watch", "create", "patch"}
    assert grants[("shoal.dev", "modeltiers/status")] == {"get", "patch"}
    # The operator writes only the status of its own kinds (no kopf annotations).
    assert grants[("shoal.dev", "modeltiers")] == {"get", "list", "watch"}
    assert grants[("", "events")] == {"create"}
    # Only superseded evaluation Jobs are ever deleted.
    assert [key for key, verbs in grants.items() if "delete" in verbs] == [("batch", "jobs")]
    for verbs in grants.values():
        assert "*" not in verbs and "update" not in verbs
    assert all("*" not in rule["resources"] for rule in role["rules"])


def test_watch_namespaces_turns_cluster_role_into_roles(helm):
    objects = template(helm, "--set", "watchNamespaces={team-a,team-b}")
    roles = sorted((o["kind"], o["metadata"].get("namespace", "")) for o in objects if o["kind"] in ("Role", "RoleBinding"))
    assert roles == [("Role", "team-a"), ("Role", "team-b"), ("RoleBinding", "team-a"), ("RoleBinding", "team-b")]
    cluster_roles = [o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRole"]
    assert cluster_roles == ["shoal-crd-reader"]
    env = {e["name"]: e["value"] for e in next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SHOAL_NAMESPACES"] == "team-a,team-b"
    for obj in objects:
        validate(obj)


def test_values_schema_rejects_a_bad_log_format(helm):
    result = subprocess.run(
        [helm, "template", "shoal", str(CHART), "--set", "logFormat=xml"], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "logFormat" in result.stderr


def test_chart_ships_the_generated_crds():
    names = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert names == ["shoal.dev_modeltiers.yaml", "shoal.dev_routepolicies.yaml"]


def test_every_manifest_shoal_renders_for_the_examples_is_valid_kubernetes():
    manifests = render_documents(_read_documents([str(ROOT / "examples")]), "default")
    # Three tiers (small, large, the adapters example's tasks) with a ConfigMap, Deployment,
    # Service and PDB each, and the support policy's entry Service.
    assert sorted((m["kind"], m["metadata"]["name"]) for m in manifests if m["kind"] != "PodDisruptionBudget") == [
        ("ConfigMap", "large-router"), ("ConfigMap", "small-router"), ("ConfigMap", "tasks-router"),
        ("Deployment", "large"), ("Deployment", "small"), ("Deployment", "tasks"),
        ("Service", "large"), ("Service", "small"), ("Service", "support-route"), ("Service", "tasks"),
    ]
    assert len(manifests) == 13
    for obj in manifests:
        validate(obj)
    # The ConfigMap's payload is JSON the router parses.
    config = next(m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == "small-router")
    assert json.loads(config["data"]["router.json"])["localTier"] == "small"


def test_prometheus_rule_is_off_by_default_and_alerts_on_drift_when_enabled(helm):
    assert not [o for o in template(helm) if o["kind"] == "PrometheusRule"]
    objects = template(helm, "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.prometheusRule.labels.release=kps")
    rule = next(o for o in objects if o["kind"] == "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert sorted(alerts) == ["ShoalShadowBudgetExhausted", "ShoalShadowReferenceFailing", "ShoalTierDrifting"]
    assert alerts["ShoalTierDrifting"]["expr"] == "max by (namespace, modeltier) (shoal_modeltier_drifting) == 1"
    assert "{{ $labels.modeltier }}" in alerts["ShoalTierDrifting"]["annotations"]["summary"]
    assert "> 0.5" in alerts["ShoalShadowReferenceFailing"]["expr"]
    assert alerts["ShoalShadowBudgetExhausted"]["for"] == "15m"


def test_values_schema_rejects_a_reference_error_ratio_above_one(helm):
    result = subprocess.run(
        [helm, "template", "shoal", str(CHART), "--set", "metrics.prometheusRule.referenceErrorRatio=2"],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "referenceErrorRatio" in result.stderr
