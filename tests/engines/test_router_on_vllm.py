"""The router sidecar in front of real vLLM: adapters loaded at run time, queue depth read
by the autoscaler's scrape, readiness and drain.

Each test starts its own `shoal router` on the configuration the operator renders for the
tier; the session's one engine is shared. A new sidecar unloads whatever adapters an
earlier one left loaded and are not in its own set, so tests do not leak into each other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import signal
import time

import httpx
import pytest

from shoal.controller.metrics_source import PodTarget, scrape_pods
from shoal.testing.vllm_server import adapter_entry, cpu_test_tier
from tests.router.conftest import wait_for

from .conftest import engine_models, router_config

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]


def tier_with(vllm_engine, adapters):
    return cpu_test_tier(port=vllm_engine.port, adapters=adapters, max_loras=2, max_cpu_loras=4)


def ask(router, model: str, max_tokens: int = 16) -> tuple[int, dict[str, str], dict]:
    status, headers, body = router.post("/v1/chat/completions", {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": max_tokens})
    return status, headers, json.loads(body)


def answer(router, model: str) -> str:
    status, headers, body = ask(router, model)
    assert status == 200, body
    assert headers["x-shoal-tier"] == "cpu"
    return body["choices"][0]["message"]["content"]


def adapter_states(router) -> dict[str, tuple[str, str]]:
    _, text = router.get("/adapters")
    return {a["name"]: (a["state"], a["source"]) for a in json.loads(text)["adapters"]}


def test_pod_is_ready_only_once_its_serving_adapters_are_loaded_and_each_answers_as_trained(vllm_engine, start_router):
    # A serving set with one adapter the engine cannot load (no such folder): never ready.
    broken = tier_with(vllm_engine, [adapter_entry("alpha", "alpha"), adapter_entry("bravo", "missing")])
    router = start_router(router_config(broken, vllm_engine))
    wait_for(lambda: adapter_states(router).get("bravo", ("",))[0] == "Failed", "bravo to fail loading", timeout=60)
    status, text = router.get("/readyz")
    assert status == 503
    assert text.startswith("adapters not loaded yet: bravo; bravo is Failed (engine answered")
    assert router.metric("shoal_adapter_loaded", {"adapter": "alpha"}) == 1.0
    assert router.metric("shoal_adapter_loaded", {"adapter": "bravo"}) == 0.0
    assert router.metric("shoal_adapter_load_failures_total", {"adapter": "bravo"}) >= 1.0

    # The ConfigMap is fixed: the sidecar retries with the new source and the pod turns ready.
    fixed = tier_with(vllm_engine, [{**adapter_entry("alpha", "alpha"), "cost": {"costCenter": "team-a"}}, adapter_entry("bravo", "bravo")])
    router.write_config(router_config(fixed, vllm_engine))
    wait_for(lambda: router.get("/readyz")[0] == 200, "router ready", timeout=90)
    loaded = engine_models(vllm_engine)
    assert loaded["alpha"] == f"{vllm_engine.assets}/adapters/alpha"
    assert loaded["bravo"] == f"{vllm_engine.assets}/adapters/bravo"

    status, _, body = ask(router, "alpha")
    assert status == 200 and body["choices"][0]["message"]["content"].startswith("ALPHA")
    assert answer(router, "bravo").startswith("BRAVO")
    assert "Paris" in answer(router, "smollm2")
    # Tokens are attributed to the adapter and its cost center; the base model's are not.
    labels = {"tier": "cpu", "adapter": "alpha", "cost_center": "team-a"}
    # (Counted just after the response is written: waited for, not assumed.)
    wait_for(lambda: router.metric("shoal_adapter_requests_total", {"adapter": "bravo", "cost_center": ""}) == 1.0, "bravo counted")
    assert router.metric("shoal_adapter_requests_total", labels) == 1.0
    assert router.metric("shoal_adapter_tokens_total", {**labels, "kind": "completion"}) == body["usage"]["completion_tokens"]
    assert router.metric("shoal_adapter_requests_total", {"adapter": "smollm2"}) is None
    assert {m["id"] for m in json.loads(router.get("/v1/models")[1])["data"]} == {"cpu", "alpha", "bravo"}


def test_changing_an_adapter_source_swaps_it_in_the_running_engine_and_removal_unloads_it(vllm_engine, start_router):
    tier = tier_with(vllm_engine, [adapter_entry("task", "alpha"), adapter_entry("other", "bravo")])
    router = start_router(router_config(tier, vllm_engine))
    wait_for(lambda: router.get("/readyz")[0] == 200, "router ready", timeout=90)
    assert answer(router, "task").startswith("ALPHA")
    engine_pid = vllm_engine.pid

    # A new source for "task" (the bravo fine-tune), "other" removed: no restart anywhere.
    moved = tier_with(vllm_engine, [adapter_entry("task", "bravo")])
    router.write_config(router_config(moved, vllm_engine))
    wait_for(lambda: adapter_states(router) == {"task": ("Loaded", "pvc://test-models/adapters/bravo")}, "task re-pointed", timeout=60)
    wait_for(lambda: "other" not in engine_models(vllm_engine), "other unloaded", timeout=30)
    assert engine_models(vllm_engine)["task"] == f"{vllm_engine.assets}/adapters/bravo"
    status, headers, body = ask(router, "task")
    assert status == 200 and headers["x-shoal-route-reason"] != "cache"
    assert body["choices"][0]["message"]["content"].startswith("BRAVO")
    assert vllm_engine.pid == engine_pid
    assert router.get("/readyz")[0] == 200


def test_autoscaler_reads_the_real_engine_queue_through_the_sidecar(vllm_engine, start_router):
    # max-num-seqs is 8: ten long requests at once are 8 running and 2 waiting.
    # The two queued requests wait for a slot longer than the default 30 s first-byte
    # timeout on two busy cores: the test gives them time, it is not about timeouts.
    config = router_config(tier_with(vllm_engine, []), vllm_engine, fallback={"firstByteTimeoutSeconds": 600})
    router = start_router(config)
    wait_for(lambda: router.get("/readyz")[0] == 200, "router ready", timeout=60)
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 64, "ignore_eos": True, "temperature": 0}

    async def observe() -> tuple[float, float]:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 120
            seen = None
            while time.monotonic() < deadline:
                (load,) = await scrape_pods(client, [PodTarget("cpu-0", "127.0.0.1", router.port)], clock=time.monotonic)
                seen = (load.waiting, load.running)
                if seen == (2.0, 8.0):
                    return seen
                await asyncio.sleep(0.1)
            return seen

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(lambda: httpx.post(f"{router.base_url}/chat/completions", json=body, timeout=600)) for _ in range(10)]
        assert asyncio.run(observe()) == (2.0, 8.0)
        results = [f.result() for f in futures]
    assert [r.status_code for r in results] == [200] * 10
    assert {r.json()["usage"]["completion_tokens"] for r in results} == {64}


def test_sigterm_drains_the_sidecar_while_the_engine_finishes_the_request_in_flight(vllm_engine, start_router):
    # A drain long enough for the request on two busy cores (the default is 20 s).
    config = router_config(tier_with(vllm_engine, []), vllm_engine, server={"drainSeconds": 300}, fallback={"firstByteTimeoutSeconds": 600})
    router = start_router(config)
    wait_for(lambda: router.get("/readyz")[0] == 200, "router ready", timeout=60)
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 200, "ignore_eos": True, "temperature": 0}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(lambda: httpx.post(f"{router.base_url}/chat/completions", json=body, timeout=600))
        wait_for(lambda: router.metric("shoal_engine_requests_running") == 1.0, "the request running in the engine", timeout=60)
        router.process.send_signal(signal.SIGTERM)
        wait_for(lambda: router.get("/readyz") == (503, "draining"), "readiness to drop", timeout=10)
        response = future.result()
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 200
    assert router.process.wait(timeout=60) == 0
