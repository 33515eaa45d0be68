"""Which watch events queue which reconciles: live state never re-renders peers' ConfigMaps."""

from __future__ import annotations

import json

from shoal.api.naming import KEPT_OUTCOMES_KEY
from shoal.controller.triggers import Triggers
from shoal.kube.view import pack

from .fakes import policy_body, put, tier_body, view_of


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


def with_jobs(triggers, **jobs_by_tier):
    """File evaluation Jobs in the view, as the Job watch would: tier -> Job names."""
    for tier, names in jobs_by_tier.items():
        triggers.view.eval_jobs[("llm", tier)] = [pack({"metadata": {"name": n, "namespace": "llm"}}) for n in names]


def learning_setup():
    """A ladder small < medium < large learning from user model `router-model`, served by
    the tiers of another policy (`front`), so that no tier is queued for serving it."""
    triggers, queued, forgotten, _, _ = setup()
    ladder = policy_body("learning", ["small", "medium", "large"])
    ladder["spec"]["classifier"] = {"mode": "enabled", "configMapRef": {"name": "router-model", "key": "model.json"}}
    medium = tier_body("medium")
    put(triggers.view, ladder)
    put(triggers.view, medium)
    triggers.policy_event(None, ladder)
    queued.clear()
    return triggers, queued, ladder


def test_a_policy_that_stops_learning_queues_the_tiers_of_its_ladder_that_have_evaluation_jobs():
    triggers, queued, ladder = learning_setup()
    with_jobs(triggers, small=["small-eval-1"], medium=[])
    disabled = json.loads(json.dumps(ladder))
    disabled["metadata"]["generation"] = 2
    disabled["spec"]["classifier"]["learnFromEvaluations"] = "disabled"
    triggers.policy_event("MODIFIED", disabled)
    assert queued == [("RoutePolicy", "llm", "learning"), ("ModelTier", "llm", "small")]


def test_a_deleted_policy_queues_its_ladders_tiers_with_evaluation_jobs_from_the_event_body():
    triggers, queued, ladder = learning_setup()
    with_jobs(triggers, small=["small-eval-1"], large=["large-eval-3"])
    del triggers.view.policies[("llm", "learning")]  # the view has dropped it
    triggers.policy_event("DELETED", ladder)
    assert queued == [("ModelTier", "llm", "large"), ("ModelTier", "llm", "small")]


def test_a_rung_removed_from_the_ladder_still_queues_its_tier():
    triggers, queued, ladder = learning_setup()
    with_jobs(triggers, small=["small-eval-1"], medium=["medium-eval-2"])
    shorter = json.loads(json.dumps(ladder))
    shorter["metadata"]["generation"] = 2
    shorter["spec"]["tiers"] = [r for r in shorter["spec"]["tiers"] if r["name"] != "small"]
    triggers.policy_event("MODIFIED", shorter)
    assert queued == [("RoutePolicy", "llm", "learning"), ("ModelTier", "llm", "medium"), ("ModelTier", "llm", "small")]
    queued.clear()
    # The next change no longer names small: it is not the ladder's any more.
    triggers.policy_event("MODIFIED", {**shorter, "metadata": {**shorter["metadata"], "generation": 3}})
    assert queued == [("RoutePolicy", "llm", "learning"), ("ModelTier", "llm", "medium")]


def test_a_policy_status_change_queues_no_tier_of_its_ladder():
    triggers, queued, ladder = learning_setup()
    with_jobs(triggers, small=["small-eval-1"])
    triggers.policy_event("MODIFIED", {**ladder, "status": {"observedGeneration": 1}})
    assert queued == [("RoutePolicy", "llm", "learning")]


def test_the_user_model_config_map_queues_its_policy_and_the_ladder_tiers_with_evaluation_jobs():
    triggers, queued, _ = learning_setup()
    with_jobs(triggers, medium=["medium-eval-2"])
    triggers.config_map_event({"metadata": {"namespace": "llm", "name": "router-model", "labels": {}}})
    assert queued == [("RoutePolicy", "llm", "learning"), ("ModelTier", "llm", "medium")]


def classifier_config_map(*jobs):
    kept = [{"modelTier": "t", "job": j, "promoted": True} for j in jobs]
    return {
        "metadata": {"namespace": "llm", "name": "learning-classifier", "labels": {"shoal.dev/route-policy": "learning"}},
        "data": {KEPT_OUTCOMES_KEY: json.dumps(kept)},
    }


def test_a_policys_learned_classifier_config_map_queues_only_the_tiers_whose_jobs_it_keeps():
    triggers, queued, _ = learning_setup()
    with_jobs(triggers, small=["small-eval-1"], medium=["medium-eval-2"], large=["large-eval-3"])
    triggers.config_map_event(classifier_config_map("small-eval-1", "gone-eval-0"))
    assert queued == [("RoutePolicy", "llm", "learning"), ("ModelTier", "llm", "small")]
    queued.clear()
    triggers.config_map_event(classifier_config_map())
    assert queued == [("RoutePolicy", "llm", "learning")]
    queued.clear()
    labels = {"shoal.dev/route-policy": "learning"}
    triggers.config_map_event({"metadata": {"namespace": "llm", "name": "learning-entry", "labels": labels}})
    assert queued == [("RoutePolicy", "llm", "learning")]
