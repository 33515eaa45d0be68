"""The cascade's logprobs verifier in front of real vLLM: the router asks the engine for the
token log-probabilities the client did not ask for, judges the answer by them, and gives
the client the bytes the engine sends without them. The next rung is a fake engine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from shoal.testing.fake_engine import FakeEngineProcess, start_fake_engine
from shoal.testing.vllm_server import cpu_test_tier
from tests.router.conftest import wait_for

from .conftest import router_config

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]
CHAT = {"model": "smollm2", "messages": QUESTION, "temperature": 0, "max_tokens": 16}
COMPLETION = {"model": "smollm2", "prompt": "The capital of France is", "temperature": 0, "max_tokens": 4}
# What differs between two answers of the engine to the same request.
_VOLATILE = re.compile(rb'"(id|created)":("[^"]*"|\d+)')


def same_but_id(body: bytes) -> bytes:
    return _VOLATILE.sub(rb'"\1":_', body)


@pytest.fixture(scope="module")
def large() -> Iterator[FakeEngineProcess]:
    with start_fake_engine(name="large", model="big-model", reply="The capital of France is Paris (from the large tier).") as engine:
        yield engine


@pytest.fixture
def cascade_router(vllm_engine, large, start_router):
    def start(**cascade):
        tier = cpu_test_tier(port=vllm_engine.port, adapters=[], max_loras=2, max_cpu_loras=4)
        # No cache: every request is answered and judged. A CPU engine on a busy machine may
        # be slow to its first token: a timeout must not be what moves a request up.
        config = router_config(tier, vllm_engine, cache={"mode": "disabled"}, fallback={"firstByteTimeoutSeconds": 600})
        config["tiers"].append({"name": "large", "kind": "external", "url": large.base_url, "model": "big-model"})
        config["cascade"] = {"tiers": ["cpu"], "verifiers": ["logprobs"], **cascade}
        router = start_router(config)
        wait_for(lambda: router.get("/readyz")[0] == 200, "router ready", timeout=60)
        return router

    return start


def direct(vllm_engine, path: str, body: dict) -> bytes:
    response = httpx.post(f"{vllm_engine.base_url}{path}", json=body, timeout=600)
    assert response.status_code == 200, response.text
    return response.content


def test_a_confident_answer_is_accepted_and_the_client_gets_the_engines_bytes_without_logprobs(vllm_engine, cascade_router):
    router = cascade_router(meanLogprob=-1.0)

    status, headers, body = router.post("/v1/chat/completions", CHAT)
    assert status == 200 and headers["x-shoal-tier"] == "cpu", body
    answer = json.loads(body)
    assert "Paris" in answer["choices"][0]["message"]["content"]
    assert answer["choices"][0]["logprobs"] is None
    assert same_but_id(body) == same_but_id(direct(vllm_engine, "/chat/completions", CHAT))
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "cpu", "verdict": "accepted"}) == 1.0

    status, headers, body = router.post("/v1/completions", COMPLETION)
    assert status == 200 and headers["x-shoal-tier"] == "cpu", body
    assert json.loads(body)["choices"][0]["logprobs"] is None
    assert same_but_id(body) == same_but_id(direct(vllm_engine, "/completions", COMPLETION))
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "cpu", "verdict": "accepted"}) == 2.0

    # A client that asks gets the engine's log-probabilities as the engine sent them.
    asking = {**CHAT, "logprobs": True}
    status, headers, body = router.post("/v1/chat/completions", asking)
    assert headers["x-shoal-tier"] == "cpu"
    assert json.loads(body)["choices"][0]["logprobs"]["content"][0]["logprob"] < 0
    assert same_but_id(body) == same_but_id(direct(vllm_engine, "/chat/completions", asking))


def test_a_threshold_above_what_the_model_achieves_climbs_to_the_next_tier(vllm_engine, cascade_router, large):
    # The engine's own mean log-probability for this answer, to set the bar just above it.
    logprobs = json.loads(direct(vllm_engine, "/chat/completions", {**CHAT, "logprobs": True}))["choices"][0]["logprobs"]["content"]
    mean = sum(t["logprob"] for t in logprobs) / len(logprobs)
    assert -1.0 < mean < 0
    router = cascade_router(meanLogprob=round(mean / 2, 6))
    large.reset()

    status, headers, body = router.post("/v1/chat/completions", CHAT)
    assert status == 200 and headers["x-shoal-tier"] == "large", body
    assert json.loads(body)["choices"][0]["message"]["content"] == "The capital of France is Paris (from the large tier)."
    assert "logprobs" not in large.stats()["last_body"]
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "cpu", "verdict": "logprobs"}) == 1.0
    assert router.metric("shoal_fallbacks_total", {"tier": "cpu", "cause": "rejected"}) == 1.0
    assert router.metric("shoal_cascade_rejected_seconds_total", {"tier": "cpu"}) > 0


def test_a_held_stream_is_judged_on_the_engines_logprobs_and_sent_without_them(vllm_engine, cascade_router):
    router = cascade_router(meanLogprob=-1.0, streaming="buffer")
    request = {**CHAT, "stream": True}
    with httpx.stream("POST", f"{router.base_url}/chat/completions", json=request, timeout=600) as response:
        assert response.headers["x-shoal-tier"] == "cpu"
        routed = b"".join(response.iter_bytes())
    assert b'"logprobs":{' not in routed
    assert same_but_id(routed) == same_but_id(direct(vllm_engine, "/chat/completions", request))
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "cpu", "verdict": "accepted"}) == 1.0
    assert router.metric("shoal_cascade_buffered_bytes_total", {"tier": "cpu"}) == len(routed)
