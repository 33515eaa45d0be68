"""The learned classifier's ConfigMap and how a tier's pods mount it."""

from __future__ import annotations

import json

from shoal.api.modeltier import ModelTier
from shoal.api.routepolicy import RoutePolicy
from shoal.render.classifier import render_learned_classifier
from shoal.render.tier import render_tier


def _with_classifier(policy_body, **extra):
    policy_body["spec"]["classifier"] = {"mode": "enabled", "configMapRef": {"name": "router-model", "key": "model.json"}, **extra}
    return RoutePolicy.from_body(policy_body)


def _pod(manifests):
    return manifests[1]["spec"]["template"]["spec"]


def test_a_learning_policy_mounts_the_users_model_and_the_optional_learned_one_in_one_volume(small_tier_body, policy_body):
    small = ModelTier.from_body(small_tier_body)
    manifests = render_tier(small, replicas=1, checkpoint="hf://a/b", policy=_with_classifier(policy_body), peers={"small": small})
    volume = next(v for v in _pod(manifests)["volumes"] if v["name"] == "classifier")
    assert volume == {"name": "classifier", "projected": {"sources": [
        {"configMap": {"name": "router-model"}},
        {"configMap": {"name": "support-classifier", "optional": True, "items": [{"key": "model.json", "path": "learned/model.json"}]}},
    ]}}
    router = next(c for c in _pod(manifests)["containers"] if c["name"] == "router")
    assert {"name": "classifier", "mountPath": "/etc/shoal/classifier", "readOnly": True} in router["volumeMounts"]
    config = json.loads(manifests[0]["data"]["router.json"])
    assert config["classifier"]["path"] == "/etc/shoal/classifier/model.json"
    assert config["classifier"]["learnedPath"] == "/etc/shoal/classifier/learned/model.json"


def test_an_opted_out_policy_mounts_the_users_model_alone_as_before(small_tier_body, policy_body):
    small = ModelTier.from_body(small_tier_body)
    policy = _with_classifier(policy_body, learnFromEvaluations="disabled")
    manifests = render_tier(small, replicas=1, checkpoint="hf://a/b", policy=policy, peers={"small": small})
    volume = next(v for v in _pod(manifests)["volumes"] if v["name"] == "classifier")
    assert volume == {"name": "classifier", "configMap": {"name": "router-model"}}
    assert "learnedPath" not in json.loads(manifests[0]["data"]["router.json"])["classifier"]


def test_the_learned_config_map_is_owned_by_the_policy_and_carries_the_status_facts(policy_body):
    policy = _with_classifier(policy_body)
    cm = render_learned_classifier(
        policy, base="router-model/model.json@7", model='{"format":"x"}', kept=[{"modelTier": "small", "job": "j"}],
        learned_from={"modelTier": "small"}, learned_at="2026-11-29T23:00:00Z", message="Recalibrated.",
    )
    assert cm["metadata"]["name"] == "support-classifier" and cm["metadata"]["namespace"] == "llm"
    assert cm["metadata"]["ownerReferences"][0]["kind"] == "RoutePolicy"
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "shoal"
    assert cm["metadata"]["labels"]["shoal.dev/route-policy"] == "support"
    assert cm["metadata"]["annotations"] == {
        "shoal.dev/classifier-base": "router-model/model.json@7", "shoal.dev/learning-message": "Recalibrated.",
        "shoal.dev/learned-from": '{"modelTier":"small"}', "shoal.dev/learned-at": "2026-11-29T23:00:00Z",
    }
    assert cm["data"] == {"evaluations.json": '[{"modelTier":"small","job":"j"}]', "model.json": '{"format":"x"}'}
