"""Shadow evaluation inside the real router process, against fake engines on loopback.

The router serves the client first; the reference call happens after the response
completed (the router's `complete` hook), so a slow, failing or expensive reference
never delays or changes what the client gets.
"""

from __future__ import annotations

import json
import urllib.request

from .conftest import ladder_config, wait_for

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
SHADOW = {"tiers": [{"tier": "small", "reference": "frontier", "samplePercent": 100}], "maxConcurrency": 2, "maxQueue": 8}


def answer_of(body: bytes) -> tuple:
    """What the client was told, without the per-response id and timestamp."""
    data = json.loads(body)
    return data["model"], data["choices"], data["usage"]


def test_a_hanging_reference_neither_delays_nor_changes_the_clients_answer(fresh_engines, start_router, tmp_path):
    # The reference takes 30 s: the client's answer must be complete while it still runs.
    fresh_engines["frontier"].configure(latency_ms=30000)
    plain = start_router(ladder_config(fresh_engines, tmp_path))
    shadowed = start_router(ladder_config(fresh_engines, tmp_path, shadow=SHADOW))
    request = {"model": "x", "messages": MESSAGES}

    status, headers, body = shadowed.post("/v1/chat/completions", request)
    # The shadow call reached the reference and is still waiting there.
    running = wait_for(lambda: fresh_engines["frontier"].stats()["running"] == 1, "the reference call to start")
    assert running
    assert fresh_engines["frontier"].stats()["completed"] == 0
    plain_status, plain_headers, plain_body = plain.post("/v1/chat/completions", request)
    assert (status, headers["x-shoal-tier"], headers["x-shoal-route-reason"]) == (plain_status, plain_headers["x-shoal-tier"], "default")
    assert answer_of(body) == answer_of(plain_body)
    # The reference got the same question for its own model, with its own key, not streamed.
    sent = fresh_engines["frontier"].stats()
    assert sent["last_body"] == {"model": "big-model", "messages": MESSAGES}
    assert sent["last_headers"]["authorization"] == "Bearer sk-test-secret-123"


def test_a_streamed_answer_is_relayed_unchanged_and_then_graded(fresh_engines, start_router, tmp_path):
    fresh_engines["small"].configure(reply="Paris.")
    fresh_engines["frontier"].configure(reply="paris")
    router = start_router(ladder_config(fresh_engines, tmp_path, shadow=SHADOW))
    request = urllib.request.Request(
        router.base_url + "/chat/completions", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"model": "x", "messages": MESSAGES, "stream": True}).encode(),
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        streamed = response.read().decode()
    chunks = [json.loads(line[6:]) for line in streamed.split("\n\n") if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Paris."
    assert streamed.rstrip().endswith("data: [DONE]")
    assert wait_for(lambda: router.metric("shoal_shadow_samples_total", {"tier": "small", "outcome": "agree"}), "the sample graded") == 1.0
    assert fresh_engines["frontier"].stats()["last_body"]["model"] == "big-model"
    assert "stream" not in fresh_engines["frontier"].stats()["last_body"]


def test_reference_failures_are_counted_and_every_client_request_still_succeeds(fresh_engines, start_router, tmp_path):
    fresh_engines["frontier"].configure(fail_status=500)
    router = start_router(ladder_config(fresh_engines, tmp_path, shadow=SHADOW))
    statuses = [router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})[0] for _ in range(5)]
    assert statuses == [200] * 5
    assert wait_for(lambda: router.metric("shoal_shadow_samples_total", {"tier": "small", "outcome": "reference_error"}) == 5.0,
                    "five reference errors")
    # The client traffic's own counters are untouched by the shadow calls.
    assert router.metric("shoal_requests_total", {"tier": "small", "reason": "default", "outcome": "ok"}) == 5.0
    assert router.metric("shoal_requests_total", {"tier": "frontier"}) is None


def test_concurrency_bound_holds_and_overflow_is_skipped_through_the_router(fresh_engines, start_router, tmp_path):
    fresh_engines["frontier"].configure(latency_ms=400)
    router = start_router(ladder_config(fresh_engines, tmp_path, shadow={**SHADOW, "maxConcurrency": 2, "maxQueue": 2}))
    for _ in range(12):
        assert router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})[0] == 200
    graded = lambda: (router.metric("shoal_shadow_samples_total", {"tier": "small", "outcome": "disagree"}) or 0.0)  # noqa: E731
    skipped = lambda: router.metric("shoal_shadow_skipped_total", {"tier": "small", "reason": "queue_full"}) or 0.0  # noqa: E731
    wait_for(lambda: graded() + skipped() == 12.0, "every sample graded or skipped", timeout=30)
    assert skipped() > 0
    assert fresh_engines["frontier"].stats()["peak_running"] <= 2


def test_excluded_and_opted_out_requests_never_reach_the_reference(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path, shadow=SHADOW))
    router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES}, {"x-shoal-shadow": "off"})
    router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES}, {"x-shoal-private": "1"})
    router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}]})
    assert router.metric("shoal_shadow_skipped_total", {"tier": "small", "reason": "opted_out"}) == 1.0
    assert router.metric("shoal_shadow_skipped_total", {"tier": "small", "reason": "private"}) == 1.0
    assert router.metric("shoal_shadow_skipped_total", {"tier": "small", "reason": "tool_calls"}) == 1.0
    assert fresh_engines["frontier"].stats()["requests"] == 0


def test_shadow_evaluation_turns_on_and_off_with_a_config_reload(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path))
    router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
    assert router.metric("shoal_shadow_samples_total") is None
    router.write_config(ladder_config(fresh_engines, tmp_path, shadow=SHADOW))
    wait_for(lambda: router.metric("shoal_config_reloads_total", {"outcome": "ok"}) == 1.0, "the reload")
    router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
    wait_for(lambda: router.metric("shoal_shadow_samples_total", {"tier": "small", "outcome": "disagree"}) == 1.0, "a graded sample")
    router.write_config(ladder_config(fresh_engines, tmp_path))
    wait_for(lambda: router.metric("shoal_config_reloads_total", {"outcome": "ok"}) == 2.0, "the second reload")
    router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
    assert fresh_engines["frontier"].stats()["requests"] == 1
