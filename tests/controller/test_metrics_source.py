"""Reading queue depth from the sidecars (and from Prometheus) with an injected transport."""

from __future__ import annotations

import asyncio

import httpx

from shoal.controller.metrics_source import (
    PodTarget,
    parse_queue_depth,
    query_prometheus,
    scrape_pods,
    spread_total,
)
from shoal.plan.autoscale import PodLoad

METRICS = """\
# HELP shoal_engine_requests_waiting Requests waiting in the local engine's queue.
# TYPE shoal_engine_requests_waiting gauge
shoal_engine_requests_waiting 3.0
# HELP shoal_engine_requests_running Requests running in the local engine.
# TYPE shoal_engine_requests_running gauge
shoal_engine_requests_running 12.0
# TYPE shoal_router_requests_in_flight gauge
shoal_router_requests_in_flight 15.0
"""


def run(coro):
    return asyncio.run(coro)


def sidecars(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_every_ready_pod_is_scraped_and_stamped_with_the_clock():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics"
        body = METRICS if request.url.host == "10.0.0.1" else METRICS.replace(" 3.0", " 0.0").replace(" 12.0", " 5.0")
        return httpx.Response(200, text=body)

    async def scrape():
        async with sidecars(handler) as client:
            return await scrape_pods(client, [PodTarget("a", "10.0.0.1", 8080), PodTarget("b", "10.0.0.2", 8080)], clock=lambda: 42.0)

    assert run(scrape()) == (PodLoad("a", 3.0, 12.0, 42.0), PodLoad("b", 0.0, 5.0, 42.0))


def test_a_pod_that_errs_times_out_or_lacks_a_gauge_is_missing_and_the_others_are_not():
    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host == "10.0.0.2":
            return httpx.Response(503, text="loading")
        if host == "10.0.0.3":
            raise httpx.ReadTimeout("timed out", request=request)
        if host == "10.0.0.4":
            return httpx.Response(200, text="shoal_engine_requests_waiting 1\n")
        if host == "10.0.0.5":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, text=METRICS)

    pods = [PodTarget(f"p{i}", f"10.0.0.{i}", 8080) for i in range(1, 6)]

    async def scrape():
        async with sidecars(handler) as client:
            return await scrape_pods(client, pods, clock=lambda: 7.0)

    assert run(scrape()) == (
        PodLoad("p1", 3.0, 12.0, 7.0),
        PodLoad("p2", None, None, None),
        PodLoad("p3", None, None, None),
        PodLoad("p4", None, None, None),
        PodLoad("p5", None, None, None),
    )


def test_the_scrape_passes_the_short_timeout_to_every_request():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, text=METRICS)

    async def scrape():
        async with sidecars(handler) as client:
            return await scrape_pods(client, [PodTarget("a", "10.0.0.1", 8080)], clock=lambda: 0.0, timeout_seconds=0.5)

    run(scrape())
    assert seen == [{"connect": 0.5, "read": 0.5, "write": 0.5, "pool": 0.5}]


def test_an_ipv6_pod_address_is_bracketed_in_the_url():
    assert PodTarget("a", "fd00::12", 8080).url == "http://[fd00::12]:8080/metrics"


def test_labelled_samples_are_summed_and_garbage_values_are_missing():
    text = 'shoal_engine_requests_waiting{engine="0"} 2\nshoal_engine_requests_waiting{engine="1"} 3\nshoal_engine_requests_running NaN\n'
    assert parse_queue_depth(text) == (5.0, None)


def test_a_prometheus_instant_query_returns_its_single_value():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query"
        assert request.url.params["query"] == "sum(q)"
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1.0, "37"]}]}})

    async def query():
        async with sidecars(handler) as client:
            return await query_prometheus(client, "http://prom:9090/", "sum(q)")

    assert run(query()) == 37.0


def test_a_prometheus_answer_without_exactly_one_series_is_missing():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": []}})

    async def query():
        async with sidecars(handler) as client:
            return await query_prometheus(client, "http://prom:9090", "sum(q)")

    assert run(query()) is None


def test_a_prometheus_total_is_spread_over_the_ready_pods():
    assert spread_total(30.0, ["a", "b", "c"], 5.0) == (PodLoad("a", 0.0, 10.0, 5.0), PodLoad("b", 0.0, 10.0, 5.0), PodLoad("c", 0.0, 10.0, 5.0))
    assert spread_total(None, ["a"], 5.0) == (PodLoad("a", None, None, None),)


def _sidecar_text() -> str:
    """The exposition a router sidecar serves, from the router's own shadow metrics."""
    from prometheus_client import CollectorRegistry, generate_latest

    from shoal.router.shadow import ShadowMetrics

    registry = CollectorRegistry()
    metrics = ShadowMetrics(registry)
    metrics.samples.labels("small", "agree").inc(40)
    metrics.samples.labels("small", "disagree").inc(7)
    metrics.samples.labels("small", "reference_error").inc(3)
    metrics.samples.labels("large", "agree").inc(100)
    metrics.skip("small", "budget")
    return generate_latest(registry).decode()


def test_shadow_counts_are_read_for_the_tiers_rungs_only_and_without_reference_errors():
    from shoal.controller.metrics_source import parse_shadow_counts
    from shoal.plan.drift import PodCounts

    assert parse_shadow_counts(_sidecar_text(), frozenset({"small"})) == PodCounts(40.0, 7.0)
    assert parse_shadow_counts(_sidecar_text(), frozenset({"small", "large"})) == PodCounts(140.0, 7.0)
    assert parse_shadow_counts(METRICS, frozenset({"small"})) == PodCounts(0.0, 0.0)


def test_a_pod_whose_shadow_counts_cannot_be_read_is_left_out():
    from shoal.controller.metrics_source import scrape_shadow_counts
    from shoal.plan.drift import PodCounts

    text = _sidecar_text()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "10.0.0.2":
            return httpx.Response(500)
        return httpx.Response(200, text=text)

    async def go():
        async with sidecars(handler) as client:
            pods = [PodTarget("a", "10.0.0.1", 8080), PodTarget("b", "10.0.0.2", 8080)]
            return await scrape_shadow_counts(client, pods, frozenset({"small"}))

    assert run(go()) == {"a": PodCounts(40.0, 7.0)}
