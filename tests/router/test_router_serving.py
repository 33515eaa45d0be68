"""The sidecar end to end: the official openai client -> `shoal router` -> fake engines."""

from __future__ import annotations

import json

import openai
import pytest

from .conftest import ladder_config, wait_for

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def client_for(router) -> openai.OpenAI:
    # max_retries=0: the router's own fallback is under test, not the client's retries.
    return openai.OpenAI(base_url=router.base_url, api_key="unused", max_retries=0, timeout=30)


def test_easy_request_is_answered_by_the_local_engine_with_tier_and_reason_headers(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path))
    raw = client_for(router).chat.completions.with_raw_response.create(model="anything", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Reply from small."
    assert raw.headers["x-shoal-tier"] == "small"
    assert raw.headers["x-shoal-route-reason"] == "default"
    # The engine got its own served model name, not the client's.
    assert fresh_engines["small"].stats()["last_body"]["model"] == "smol-chat"
    assert router.metric("shoal_requests_total", {"tier": "small", "reason": "default", "outcome": "ok"}) == 1.0
    assert router.metric("shoal_tokens_total", {"tier": "small", "kind": "completion"}) == 3.0


def test_explicit_header_and_alias_pick_the_tier_and_a_hop_is_marked(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path))
    client = client_for(router)
    raw = client.chat.completions.with_raw_response.create(model="x", messages=MESSAGES, extra_headers={"x-shoal-tier": "medium"})
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("medium", "explicit")
    assert raw.parse().choices[0].message.content == "Reply from medium."
    seen = fresh_engines["medium"].stats()
    assert seen["last_headers"]["x-shoal-hop"] == "1"
    assert seen["last_headers"]["x-shoal-tier"] == "medium"
    assert seen["last_body"]["model"] == "mid-chat"
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=MESSAGES)
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("small", "explicit")


def test_explicit_routing_disallowed_ignores_the_header(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path, escalation={"explicitRouting": "disallowed"}))
    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=MESSAGES, extra_headers={"x-shoal-tier": "frontier"})
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("small", "default")


def test_keyword_rule_routes_to_its_tier(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path))
    raw = client_for(router).chat.completions.with_raw_response.create(
        model="x", messages=[{"role": "user", "content": "Why does my Python loop never end?"}]
    )
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("medium", "rule:code")


def test_trained_classifier_routes_hard_prompts_up_and_easy_ones_down(fresh_engines, start_router, tmp_path):
    from shoal.router.classifier import read_labelled, train

    from .conftest import LABELLED

    model = tmp_path / "classifier.json"
    model.write_text(json.dumps(train(read_labelled(LABELLED), classes=["small", "medium", "frontier"]).to_json()))
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], classifier={"path": str(model), "confidenceThreshold": 0.5}))
    client = client_for(router)
    hard = client.chat.completions.with_raw_response.create(
        model="x", messages=[{"role": "user", "content": "Prove that the square root of 3 is irrational."}]
    )
    assert (hard.headers["x-shoal-tier"], hard.headers["x-shoal-route-reason"]) == ("frontier", "classifier")
    easy = client.chat.completions.with_raw_response.create(model="x", messages=[{"role": "user", "content": "What is the capital of Italy?"}])
    assert (easy.headers["x-shoal-tier"], easy.headers["x-shoal-route-reason"]) == ("small", "classifier")


def test_streaming_is_relayed_chunk_by_chunk_with_headers(fresh_engines, start_router, tmp_path):
    fresh_engines["small"].configure(reply="one two three four five")
    router = start_router(ladder_config(fresh_engines, tmp_path))
    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=MESSAGES, stream=True)
    assert raw.headers["x-shoal-tier"] == "small"
    assert raw.headers["content-type"].startswith("text/event-stream")
    pieces = [chunk.choices[0].delta.content for chunk in raw.parse() if chunk.choices and chunk.choices[0].delta.content]
    assert pieces == ["one", " two", " three", " four", " five"]
    # No usage event was asked for: completion tokens are estimated as one per content event.
    assert router.metric("shoal_tokens_total", {"tier": "small", "kind": "completion"}) == 5.0
    assert router.metric("shoal_time_to_first_token_seconds_count", {"tier": "small"}) == 1.0


def test_streaming_usage_event_is_counted_when_requested(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path))
    stream = client_for(router).chat.completions.create(
        model="x", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert usage[0].completion_tokens == 3
    assert router.metric("shoal_tokens_total", {"tier": "small", "kind": "completion"}) == 3.0


def test_server_error_falls_back_to_the_next_tier(fresh_engines, start_router, tmp_path):
    fresh_engines["small"].configure(fail_status=500)
    router = start_router(ladder_config(fresh_engines, tmp_path))
    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("medium", "fallback")
    assert router.metric("shoal_fallbacks_total", {"tier": "small", "cause": "server_error"}) == 1.0
    assert router.metric("shoal_escalations_total", {"tier": "medium", "reason": "fallback"}) == 1.0


def test_rate_limited_tier_falls_back(fresh_engines, start_router, tmp_path):
    fresh_engines["small"].configure(fail_status=429)
    router = start_router(ladder_config(fresh_engines, tmp_path))
    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    assert raw.headers["x-shoal-tier"] == "medium"
    assert router.metric("shoal_fallbacks_total", {"tier": "small", "cause": "rate_limited"}) == 1.0


def test_connect_error_falls_back(fresh_engines, start_router, tmp_path):
    config = ladder_config(fresh_engines, tmp_path)
    config["tiers"][0]["url"] = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    config["engine"] = {}
    router = start_router(config)
    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("medium", "fallback")
    assert router.metric("shoal_fallbacks_total", {"tier": "small", "cause": "connect_error"}) == 1.0


def test_client_errors_from_the_engine_pass_through_without_fallback(fresh_engines, start_router, tmp_path):
    fresh_engines["small"].configure(fail_status=400)
    router = start_router(ladder_config(fresh_engines, tmp_path))
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(router).chat.completions.create(model="x", messages=MESSAGES)
    assert caught.value.response.headers["x-shoal-tier"] == "small"
    assert fresh_engines["medium"].stats()["requests"] == 0


def test_timeout_before_first_byte_falls_back_and_alone_is_504(fresh_engines, start_router, tmp_path):
    fresh_engines["small"].configure(latency_ms=3000)
    router = start_router(ladder_config(fresh_engines, tmp_path, fallback={"firstByteTimeoutSeconds": 0.3}))
    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("medium", "fallback")
    assert router.metric("shoal_fallbacks_total", {"tier": "small", "cause": "timeout"}) == 1.0

    alone = ladder_config(fresh_engines, tmp_path, fallback={"firstByteTimeoutSeconds": 0.3})
    alone["tiers"] = alone["tiers"][:1]
    alone["rules"] = []
    router = start_router(alone)
    status, headers, body = router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
    assert status == 504
    error = json.loads(body)["error"]
    assert (error["type"], error["code"], error["param"]) == ("timeout", "upstream_timeout", None)
    assert "no response within 0.3s" in error["message"]
    assert router.metric("shoal_requests_total", {"tier": "small", "outcome": "timeout"}) == 1.0


def test_every_tier_failing_is_502_every_tier_unavailable_or_unreachable_is_503(fresh_engines, start_router, tmp_path):
    for engine in fresh_engines.values():
        engine.configure(fail_status=500)
    router = start_router(ladder_config(fresh_engines, tmp_path))
    status, headers, body = router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
    assert status == 502
    assert json.loads(body)["error"]["code"] == "upstream_error"
    assert headers["x-shoal-route-reason"] == "default"
    assert sum(fresh_engines[t].stats()["requests"] for t in ("small", "medium", "frontier")) == 3

    for engine in fresh_engines.values():
        engine.configure(fail_status=503)
    status, headers, body = router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
    assert (status, json.loads(body)["error"]["code"]) == (503, "no_healthy_upstream")
    assert router.metric("shoal_fallbacks_total", {"tier": "frontier", "cause": "unavailable"}) == 1.0

    config = ladder_config(fresh_engines, tmp_path)
    for rung in config["tiers"]:
        rung["url"] = "http://127.0.0.1:9/v1"
    config["engine"] = {}
    router = start_router(config)
    status, _, body = router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
    assert status == 503
    assert json.loads(body)["error"]["type"] == "service_unavailable"


def test_max_attempts_bounds_the_ladder(fresh_engines, start_router, tmp_path):
    for engine in fresh_engines.values():
        engine.configure(fail_status=500)
    router = start_router(ladder_config(fresh_engines, tmp_path, fallback={"maxAttempts": 2}))
    status, _, _ = router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
    assert status == 502
    assert [fresh_engines[t].stats()["requests"] for t in ("small", "medium", "frontier")] == [1, 1, 0]


def test_no_retry_after_the_first_byte_reached_the_client(fresh_engines, start_router, tmp_path):
    fresh_engines["small"].configure(reply="alpha beta gamma delta", break_after_chunks=2)
    router = start_router(ladder_config(fresh_engines, tmp_path))
    stream = client_for(router).chat.completions.create(model="x", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received == ["alpha", " beta"]
    assert "broke mid-way" in str(caught.value)
    assert fresh_engines["medium"].stats()["requests"] == 0
    assert router.metric("shoal_requests_total", {"tier": "small", "outcome": "upstream_error"}) == 1.0


def test_a_stream_broken_before_its_first_chunk_falls_back(fresh_engines, start_router, tmp_path):
    fresh_engines["small"].configure(break_after_chunks=0)
    router = start_router(ladder_config(fresh_engines, tmp_path))
    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=MESSAGES, stream=True)
    assert raw.headers["x-shoal-tier"] == "medium"
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "Reply from medium."


def test_circuit_opens_after_consecutive_failures_and_skips_the_tier(fresh_engines, start_router, tmp_path):
    fresh_engines["small"].configure(fail_status=500)
    router = start_router(
        ladder_config(fresh_engines, tmp_path, fallback={"circuitBreaker": {"consecutiveFailures": 2, "openSeconds": 300}})
    )
    for _ in range(4):
        status, headers, _ = router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
        assert (status, headers["x-shoal-tier"]) == (200, "medium")
    assert fresh_engines["small"].stats()["requests"] == 2
    assert router.metric("shoal_fallbacks_total", {"tier": "small", "cause": "circuit_open"}) == 2.0
    assert router.metric("shoal_upstream_circuit_open", {"tier": "small"}) == 1.0


def test_retry_budget_stops_fallbacks_beyond_its_share(fresh_engines, start_router, tmp_path):
    # 0% of requests may be retried beyond the floor of 3 retries per window.
    fresh_engines["small"].configure(fail_status=500)
    router = start_router(
        ladder_config(
            fresh_engines, tmp_path,
            fallback={"retryBudgetPercent": 0, "circuitBreaker": {"consecutiveFailures": 1000, "openSeconds": 1}},
        )
    )
    answers = [router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES}) for _ in range(5)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 503, 503]
    # 503, not the failing tier's 502: the router chose not to try a tier that might have
    # answered, and tells the client when to come back (the README's table says the same).
    _, headers, body = answers[-1]
    assert (json.loads(body)["error"]["code"], headers["retry-after"]) == ("retry_budget_exhausted", "1")
    assert router.metric("shoal_fallbacks_total", {"tier": "medium", "cause": "retry_budget"}) == 2.0


def test_spillover_when_the_local_queue_is_over_its_limit(fresh_engines, start_router, tmp_path):
    fresh_engines["small"].configure(waiting=10)
    router = start_router(ladder_config(fresh_engines, tmp_path))
    wait_for(lambda: router.metric("shoal_engine_requests_waiting") == 10.0, "engine queue scraped")
    assert router.metric("shoal_engine_requests_running") == 0.0
    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("medium", "spillover")
    assert router.metric("shoal_escalations_total", {"tier": "medium", "reason": "spillover"}) == 1.0


def test_a_peer_whose_sidecar_cannot_be_reached_is_asleep_and_skipped(fresh_engines, start_router, tmp_path):
    config = ladder_config(fresh_engines, tmp_path, rules=[], peers={"pollIntervalSeconds": 0.1, "pollTimeoutSeconds": 0.5, "staleAfterSeconds": 1})
    config["tiers"][1]["url"] = "http://127.0.0.1:9/v1"  # no pod behind the peer's Service
    router = start_router(config)
    wait_for(lambda: router.state()["peers"].get("medium", {}).get("awake") is False, "the peer polled and found asleep")
    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=MESSAGES, extra_headers={"x-shoal-tier": "medium"})
    # Explicit requests go where they asked (and climb when it is down)...
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("frontier", "fallback")
    fresh_engines["small"].configure(waiting=10)
    wait_for(lambda: router.metric("shoal_engine_requests_waiting") == 10.0, "engine queue scraped")
    raw = client_for(router).chat.completions.with_raw_response.create(model="x", messages=MESSAGES)
    # ...others skip the sleeping tier on the way up, and say which tiers they skipped.
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("frontier", "spillover")
    assert router.metric("shoal_spillovers_total", {"tier": "small"}) == 1.0
    assert router.metric("shoal_spillovers_total", {"tier": "medium"}) == 1.0


def test_forwarded_request_is_served_by_the_local_engine_or_refused_when_saturated(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path))
    hop = {"x-shoal-hop": "1", "x-shoal-tier": "small"}
    status, headers, body = router.post("/v1/chat/completions", {"model": "smol-chat", "messages": [{"role": "user", "content": "python"}]}, hop)
    # Not re-routed by the rule: served here.
    assert (status, headers["x-shoal-tier"], headers["x-shoal-route-reason"]) == (200, "small", "hop")
    fresh_engines["small"].configure(waiting=10)
    wait_for(lambda: router.metric("shoal_engine_requests_waiting") == 10.0, "engine queue scraped")
    status, headers, body = router.post("/v1/chat/completions", {"model": "smol-chat", "messages": MESSAGES}, hop)
    assert (status, headers["x-shoal-saturated"]) == (503, "1")
    assert json.loads(body)["error"]["code"] == "saturated"
    assert fresh_engines["medium"].stats()["requests"] == 0


def test_external_tier_gets_the_key_from_its_file_and_the_key_is_never_exposed(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path))
    raw = client_for(router).chat.completions.with_raw_response.create(model="frontier", messages=MESSAGES)
    assert raw.headers["x-shoal-tier"] == "frontier"
    seen = fresh_engines["frontier"].stats()
    assert seen["last_headers"]["authorization"] == "Bearer sk-test-secret-123"
    assert "x-shoal-hop" not in seen["last_headers"]
    assert "sk-test-secret-123" not in router.get("/metrics")[1]
    # In-cluster tiers never receive it: they get the client's own key (an engine
    # started with --api-key checks it), and the external tier never gets the client's.
    client_for(router).chat.completions.create(model="medium", messages=MESSAGES)
    assert fresh_engines["medium"].stats()["last_headers"]["authorization"] == "Bearer unused"


def test_cost_is_counted_from_usage_and_prices(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path))
    client = client_for(router)
    completion = client.chat.completions.create(model="frontier", messages=MESSAGES)
    expected = completion.usage.prompt_tokens * 2e-6 + completion.usage.completion_tokens * 1e-5
    assert router.metric("shoal_cost_usd_total", {"tier": "frontier"}) == pytest.approx(expected)
    completion = client.chat.completions.create(model="small", messages=MESSAGES)
    assert router.metric("shoal_cost_usd_total", {"tier": "small"}) == pytest.approx(completion.usage.completion_tokens * 1e-6)


def test_hourly_budget_rejects_external_requests_once_spent(fresh_engines, start_router, tmp_path):
    config = ladder_config(fresh_engines, tmp_path, budgets={"maxUSDPerHour": 1e-6, "onExceeded": "reject"})
    router = start_router(config)
    first = router.post("/v1/chat/completions", {"model": "frontier", "messages": MESSAGES})
    assert first[0] == 200
    status, headers, body = router.post("/v1/chat/completions", {"model": "frontier", "messages": MESSAGES})
    assert status == 429
    assert json.loads(body)["error"] == {
        "message": "the spending budget for this policy is exhausted",
        "type": "rate_limit_error",
        "param": None,
        "code": "budget_exceeded",
    }
    assert headers["x-shoal-route-reason"] == "budget"
    # In-cluster tiers are still served.
    assert router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})[0] == 200


def test_hourly_budget_stays_on_cluster_when_configured(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path, budgets={"maxUSDPerHour": 1e-6, "onExceeded": "stayOnCluster"}))
    router.post("/v1/chat/completions", {"model": "frontier", "messages": MESSAGES})
    status, headers, _ = router.post("/v1/chat/completions", {"model": "frontier", "messages": MESSAGES})
    assert (status, headers["x-shoal-tier"], headers["x-shoal-route-reason"]) == (200, "medium", "budget")


def test_embeddings_and_completions_pass_through(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path))
    client = client_for(router)
    embedding = client.embeddings.create(model="x", input=["a", "b"])
    assert [len(item.embedding) for item in embedding.data] == [8, 8]
    assert fresh_engines["small"].stats()["by_path"] == {"/v1/embeddings": 1}
    completion = client.completions.create(model="x", prompt="Say hi")
    assert completion.choices[0].text == "Reply from small."


def test_models_health_and_readiness(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path))
    models = [m.id for m in client_for(router).models.list()]
    assert models == ["small", "tiny", "medium", "frontier"]
    assert router.get("/healthz") == (200, "ok")
    assert router.get("/readyz") == (200, "ready")


def test_readiness_waits_for_the_local_engine(fresh_engines, start_router, tmp_path):
    from .conftest import RouterProcess

    config = ladder_config(fresh_engines, tmp_path)
    config["engine"] = {"metricsUrl": "http://127.0.0.1:9/metrics", "scrapeIntervalSeconds": 0.1}
    path = tmp_path / "unready.json"
    path.write_text(json.dumps(config))
    router = RouterProcess(path)
    try:
        wait_for(lambda: router.get("/healthz")[0] == 200, "router alive")
        assert router.get("/readyz") == (503, "local engine not answering")
    finally:
        router.stop()


def test_cache_serves_deterministic_repeats_of_the_pods_own_checkpoint(fresh_engines, start_router, tmp_path):
    config = ladder_config(fresh_engines, tmp_path)
    # The pod template gives the sidecar its engine's serving checkpoint.
    router = start_router(config, env={"SHOAL_SERVING_CHECKPOINT": "hf://org/smol@v1"})
    body = {"model": "x", "messages": MESSAGES, "temperature": 0}
    first = router.post("/v1/chat/completions", body)
    second = router.post("/v1/chat/completions", body)
    assert first[0] == second[0] == 200
    assert second[1]["x-shoal-route-reason"] == "cache"
    assert first[1]["x-shoal-checkpoint"] == second[1]["x-shoal-checkpoint"] == "hf://org/smol@v1"
    assert second[2] == first[2]
    assert fresh_engines["small"].stats()["requests"] == 1
    assert router.metric("shoal_cache_hits_total", {"tier": "small"}) == 1.0
    assert router.state()["checkpoint"] == "hf://org/smol@v1"

    # Sampling requests are never cached.
    router.post("/v1/chat/completions", {**body, "temperature": 0.7})
    router.post("/v1/chat/completions", {**body, "temperature": 0.7})
    assert fresh_engines["small"].stats()["requests"] == 3


def test_cache_disabled_never_answers_from_memory(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path, cache={"mode": "disabled"}))
    body = {"model": "x", "messages": MESSAGES, "temperature": 0}
    router.post("/v1/chat/completions", body)
    assert router.post("/v1/chat/completions", body)[1]["x-shoal-route-reason"] == "default"
    assert fresh_engines["small"].stats()["requests"] == 2


def test_invalid_config_on_reload_is_rejected_and_serving_continues(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path))
    router.config_path.write_text('{"tiers": "not a list"}')
    wait_for(lambda: router.metric("shoal_config_reloads_total", {"outcome": "invalid"}) == 1.0, "reload rejected")
    assert router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})[1]["x-shoal-tier"] == "small"


def test_reload_changes_routing_without_dropping_a_request_in_flight(fresh_engines, start_router, tmp_path):
    import threading

    fresh_engines["small"].configure(latency_ms=1500)
    config = ladder_config(fresh_engines, tmp_path)
    router = start_router(config)
    result = {}
    thread = threading.Thread(target=lambda: result.update(slow=router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})))
    thread.start()
    wait_for(lambda: fresh_engines["small"].stats()["running"] == 1, "slow request in flight")
    config["rules"] = [{"name": "everything", "match": {}, "tier": "medium"}]
    router.write_config(config)
    wait_for(lambda: router.metric("shoal_config_reloads_total", {"outcome": "ok"}) == 1.0, "config reloaded")
    after = router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
    assert (after[1]["x-shoal-tier"], after[1]["x-shoal-route-reason"]) == ("medium", "rule:everything")
    thread.join(timeout=30)
    status, headers, body = result["slow"]
    assert (status, headers["x-shoal-tier"]) == (200, "small")
    assert json.loads(body)["choices"][0]["message"]["content"] == "Reply from small."


def test_client_disconnect_mid_stream_cancels_the_upstream_request(fresh_engines, start_router, tmp_path):
    import http.client

    fresh_engines["small"].configure(reply=" ".join(["word"] * 200), token_latency_ms=50)
    router = start_router(ladder_config(fresh_engines, tmp_path))
    connection = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    connection.request("POST", "/v1/chat/completions", json.dumps({"model": "x", "messages": MESSAGES, "stream": True}), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.read1(1024).startswith(b"data: ")
    connection.sock.close()
    connection.close()
    wait_for(lambda: fresh_engines["small"].stats()["cancelled"] == 1, "upstream request cancelled")
    assert fresh_engines["small"].stats()["completed"] == 0
    wait_for(lambda: router.metric("shoal_router_requests_in_flight") == 0.0, "in-flight back to zero")


def test_sigterm_drains_requests_in_flight_and_stops_being_ready(fresh_engines, start_router, tmp_path):
    import signal
    import threading

    fresh_engines["small"].configure(latency_ms=1500)
    router = start_router(ladder_config(fresh_engines, tmp_path))
    result = {}
    thread = threading.Thread(target=lambda: result.update(slow=router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})))
    thread.start()
    wait_for(lambda: fresh_engines["small"].stats()["running"] == 1, "request in flight")
    router.process.send_signal(signal.SIGTERM)
    wait_for(lambda: router.get("/readyz") == (503, "draining"), "not ready while draining")
    thread.join(timeout=30)
    assert result["slow"][0] == 200
    assert router.process.wait(timeout=15) == 0


def test_metrics_have_no_created_series(fresh_engines, start_router, tmp_path):
    router = start_router(ladder_config(fresh_engines, tmp_path))
    router.post("/v1/chat/completions", {"model": "x", "messages": MESSAGES})
    text = router.get("/metrics")[1]
    assert "shoal_requests_total{" in text
    assert "_created" not in text


def test_low_confidence_starts_one_tier_up_and_counts_an_escalation(fresh_engines, start_router, tmp_path):
    from shoal.router.classifier import read_labelled, train

    from .conftest import LABELLED

    model = tmp_path / "classifier.json"
    model.write_text(json.dumps(train(read_labelled(LABELLED), classes=["small", "medium", "frontier"]).to_json()))
    # No prediction reaches a threshold of 1: every request is "unsure".
    router = start_router(ladder_config(fresh_engines, tmp_path, rules=[], classifier={"path": str(model), "confidenceThreshold": 1.0}))
    raw = client_for(router).chat.completions.with_raw_response.create(
        model="x", messages=[{"role": "user", "content": "What is the capital of Italy?"}]
    )
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("medium", "classifier-low-confidence")
    assert router.metric("shoal_escalations_total", {"tier": "medium", "reason": "classifier-low-confidence"}) == 1.0


def test_two_sidecars_a_forwarded_request_is_served_by_the_peer_engine_and_a_saturated_peer_is_skipped(fresh_engines, start_router, tmp_path):
    # Sidecar of the medium tier: its own engine is local; its policy would send "python"
    # elsewhere, which must NOT happen to a request another sidecar forwarded.
    medium_config = ladder_config(fresh_engines, tmp_path)
    medium_config.update(
        modelTier="mid",
        localTier="medium",
        rules=[{"name": "code", "match": {"keywords": ["python"]}, "tier": "frontier"}],
        engine={"metricsUrl": fresh_engines["medium"].root + "/metrics", "scrapeIntervalSeconds": 0.1},
    )
    medium_config["tiers"] = [
        {"name": "small", "kind": "service", "url": "http://127.0.0.1:9/v1", "model": "smol-chat"},
        {"name": "medium", "kind": "local", "url": fresh_engines["medium"].base_url, "model": "mid-chat", "maxQueueDepth": 2},
        medium_config["tiers"][2],
    ]
    medium_sidecar = start_router(medium_config)

    small_config = ladder_config(fresh_engines, tmp_path)
    small_config["tiers"][1]["url"] = medium_sidecar.base_url
    small_sidecar = start_router(small_config)

    client = client_for(small_sidecar)
    raw = client.chat.completions.with_raw_response.create(model="x", messages=[{"role": "user", "content": "fix my python"}])
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("medium", "rule:code")
    assert raw.parse().choices[0].message.content == "Reply from medium."
    assert medium_sidecar.metric("shoal_requests_total", {"tier": "medium", "reason": "hop", "outcome": "ok"}) == 1.0
    assert fresh_engines["frontier"].stats()["requests"] == 0
    # Tokens and cost are counted once, by the sidecar that routed the request.
    assert small_sidecar.metric("shoal_tokens_total", {"tier": "medium", "kind": "completion"}) == 3.0
    assert medium_sidecar.metric("shoal_tokens_total", {"tier": "medium", "kind": "completion"}) is None

    fresh_engines["medium"].configure(waiting=5)
    wait_for(lambda: medium_sidecar.metric("shoal_engine_requests_waiting") == 5.0, "peer queue scraped")
    raw = client.chat.completions.with_raw_response.create(model="x", messages=[{"role": "user", "content": "fix my python"}])
    assert (raw.headers["x-shoal-tier"], raw.headers["x-shoal-route-reason"]) == ("frontier", "fallback")
    assert small_sidecar.metric("shoal_fallbacks_total", {"tier": "medium", "cause": "saturated"}) == 1.0
    # A saturated peer is not a broken one: its circuit stays closed.
    assert small_sidecar.metric("shoal_upstream_circuit_open", {"tier": "medium"}) == 0.0
