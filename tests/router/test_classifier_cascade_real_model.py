"""The cascade with a real small model as the first rung: SmolLM2-135M-Instruct on
llama.cpp answers first; a verifier accepts its answer or the request climbs to the next
tier (a fake engine). The model must be installed (scripts/install-test-deps.sh)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from shoal.testing.llama_server import LlamaServer, llama_server

from .conftest import ladder_config


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaServer]:
    with llama_server(n_threads=2) as server:
        yield server


def test_the_small_models_answer_is_verified_before_the_client_gets_it(smollm2, fresh_engines, start_router, tmp_path):
    config = ladder_config(fresh_engines, tmp_path, rules=[], cascade={"tiers": ["small"], "verifiers": ["refusal", "regex"], "regex": "Paris"})
    config["tiers"][0].update(url=smollm2.base_url, model=smollm2.model)
    config["engine"] = {}
    # A CPU model on a busy machine may take a while for its first token: a timeout must not
    # be what moves the request up (this test is about the verifier's verdict).
    config["fallback"] = {"firstByteTimeoutSeconds": 120}
    router = start_router(config)
    client = openai.OpenAI(base_url=router.base_url, api_key="unused", max_retries=0, timeout=120)
    fresh_engines["medium"].configure(reply="The capital of Japan is Tokyo.")

    france = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]
    raw = client.chat.completions.with_raw_response.create(model="x", messages=france, temperature=0, max_tokens=24)
    assert raw.headers["x-shoal-tier"] == "small", [line for line in router.get("/metrics")[1].splitlines() if "cascade" in line or "fallback" in line]
    assert "Paris" in raw.parse().choices[0].message.content
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "accepted"}) == 1.0

    # The small model's answer about Japan does not say Paris: rejected, and the next tier answers.
    japan = [{"role": "user", "content": "What is the capital of Japan? Answer in one short sentence."}]
    raw = client.chat.completions.with_raw_response.create(model="x", messages=japan, temperature=0, max_tokens=24)
    assert raw.headers["x-shoal-tier"] == "medium"
    assert raw.parse().choices[0].message.content == "The capital of Japan is Tokyo."
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "regex"}) == 1.0
    assert router.metric("shoal_fallbacks_total", {"tier": "small", "cause": "rejected"}) == 1.0
    assert router.metric("shoal_cascade_rejected_seconds_total", {"tier": "small"}) > 0
    assert fresh_engines["medium"].stats()["requests"] == 1
