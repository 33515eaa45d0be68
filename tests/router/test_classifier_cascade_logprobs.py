"""The cascade's logprobs verifier reads the engine's own log-probabilities: the router asks
the engine for them when the client did not, and the client gets the answer it would have
got without them (fake engines on loopback)."""

from __future__ import annotations

import json
import re

import httpx

from .conftest import ladder_config

ASK = [{"role": "user", "content": "How many legs do three spiders have?"}]
CASCADE = {"tiers": ["small"], "verifiers": ["logprobs"], "meanLogprob": -1.0}
# What differs between two answers of the fake engine to the same request.
_VOLATILE = re.compile(rb'"(id|created)": ("[^"]*"|\d+)')


def same_but_id(body: bytes) -> bytes:
    return _VOLATILE.sub(rb'"\1": _', body)


def test_a_confident_answer_is_accepted_and_the_client_gets_the_bytes_it_would_have_got(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], cascade=CASCADE))
    small = fresh_engines["small"]
    small.configure(reply="Three spiders have 24 legs.", token_logprob=-0.25)
    request = {"model": "smol-chat", "messages": ASK, "temperature": 0}

    status, headers, body = router.post("/v1/chat/completions", request)
    assert status == 200 and headers["x-shoal-tier"] == "small"
    assert small.stats()["last_body"]["logprobs"] is True  # the router asked the engine
    assert json.loads(body)["choices"][0]["logprobs"] is None
    direct = httpx.post(f"{small.base_url}/chat/completions", json=request, timeout=10).content
    assert same_but_id(body) == same_but_id(direct)
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "accepted"}) == 1.0

    # A client that asks gets them, untouched.
    status, headers, body = router.post("/v1/chat/completions", {**request, "logprobs": True})
    assert headers["x-shoal-tier"] == "small"
    assert [t["logprob"] for t in json.loads(body)["choices"][0]["logprobs"]["content"]] == [-0.25] * 5


def test_an_unsure_answer_climbs_and_the_next_tier_is_not_asked_for_logprobs(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], cascade=CASCADE))
    fresh_engines["small"].configure(reply="Maybe 18 legs.", token_logprob=-2.5)
    status, headers, body = router.post("/v1/chat/completions", {"model": "x", "messages": ASK})
    assert status == 200 and headers["x-shoal-tier"] == "medium"
    assert json.loads(body)["choices"][0]["message"]["content"] == "Reply from medium."
    assert "logprobs" not in fresh_engines["medium"].stats()["last_body"]
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "logprobs"}) == 1.0
    assert router.metric("shoal_fallbacks_total", {"tier": "small", "cause": "rejected"}) == 1.0


def test_completions_ask_for_the_sampled_tokens_only_and_usage_is_unchanged(fresh_engines, start_router, tmp_path):
    cascade = {**CASCADE, "meanLogprob": None, "minLogprob": -1.0}
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], cascade=cascade))
    small = fresh_engines["small"]
    small.configure(reply="twenty four", token_logprob=-0.5)
    request = {"model": "smol-chat", "prompt": "Three spiders have this many legs:", "max_tokens": 8}
    status, headers, body = router.post("/v1/completions", request)
    assert status == 200 and headers["x-shoal-tier"] == "small"
    assert small.stats()["last_body"]["logprobs"] == 0
    answer = json.loads(body)
    assert answer["choices"][0]["logprobs"] is None
    assert answer["usage"] == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    direct = httpx.post(f"{small.base_url}/completions", json=request, timeout=10).content
    assert same_but_id(body) == same_but_id(direct)

    small.configure(token_logprob=-1.5)
    status, headers, body = router.post("/v1/completions", request)
    assert headers["x-shoal-tier"] == "medium"
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "logprobs"}) == 1.0


def test_without_the_logprobs_verifier_the_engine_gets_the_clients_request_as_is(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], cascade={"tiers": ["small"], "verifiers": ["refusal"]}))
    raw = b'{"model": "x",  "messages": [{"role": "user", "content": "hi"}]}'
    status, headers, _ = router.post("/v1/chat/completions", raw)
    assert status == 200 and headers["x-shoal-tier"] == "small"
    assert fresh_engines["small"].stats()["last_body"] == {"model": "smol-chat", "messages": [{"role": "user", "content": "hi"}]}
