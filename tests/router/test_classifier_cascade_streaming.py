"""`cascade.streaming: buffer`: a small tier's stream is held back whole, verified, then sent
as the same SSE stream, or the request climbs and the next tier streams as usual; nothing
of the small tier reaches the client before the verdict (fake engines, the openai client)."""

from __future__ import annotations

import json

import httpx

from .conftest import ladder_config
from .test_router_serving import client_for

ASK = [{"role": "user", "content": "How many legs do three spiders have?"}]
BUFFER = {"tiers": ["small"], "verifiers": ["refusal"], "streaming": "buffer"}


def chunks_without_ids(lines: list[str]) -> list[dict]:
    events = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: {")]
    return [{k: v for k, v in e.items() if k not in ("id", "created")} for e in events]


def test_an_accepted_stream_reaches_the_client_only_after_its_verdict_and_in_its_own_shape(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], cascade=BUFFER))
    small = fresh_engines["small"]
    small.configure(reply="Three spiders have 24 legs.", token_latency_ms=20)
    request = {"model": "smol-chat", "messages": ASK, "stream": True, "stream_options": {"include_usage": True}}

    stream = client_for(router).chat.completions.create(**request)
    first = next(iter(stream))
    # The first chunk the client sees comes after the engine finished and the verdict was in.
    assert small.stats()["completed"] == 1
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "accepted"}) == 1.0
    text = first.choices[0].delta.content + "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Three spiders have 24 legs."
    assert router.metric("shoal_cascade_buffered_bytes_total", {"tier": "small"}) > 0
    assert router.metric("shoal_cascade_buffered_seconds_total", {"tier": "small"}) > 0

    # The same events as the engine's own stream (ids and times aside), headers of a stream.
    with httpx.stream("POST", f"{router.base_url}/chat/completions", json=request, timeout=30) as via_router:
        assert via_router.headers["content-type"] == "text/event-stream"
        assert via_router.headers["x-shoal-tier"] == "small"
        routed = list(via_router.iter_lines())
    with httpx.stream("POST", f"{small.base_url}/chat/completions", json=request, timeout=30) as direct:
        engine = list(direct.iter_lines())
    assert chunks_without_ids(routed) == chunks_without_ids(engine)
    assert routed[-2:] == ["data: [DONE]", ""]
    # Tokens are counted from the stream's usage event, as for a relayed stream.
    assert router.metric("shoal_tokens_total", {"tier": "small", "kind": "completion"}) == 10.0


def test_a_rejected_stream_never_reaches_the_client_and_the_next_tier_streams(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], cascade=BUFFER))
    fresh_engines["small"].configure(reply="I'm not sure how many legs spiders have.")
    fresh_engines["medium"].configure(reply="Three spiders have 24 legs.")

    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=ASK, stream=True)
    assert raw.headers["x-shoal-tier"] == "medium"
    assert raw.headers["x-shoal-route-reason"] == "fallback"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "Three spiders have 24 legs."
    assert fresh_engines["small"].stats()["completed"] == 1
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "refusal"}) == 1.0
    assert router.metric("shoal_fallbacks_total", {"tier": "small", "cause": "rejected"}) == 1.0
    assert router.metric("shoal_cascade_rejected_cost_usd_total", {"tier": "small"}) > 0
    assert router.metric("shoal_cascade_buffered_bytes_total", {"tier": "small"}) > 0


def test_a_buffered_stream_is_verified_on_the_engines_logprobs_which_the_client_does_not_get(fresh_engines, start_router, tmp_path):
    cascade = {"tiers": ["small"], "verifiers": ["logprobs"], "meanLogprob": -1.0, "streaming": "buffer"}
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], cascade=cascade))
    small = fresh_engines["small"]
    client = client_for(router)

    small.configure(reply="Three spiders have 24 legs.", token_logprob=-0.2)
    raw = client.chat.completions.with_raw_response.create(model="x", messages=ASK, stream=True)
    chunks = list(raw.parse())
    assert raw.headers["x-shoal-tier"] == "small"
    assert small.stats()["last_body"]["logprobs"] is True
    assert [c.choices[0].logprobs for c in chunks] == [None] * 6
    # Asked for by the client: passed on.
    raw = client.chat.completions.with_raw_response.create(model="x", messages=ASK, stream=True, logprobs=True)
    assert [t.logprob for c in raw.parse() if c.choices[0].logprobs for t in c.choices[0].logprobs.content] == [-0.2] * 5

    small.configure(token_logprob=-3.0)
    raw = client.chat.completions.with_raw_response.create(model="x", messages=ASK, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse()) == "Reply from medium."
    assert raw.headers["x-shoal-tier"] == "medium"
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "logprobs"}) == 1.0


def test_a_stream_that_breaks_while_held_falls_back_since_nothing_was_sent(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], cascade=BUFFER))
    fresh_engines["small"].configure(reply="one two three four", break_after_chunks=2)
    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=ASK, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse()) == "Reply from medium."
    assert raw.headers["x-shoal-tier"] == "medium"
    assert router.metric("shoal_fallbacks_total", {"tier": "small", "cause": "upstream_broke"}) == 1.0


def test_pass_through_streams_are_relayed_unverified(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], cascade={**BUFFER, "streaming": "passThrough"}))
    fresh_engines["small"].configure(reply="I'm not sure")
    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=ASK, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse()) == "I'm not sure"
    assert raw.headers["x-shoal-tier"] == "small"
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small", "verdict": "refusal"}) is None


def test_a_stream_too_long_to_hold_is_sent_on_unverified_without_the_logprobs_the_router_asked_for(fresh_engines, start_router, tmp_path):
    cascade = {"tiers": ["small"], "verifiers": ["refusal", "logprobs"], "meanLogprob": -1.0, "streaming": "buffer"}
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], cascade=cascade))
    # About 8 MiB of SSE with the log-probabilities, over the 4 MiB a held stream may take:
    # a refusal with unsure tokens that verifying would have rejected.
    reply = "I'm not sure" + " w" * 32000
    fresh_engines["small"].configure(reply=reply, token_logprob=-3.0)
    with httpx.stream("POST", f"{router.base_url}/chat/completions", json={"model": "x", "messages": ASK, "stream": True}, timeout=60) as response:
        assert response.headers["x-shoal-tier"] == "small"
        body = b"".join(response.iter_bytes())
    assert fresh_engines["small"].stats()["last_body"]["logprobs"] is True
    assert b'"logprobs":{' not in body
    events = [json.loads(line[len(b"data: "):]) for line in body.split(b"\n") if line.startswith(b"data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == reply
    assert body.endswith(b"data: [DONE]\n\n")
    assert router.metric("shoal_cascade_verdicts_total", {"tier": "small"}) is None
