"""The cascade through the real sidecar: the small tier answers first, a verifier rejects,
the request climbs (fake engines on loopback)."""

from __future__ import annotations

import json

import pytest

from shoal.router.cascade import answer_text, requested_schema

from .conftest import ladder_config
from .test_router_serving import client_for

ASK = [{"role": "user", "content": "How many legs do three spiders have?"}]


def test_a_refusal_climbs_to_the_next_tier_and_a_good_answer_stays(fresh_engines, start_router, tmp_path):
    cascade = {"tiers": ["small"], "verifiers": ["refusal", "arithmetic"]}
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], cascade=cascade))
    client = client_for(router)

    fresh_engines["small"].configure(reply="I'm not sure I can answer that.")
    raw = client.chat.completions.with_raw_response.create(model="x", messages=ASK)
    assert raw.headers["x-shoal-tier"] == "medium"
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "refusal"}) == 1.0
    assert router.metric("shoal_fallbacks_total", {"tier": "small", "cause": "rejected"}) == 1.0
    assert router.metric("shoal_cascade_rejected_cost_usd_total", {"tier": "small"}) > 0

    fresh_engines["small"].configure(reply="3 * 8 = 24 legs.")
    raw = client.chat.completions.with_raw_response.create(model="x", messages=ASK)
    assert raw.headers["x-shoal-tier"] == "small"
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "accepted"}) == 1.0

    fresh_engines["small"].configure(reply="3 * 8 = 26 legs.")
    raw = client.chat.completions.with_raw_response.create(model="x", messages=ASK)
    assert raw.headers["x-shoal-tier"] == "medium"
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "arithmetic"}) == 1.0

    # With the default streaming (passThrough) a stream is never verified: its bytes go to
    # the client as they come.
    fresh_engines["small"].configure(reply="I'm not sure")
    raw = client.chat.completions.with_raw_response.create(model="x", messages=ASK, stream=True)
    assert raw.headers["x-shoal-tier"] == "small"
    list(raw.parse())
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "refusal"}) == 1.0


def test_json_schema_from_the_request_is_enforced(fresh_engines, start_router, tmp_path):
    cascade = {"tiers": ["small"], "verifiers": ["jsonSchema"]}
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], cascade=cascade))
    client = client_for(router)
    schema = {"type": "object", "properties": {"legs": {"type": "integer"}}, "required": ["legs"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "legs", "schema": schema}}
    fresh_engines["small"].configure(reply='{"legs": "many"}')
    raw = client.chat.completions.with_raw_response.create(model="x", messages=ASK, response_format=fmt)
    assert raw.headers["x-shoal-tier"] == "medium"
    fresh_engines["small"].configure(reply='{"legs": 24}')
    raw = client.chat.completions.with_raw_response.create(model="x", messages=ASK, response_format=fmt)
    assert raw.headers["x-shoal-tier"] == "small"
    # No response_format: nothing to check against.
    fresh_engines["small"].configure(reply="twenty-four")
    assert client.chat.completions.with_raw_response.create(model="x", messages=ASK).headers["x-shoal-tier"] == "small"


def test_answer_text_and_requested_schema():
    assert answer_text(json.dumps({"choices": [{"message": {"content": "hi"}}]}).encode()) == "hi"
    assert answer_text(json.dumps({"choices": [{"text": "hello"}]}).encode()) == "hello"
    assert answer_text(b"not json") is None
    assert answer_text(json.dumps({"choices": [{"message": {"tool_calls": []}}]}).encode()) is None
    assert requested_schema({"response_format": {"type": "json_object"}}) == {}
    assert requested_schema({"response_format": {"type": "text"}}) is None
    assert requested_schema({}) is None


@pytest.mark.parametrize(
    ("cascade", "message"),
    [
        ({"tiers": ["frontier"], "verifiers": ["refusal"]}, "cascade.tiers[0]: 'frontier' is not a tier below the largest"),
        ({"tiers": ["small"], "verifiers": ["regex"]}, "cascade.regex is required with the regex verifier"),
        ({"tiers": ["small"], "verifiers": ["regex"], "regex": "(("}, "cascade.regex does not compile"),
        ({"tiers": ["small"], "verifiers": ["logprobs"]}, "cascade.minLogprob or cascade.meanLogprob is required"),
        ({"tiers": ["small"], "verifiers": ["magic"]}, "spec.cascade.verifiers.0"),
    ],
)
def test_a_cascade_that_cannot_work_is_refused_naming_the_field(policy_body, cascade, message):
    import copy

    from pydantic import ValidationError

    from shoal.api.routepolicy import RoutePolicy

    body = copy.deepcopy(policy_body)
    body["spec"]["cascade"] = cascade
    with pytest.raises(ValidationError) as info:
        RoutePolicy.from_body(body)
    assert message in str(info.value)


def test_the_rendered_router_config_carries_the_cascade_of_tiers_on_the_ladder():
    from shoal.api.routepolicy import CascadeSpec
    from shoal.render.routerconfig import render_router_config

    from .test_render_routerconfig import POLICY, TIERS

    policy = POLICY.model_copy(deep=True)
    policy.spec.cascade = CascadeSpec(tiers=["small"], verifiers=["refusal", "trained"], trained_min_gain=0.2, streaming="buffer")
    config = render_router_config(TIERS["smol"], policy, TIERS, "ml")
    assert config["cascade"] == {"tiers": ["small"], "verifiers": ["refusal", "trained"], "trainedMinGain": 0.2, "streaming": "buffer"}
