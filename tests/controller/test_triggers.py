"""Which watch events queue which reconciles: live state never re-renders peers' ConfigMaps."""

from __future__ import annotations

from shoal.controller.triggers import Triggers

from .fakes import policy_body, tier_body, view_of


def setup():
    small = tier_body("small", router={"routePolicy": "ladder"})
    large = tier_body("large", router={"routePolicy": "ladder"})
    lone = tier_body("lone")
    policy = policy_body("ladder", ["small", "large"])
    view = view_of(small, large, lone, policy)
    queued: list[tuple[str, str, str]] = []
    forgotten: list[tuple[str, str]] = []
    triggers = Triggers(view, queued.append, lambda ns, n: forgotten.append((ns, n)))
    for body in (small, large, lone):
        triggers.tier_event(None, body)  # the initial listing
    triggers.policy_event(None, policy)
    queued.clear()
    return triggers, queued, forgotten, small, policy


def test_a_tier_status_change_queues_the_tier_and_its_policy_but_no_peer():
    triggers, queued, _, small, _ = setup()
    woke = {**small, "status": {"readyReplicas": 1, "servingCheckpoint": "hf://org/model@v2"}}
    triggers.tier_event("MODIFIED", woke)
    assert queued == [("ModelTier", "llm", "small"), ("RoutePolicy", "llm", "ladder")]


def test_a_tier_spec_change_also_queues_the_peers_that_render_it():
    triggers, queued, _, small, _ = setup()
    changed = {**small, "metadata": {**small["metadata"], "generation": 2}}
    triggers.tier_event("MODIFIED", changed)
    assert queued == [("ModelTier", "llm", "small"), ("RoutePolicy", "llm", "ladder"), ("ModelTier", "llm", "large")]


def test_a_policy_spec_change_queues_every_tier_serving_it_and_a_status_change_none():
    triggers, queued, _, _, policy = setup()
    triggers.policy_event("MODIFIED", {**policy, "status": {"observedGeneration": 1}})
    assert queued == [("RoutePolicy", "llm", "ladder")]
    queued.clear()
    triggers.policy_event("MODIFIED", {**policy, "metadata": {**policy["metadata"], "generation": 2}})
    assert queued == [("RoutePolicy", "llm", "ladder"), ("ModelTier", "llm", "large"), ("ModelTier", "llm", "small")]


def test_children_queue_their_owner_and_a_deleted_tier_is_forgotten():
    triggers, queued, forgotten, small, _ = setup()
    triggers.child_event({"metadata": {"namespace": "llm", "labels": {"shoal.dev/tier": "small"}}})
    triggers.child_event({"metadata": {"namespace": "llm", "labels": {"shoal.dev/route-policy": "ladder"}}})
    assert queued == [("ModelTier", "llm", "small"), ("RoutePolicy", "llm", "ladder")]
    queued.clear()
    triggers.tier_event("DELETED", small)
    assert forgotten == [("llm", "small")]
    assert ("ModelTier", "llm", "small") not in queued


def test_someone_elses_config_map_queues_only_objects_whose_references_did_not_resolve():
    triggers, queued, _, _, _ = setup()
    triggers.view.tiers[("llm", "lone")][0]["status"] = {"conditions": [{"type": "ResolvedRefs", "status": "False"}]}  # type: ignore[index]
    triggers.config_map_event({"metadata": {"namespace": "llm", "name": "dataset", "labels": {}}})
    assert queued == [("ModelTier", "llm", "lone")]


def test_the_config_map_of_a_policys_classifier_model_queues_that_policy():
    triggers, queued, _, _, _ = setup()
    policy = triggers.view.policies[("llm", "ladder")][0]  # type: ignore[index]
    policy["spec"]["classifier"] = {"mode": "enabled", "configMapRef": {"name": "router-model", "key": "model.json"}}
    triggers.config_map_event({"metadata": {"namespace": "llm", "name": "router-model", "labels": {}}})
    assert queued == [("RoutePolicy", "llm", "ladder")]
    queued.clear()
    triggers.config_map_event({"metadata": {"namespace": "llm", "name": "dataset", "labels": {}}})
    assert queued == []


def test_a_policys_learned_classifier_config_map_queues_the_policy_and_the_tiers_of_its_ladder():
    triggers, queued, _, _, _ = setup()
    labels = {"shoal.dev/route-policy": "ladder"}
    triggers.config_map_event({"metadata": {"namespace": "llm", "name": "ladder-classifier", "labels": labels}})
    assert queued == [("RoutePolicy", "llm", "ladder"), ("ModelTier", "llm", "small"), ("ModelTier", "llm", "large")]
    queued.clear()
    triggers.config_map_event({"metadata": {"namespace": "llm", "name": "ladder-entry", "labels": labels}})
    assert queued == [("RoutePolicy", "llm", "ladder")]
