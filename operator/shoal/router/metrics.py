"""The router's Prometheus metrics, registered on a registry the caller passes in.

Labels are bounded: `tier` (at most 16 per policy), `reason` (decision.REASONS plus at
most 64 rule:NAME), `outcome` and `cause` (closed sets below), `kind` (prompt or
completion). Never a request id, a client address or an API key.

The autoscaler reads `shoal_engine_requests_waiting`, `shoal_engine_requests_running`
(the local engine's queue, scraped from its /metrics) and `shoal_router_requests_in_flight`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .failures import CAUSE_NAMES

OUTCOMES = ("ok", "client_error", "upstream_error", "timeout", "no_upstream", "rate_limited", "budget", "cancelled")
CAUSES = CAUSE_NAMES

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "shoal_requests", "Requests answered, by the tier that answered, route reason and outcome.",
            ["tier", "reason", "outcome"], registry=registry,
        )
        self.escalations = Counter(
            "shoal_escalations", "Requests served by a tier above the one first chosen for them, by reason.",
            ["tier", "reason"], registry=registry,
        )
        self.spillovers = Counter(
            "shoal_spillovers",
            "Requests that skipped a tier because it was saturated or scaled to zero, by the tier skipped.",
            ["tier"], registry=registry,
        )
        self.fallbacks = Counter(
            "shoal_fallbacks", "Attempts that failed over from a tier to the next, by failing tier and cause.",
            ["tier", "cause"], registry=registry,
        )
        self.cache_hits = Counter("shoal_cache_hits", "Requests answered from the response cache.", ["tier"], registry=registry)
        self.cache_misses = Counter("shoal_cache_misses", "Cacheable requests not found in the cache.", ["tier"], registry=registry)
        self.cache_entries = Gauge("shoal_cache_entries", "Responses held in the cache.", registry=registry)
        self.cache_bytes = Gauge("shoal_cache_bytes", "Bytes of responses held in the cache.", registry=registry)
        self.tokens = Counter("shoal_tokens", "Tokens processed, by tier and kind (prompt or completion).", ["tier", "kind"], registry=registry)
        self.cost = Counter("shoal_cost_usd", "Estimated cost of the requests served, in US dollars.", ["tier"], registry=registry)
        self.upstream_latency = Histogram(
            "shoal_upstream_latency_seconds", "Time from sending a request upstream to its last byte.",
            ["tier"], buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.ttft = Histogram(
            "shoal_time_to_first_token_seconds", "Time from sending a streaming request upstream to its first chunk.",
            ["tier"], buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.engine_waiting = Gauge(
            "shoal_engine_requests_waiting", "Requests waiting in the local engine's queue (vllm:num_requests_waiting).", registry=registry
        )
        self.engine_running = Gauge(
            "shoal_engine_requests_running", "Requests running in the local engine (vllm:num_requests_running).", registry=registry
        )
        self.in_flight = Gauge("shoal_router_requests_in_flight", "Requests the router is handling now.", registry=registry)
        self.reloads = Counter("shoal_config_reloads", "Configuration reloads, by outcome (ok or invalid).", ["outcome"], registry=registry)
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        self.circuit_open = Gauge("shoal_upstream_circuit_open", "1 while an upstream's circuit breaker is open.", ["tier"], registry=registry)

    def child(self, metric, *labels: str):  # type: ignore[no-untyped-def]
        """`metric.labels(*labels)`, memoised: the label sets are few and bounded, and the
        lookup is on every request's path."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
