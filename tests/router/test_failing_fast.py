"""Failing fast is not retrying (issue 10): a down tier is climbed past without spending the
retry budget, while a slow one still cannot cause a retry storm. Real sidecar and fake
engine processes on loopback, driven by the official async client."""

from __future__ import annotations

import asyncio
import json

import openai

from .conftest import ladder_config

MESSAGES = [{"role": "user", "content": "Hello there"}]


async def _burst(base_url: str, count: int) -> list[tuple[int, str | None]]:
    """`count` concurrent chat requests; (status, answering tier) of each."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)

    async def one() -> tuple[int, str | None]:
        try:
            raw = await client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
            return raw.status_code, raw.headers.get("x-shoal-tier")
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response.headers.get("x-shoal-tier")

    try:
        return await asyncio.gather(*(one() for _ in range(count)))
    finally:
        await client.close()


def test_a_burst_while_the_first_tier_answers_503_is_served_by_the_next_tier_without_client_errors(fresh_engines, start_router, tmp_path):
    # The RoutePolicy's defaults: retry budget 20% + 3, breaker after 5 failures in a row.
    # Before: 77 of 100 got "502 tier small answered 503" once the budget ran dry.
    fresh_engines["small"].configure(fail_status=503)
    router = start_router(ladder_config(fresh_engines, tmp_path))
    results = asyncio.run(_burst(router.base_url, 100))
    assert sorted(set(results)) == [(200, "medium")]
    assert fresh_engines["medium"].stats()["requests"] == 100
    assert router.metric("shoal_fallbacks_total", {"tier": "medium", "cause": "retry_budget"}) is None
    unavailable = router.metric("shoal_fallbacks_total", {"tier": "small", "cause": "unavailable"}) or 0.0
    skipped = router.metric("shoal_fallbacks_total", {"tier": "small", "cause": "circuit_open"}) or 0.0
    assert unavailable + skipped == 100.0


def test_a_burst_while_the_first_tier_refuses_connections_is_served_by_the_next_tier(fresh_engines, start_router, tmp_path):
    config = ladder_config(fresh_engines, tmp_path)
    config["tiers"][0]["url"] = "http://127.0.0.1:9/v1"  # nothing listens
    config["engine"] = {}
    router = start_router(config)
    results = asyncio.run(_burst(router.base_url, 100))
    assert sorted(set(results)) == [(200, "medium")]


def test_a_slow_tier_gets_no_retry_storm_the_budget_bounds_the_retries(fresh_engines, start_router, tmp_path):
    # Every request to small times out (it may have worked on it): climbing costs budget,
    # 3 + 20% of the 40 requests in the window = 11 retries reach medium; the others are
    # told 503 retry_budget_exhausted. Small sees each request once: nothing is re-sent.
    fresh_engines["small"].configure(latency_ms=2000)
    router = start_router(
        ladder_config(
            fresh_engines, tmp_path,
            fallback={"firstByteTimeoutSeconds": 0.5, "circuitBreaker": {"consecutiveFailures": 1000, "openSeconds": 1}},
        )
    )
    results = asyncio.run(_burst(router.base_url, 40))
    assert sorted(results, key=str).count((200, "medium")) == 11
    assert [r for r in results if r[0] != 200] == [(503, "small")] * 29
    assert fresh_engines["medium"].stats()["requests"] == 11
    assert fresh_engines["small"].stats()["requests"] == 40
    assert router.metric("shoal_fallbacks_total", {"tier": "medium", "cause": "retry_budget"}) == 29.0


def test_every_tier_rate_limiting_is_429_with_the_smallest_retry_after(fresh_engines, start_router, tmp_path):
    for engine, seconds in (("small", 7), ("medium", 2), ("frontier", 30)):
        fresh_engines[engine].configure(fail_status=429, retry_after=seconds)
    router = start_router(ladder_config(fresh_engines, tmp_path))
    status, headers, body = router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
    error = json.loads(body)["error"]
    assert (status, headers["retry-after"], error["type"], error["code"]) == (429, "2", "rate_limit_error", "rate_limit_exceeded")
    assert router.metric("shoal_requests_total", {"outcome": "rate_limited"}) == 1.0
