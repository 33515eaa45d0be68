"""The sidecar in front of a real small model: SmolLM2-135M-Instruct on llama-cpp-python.

The model must be installed (scripts/install-test-deps.sh); a missing install fails these
tests with LlamaServerUnavailable naming the script, it does not skip them.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from shoal.testing.llama_server import LlamaServer, llama_server

from .conftest import ladder_config

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaServer]:
    with llama_server(n_threads=2) as server:
        yield server


@pytest.fixture
def real_router(smollm2, fresh_engines, start_router, tmp_path):
    config = ladder_config(fresh_engines, tmp_path, rules=[])
    config["tiers"][0].update(url=smollm2.base_url, model=smollm2.model)
    # llama-cpp-python has no Prometheus endpoint: the queue depth is unknown, never spilled on.
    config["engine"] = {}
    return start_router(config)


def test_real_model_answers_through_the_router_and_repeats_come_from_the_cache(real_router, fresh_engines):
    client = openai.OpenAI(base_url=real_router.base_url, api_key="unused", max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(model="anything", messages=QUESTION, temperature=0, max_tokens=24)
    completion = raw.parse()
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("small", "default")
    assert "Paris" in completion.choices[0].message.content
    assert real_router.metric("shoal_tokens_total", {"tier": "small", "kind": "completion"}) == completion.usage.completion_tokens
    assert completion.usage.completion_tokens > 0

    again = client.chat.completions.with_raw_response.create(model="anything", messages=QUESTION, temperature=0, max_tokens=24)
    assert again.headers["x-shoal-route-reason"] == "cache"
    assert again.parse().choices[0].message.content == completion.choices[0].message.content
    assert fresh_engines["medium"].stats()["requests"] == 0


def test_real_model_streams_through_the_router(real_router):
    client = openai.OpenAI(base_url=real_router.base_url, api_key="unused", max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(model="anything", messages=QUESTION, temperature=0, max_tokens=24, stream=True)
    assert raw.headers["x-shoal-tier"] == "small"
    pieces = [c.choices[0].delta.content for c in raw.parse() if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 2
    assert "Paris" in "".join(pieces)
    assert real_router.metric("shoal_time_to_first_token_seconds_count", {"tier": "small"}) == 1.0
