"""RoutePolicy status from what exists in its namespace."""

from __future__ import annotations

from datetime import datetime, timezone

from shoal.api.routepolicy import RoutePolicy
from shoal.plan.conditions import status_merge_patch
from shoal.plan.policy import PolicyObservation, policy_status

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_policy_with_everything_present_is_ready(policy_body):
    policy = RoutePolicy.from_body(policy_body)
    observed = PolicyObservation(model_tiers=frozenset({"small", "large"}), secrets={"frontier-api": frozenset({"api-key"})})
    status = policy_status(policy, observed, NOW, None)
    assert status["endpoint"] == "http://support-route.llm.svc/v1"
    assert status["observedGeneration"] == 2
    assert cond(status, "Ready")["status"] == "True"
    assert cond(status, "Ready")["message"] == "Routing across 3 tiers; requests enter at small."
    assert cond(status, "ResolvedRefs")["reason"] == "Resolved"


def test_missing_model_tier_and_secret_are_named(policy_body):
    policy = RoutePolicy.from_body(policy_body)
    status = policy_status(policy, PolicyObservation(model_tiers=frozenset({"small"})), NOW, None)
    refs = cond(status, "ResolvedRefs")
    assert refs["status"] == "False"
    assert refs["reason"] == "ModelTierNotFound"
    assert refs["message"] == (
        "spec.tiers[1] (large) refers to ModelTier 'large', which does not exist in namespace 'llm'; "
        "spec.tiers[2] (frontier) refers to Secret 'frontier-api', which does not exist in namespace 'llm'."
    )
    assert cond(status, "Ready")["status"] == "False"


def test_secret_without_the_key_is_named(policy_body):
    policy = RoutePolicy.from_body(policy_body)
    observed = PolicyObservation(model_tiers=frozenset({"small", "large"}), secrets={"frontier-api": frozenset({"token"})})
    refs = cond(policy_status(policy, observed, NOW, None), "ResolvedRefs")
    assert refs["reason"] == "SecretNotFound"
    assert "refers to key 'api-key' of Secret 'frontier-api', which has no such key" in refs["message"]


def test_same_observation_twice_patches_nothing(policy_body):
    policy = RoutePolicy.from_body(policy_body)
    observed = PolicyObservation(model_tiers=frozenset({"small", "large"}), secrets={"frontier-api": frozenset({"api-key"})})
    first = policy_status(policy, observed, NOW, None)
    assert status_merge_patch(policy_status(policy, observed, NOW, first), first) is None


def test_entry_service_follows_the_first_tier_with_ready_pods(policy_body):
    from shoal.plan.policy import entry_model_tier

    policy = RoutePolicy.from_body(policy_body)
    both = PolicyObservation(model_tiers=frozenset({"small", "large"}), ready_replicas={"small": 2, "large": 1})
    assert entry_model_tier(policy, both) == "small"
    asleep = PolicyObservation(model_tiers=frozenset({"small", "large"}), ready_replicas={"small": 0, "large": 1})
    assert entry_model_tier(policy, asleep) == "large"
    status = policy_status(policy, PolicyObservation(model_tiers=asleep.model_tiers, ready_replicas=asleep.ready_replicas, secrets={"frontier-api": frozenset({"api-key"})}), NOW, None)
    assert cond(status, "Ready")["message"] == (
        "Routing across 3 tiers; requests enter at small (through ModelTier large while small has no ready pod)."
    )
    nothing = PolicyObservation(model_tiers=frozenset({"small", "large"}))
    assert entry_model_tier(policy, nothing) == "small"


def test_a_rung_naming_an_adapter_its_tier_does_not_list_is_named(policy_body):
    policy_body["spec"]["tiers"][0]["modelTierRef"] = {"name": "small", "adapter": "refunds"}
    policy = RoutePolicy.from_body(policy_body)
    observed = PolicyObservation(
        model_tiers=frozenset({"small", "large"}), secrets={"frontier-api": frozenset({"api-key"})},
        adapters={"small": frozenset({"triage"}), "large": frozenset()},
    )
    refs = cond(policy_status(policy, observed, NOW, None), "ResolvedRefs")
    assert (refs["status"], refs["reason"]) == ("False", "AdapterNotFound")
    assert refs["message"] == (
        "spec.tiers[0] (small) refers to adapter 'refunds' of ModelTier 'small', which lists no such adapter in spec.adapters."
    )
    observed = PolicyObservation(
        model_tiers=frozenset({"small", "large"}), secrets={"frontier-api": frozenset({"api-key"})},
        adapters={"small": frozenset({"refunds"})},
    )
    assert cond(policy_status(policy, observed, NOW, None), "ResolvedRefs")["reason"] == "Resolved"
