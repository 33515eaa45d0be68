"""The routing decision, pure: request features and tier states in, tier and reason out."""

from __future__ import annotations

import pytest

from shoal.api.routepolicy import RoutePolicySpec
from shoal.router.decision import (
    Policy,
    Prediction,
    Request,
    TierState,
    decide,
    estimate_tokens,
    request_features,
)


def policy_spec(**overrides) -> RoutePolicySpec:
    spec = {
        "tiers": [
            {"name": "small", "modelTierRef": {"name": "smol"}, "aliases": ["tiny"], "maxQueueDepth": 4},
            {"name": "medium", "modelTierRef": {"name": "mid"}, "maxQueueDepth": 8},
            {
                "name": "frontier",
                "external": {
                    "url": "https://api.example.com/v1",
                    "model": "big-model",
                    "inputUSDPerMillionTokens": 2.0,
                    "outputUSDPerMillionTokens": 10.0,
                },
            },
        ],
        "rules": [
            {"name": "long-prompts", "match": {"minPromptTokens": 1000}, "tier": "medium"},
            {"name": "code", "match": {"keywords": ["Python", "stack trace"]}, "tier": "medium"},
            {"name": "proofs", "match": {"regex": [r"\bprove\b"]}, "tier": "frontier"},
            {"name": "vip", "match": {"metadata": {"customer": "vip"}}, "tier": "frontier"},
        ],
    }
    spec.update(overrides)
    return RoutePolicySpec.model_validate(spec)


POLICY = Policy.from_route_policy(policy_spec())


def always(tier: str, confidence: float):
    return lambda text: Prediction(tier, confidence)


@pytest.mark.parametrize(
    ("request_", "classify", "tier", "reason", "ladder"),
    [
        (Request(text="hello"), None, "small", "default", ("small", "medium", "frontier")),
        (Request(text="hello", header_tier="medium"), None, "medium", "explicit", ("medium", "frontier")),
        (Request(text="hello", model="tiny"), None, "small", "explicit", ("small", "medium", "frontier")),
        (Request(text="hello", model="frontier"), None, "frontier", "explicit", ("frontier",)),
        (Request(text="hello", model="some-served-model"), None, "small", "default", ("small", "medium", "frontier")),
        (Request(text="x", prompt_tokens=1000), None, "medium", "rule:long-prompts", ("medium", "frontier")),
        (Request(text="why does my PYTHON code fail"), None, "medium", "rule:code", ("medium", "frontier")),
        (Request(text="please prove that 2 is prime"), None, "frontier", "rule:proofs", ("frontier",)),
        (Request(text="improve this"), None, "small", "default", ("small", "medium", "frontier")),
        (Request(text="hi", metadata={"customer": "vip"}), None, "frontier", "rule:vip", ("frontier",)),
        (Request(text="hi", metadata={"customer": "free"}), None, "small", "default", ("small", "medium", "frontier")),
        (Request(text="hi"), always("medium", 0.9), "medium", "classifier", ("medium", "frontier")),
        (Request(text="hi"), always("small", 0.5), "medium", "classifier-low-confidence", ("medium", "frontier")),
        (Request(text="hi"), always("frontier", 0.1), "frontier", "classifier-low-confidence", ("frontier",)),
        (Request(text="hi"), always("not-a-tier", 0.99), "small", "default", ("small", "medium", "frontier")),
        # A rule wins over the classifier, explicit wins over a rule.
        (Request(text="prove it"), always("small", 0.99), "frontier", "rule:proofs", ("frontier",)),
        (Request(text="prove it", header_tier="small"), None, "small", "explicit", ("small", "medium", "frontier")),
    ],
)
def test_decision_follows_explicit_then_rules_then_classifier_then_default(request_, classify, tier, reason, ladder):
    decision = decide(POLICY, request_, classify=classify)
    assert (decision.tier, decision.reason, decision.ladder) == (tier, reason, ladder)


def test_explicit_routing_disallowed_ignores_header_and_model():
    policy = Policy.from_route_policy(policy_spec(escalation={"explicitRouting": "disallowed"}))
    decision = decide(policy, Request(text="hello", header_tier="frontier", model="medium"))
    assert (decision.tier, decision.reason) == ("small", "default")


def test_low_confidence_with_predicted_tier_policy_stays_on_prediction():
    policy = Policy.from_route_policy(
        policy_spec(escalation={"onLowConfidence": "predictedTier"}, classifier={"confidenceThreshold": 0.8})
    )
    decision = decide(policy, Request(text="hi"), classify=always("small", 0.79))
    assert (decision.tier, decision.reason) == ("small", "classifier-low-confidence")
    assert decision.predicted == Prediction("small", 0.79)


@pytest.mark.parametrize(
    ("states", "tier", "reason"),
    [
        ({"small": TierState(waiting=4)}, "small", "default"),
        ({"small": TierState(waiting=5)}, "medium", "spillover"),
        ({"small": TierState(waiting=5), "medium": TierState(waiting=9)}, "frontier", "spillover"),
        ({"small": TierState(scaled_to_zero=True)}, "medium", "spillover"),
        ({"small": TierState(waiting=None)}, "small", "default"),
        ({"medium": TierState(waiting=100)}, "small", "default"),
    ],
)
def test_spillover_moves_up_when_queue_is_over_limit_or_tier_is_asleep(states, tier, reason):
    decision = decide(POLICY, Request(text="hi"), states=states)
    assert (decision.tier, decision.reason) == (tier, reason)


def test_spillover_names_every_tier_it_skipped():
    states = {"small": TierState(scaled_to_zero=True), "medium": TierState(waiting=9)}
    assert decide(POLICY, Request(text="hi"), states=states).spilled_from == ("small", "medium")
    assert decide(POLICY, Request(text="hi"), states={}).spilled_from == ()


def test_explicit_requests_do_not_spill():
    decision = decide(POLICY, Request(text="hi", header_tier="small"), states={"small": TierState(waiting=50)})
    assert (decision.tier, decision.reason) == ("small", "explicit")


def test_exhausted_hourly_budget_removes_external_tiers():
    decision = decide(POLICY, Request(text="hi"), external_budget_exhausted=True)
    assert decision.ladder == ("small", "medium")


@pytest.mark.parametrize(
    ("on_exceeded", "tier", "reason", "ladder"),
    [("stayOnCluster", "medium", "budget", ("medium",)), ("reject", None, "budget", ())],
)
def test_budget_exhausted_on_an_external_only_route(on_exceeded, tier, reason, ladder):
    policy = Policy.from_route_policy(policy_spec(budgets={"onExceeded": on_exceeded}))
    decision = decide(policy, Request(text="prove it"), external_budget_exhausted=True)
    assert (decision.tier, decision.reason, decision.ladder) == (tier, reason, ladder)


def test_per_request_budget_skips_tiers_whose_estimate_is_too_high():
    # frontier: 1000 prompt tokens * 2e-6 + 100 output tokens * 1e-5 = 0.003 USD.
    policy = Policy.from_route_policy(policy_spec(budgets={"maxUSDPerRequest": 0.0029}))
    decision = decide(policy, Request(text="x", prompt_tokens=1000, max_output_tokens=100))
    assert decision.ladder == ("medium",)
    cheap = Policy.from_route_policy(policy_spec(budgets={"maxUSDPerRequest": 0.003}))
    assert decide(cheap, Request(text="x", prompt_tokens=1000, max_output_tokens=100)).ladder == ("medium", "frontier")


def test_request_features_of_a_chat_body():
    body = {
        "model": "tiny",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": "question"}]},
        ],
        "max_tokens": 64,
        "metadata": {"customer": "vip", "team": "a"},
    }
    features = request_features(body, header_tier="medium", header_metadata={"team": "b"})
    assert features.text == "second\nquestion"
    assert features.prompt_tokens == estimate_tokens(len("be brief") + len("first question") + len("answer") + len("second\nquestion"))
    assert features.model == "tiny"
    assert features.header_tier == "medium"
    assert dict(features.metadata) == {"customer": "vip", "team": "b"}
    assert features.max_output_tokens == 64


def test_request_features_of_completions_and_embeddings_bodies():
    assert request_features({"model": "m", "prompt": "abcdefgh"}).text == "abcdefgh"
    assert request_features({"model": "m", "prompt": "abcdefgh"}).prompt_tokens == 2
    assert request_features({"model": "m", "input": ["a", "b"]}).text == "a\nb"
    assert request_features({"model": 3, "prompt": 7}).model is None
