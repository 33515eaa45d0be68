"""The router sidecar's HTTP server: OpenAI-compatible in, the tier ladder out.

One request, in order:
  1. the body is read within the size limit (413 before reading an oversized body) and
     within the body timeout, parsed once and checked (400 naming the bad field);
  2. the decision (shoal.router.decision) picks the starting tier and the ladder;
  3. deterministic requests may be answered from the cache (keyed by tier + checkpoint);
  4. the request goes to the tier's upstream: this pod's engine, another tier's Service
     (marked with x-shoal-hop so that sidecar serves it with its own engine), or an
     external API with its key read from a mounted file;
  5. on connect error, 5xx, 429 or timeout before the first byte, the next tier is tried,
     within `fallback.maxAttempts`, the retry budget and each upstream's circuit breaker.
     Once a byte has reached the client there is no retry: a stream that breaks ends with
     an SSE error event.
  6. tokens and cost are counted from the response's usage.

The configuration is reloaded when its file changes; each request keeps the snapshot it
started with, so a reload never disturbs requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from shoal.api.routerconfig import RouterConfig, UpstreamTier

from . import decision as routing
from .cache import ResponseCache, cache_key
from .classifier import Classifier
from .config import InvalidConfig, file_signature, load_config
from .errors import (
    BadRequest,
    BudgetExceeded,
    NoHealthyUpstream,
    RouterError,
    TooLarge,
    UpstreamBroke,
    UpstreamTimeout,
)
from .metrics import RouterMetrics
from .resilience import CircuitBreaker, HourlySpend, RetryBudget
from .upstream import ConnectFailed, Response, UpstreamError, UpstreamPool

log = logging.getLogger("shoal.router")

TIER_HEADER = "x-shoal-tier"
REASON_HEADER = "x-shoal-route-reason"
HOP_HEADER = "x-shoal-hop"
SATURATED_HEADER = "x-shoal-saturated"
META_HEADER_PREFIX = "x-shoal-meta-"
# The largest body the server will ever accept, whatever the config says (the RoutePolicy
# schema's own maximum); the per-config limit is enforced per request.
ABSOLUTE_MAX_BODY = 256 * 1024 * 1024

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}

try:  # orjson parses request bodies about 3x faster; optional, the stdlib is the fallback.
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the image
    _loads = json.loads


@dataclass
class Settings:
    """How the `shoal router` program runs. Defaults are what the sidecar uses."""

    config_path: Path
    host: str = "0.0.0.0"
    port: int = 8080
    # How often the config file, mounted API keys and classifier are checked for changes.
    reload_interval_seconds: float = 1.0


class Failure(Exception):
    """One upstream attempt failed in a way that may fall back to the next tier."""

    def __init__(self, cause: str, kind: str, message: str, trips_breaker: bool = True) -> None:
        super().__init__(message)
        self.cause = cause  # metrics.CAUSES
        self.kind = kind  # FallbackSpec.on: connectError, serverError, rateLimited, timeout
        self.message = message
        self.trips_breaker = trips_breaker


@dataclass(frozen=True)
class Snapshot:
    """Everything a request needs from one version of the config, prepared once."""

    config: RouterConfig
    policy: routing.Policy
    tiers: dict[str, UpstreamTier]
    local: UpstreamTier
    classifier: Classifier | None
    auth: dict[str, str]  # tier name -> "Bearer ..." (never logged)
    static_states: dict[str, routing.TierState]
    models_body: bytes
    watched: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, config: RouterConfig) -> Snapshot:
        auth = {}
        watched = []
        for tier in config.tiers:
            if tier.api_key_file:
                watched.append(tier.api_key_file)
                try:
                    key = Path(tier.api_key_file).read_text().strip()
                except OSError as exc:
                    raise InvalidConfig(f"tier {tier.name}: API key file {tier.api_key_file} is unreadable: {exc.strerror}") from exc
                auth[tier.name] = f"Bearer {key}"
        classifier = None
        if config.classifier is not None:
            watched.append(config.classifier.path)
            try:
                classifier = Classifier.load(config.classifier.path)
            except (OSError, ValueError) as exc:
                raise InvalidConfig(f"classifier {config.classifier.path}: {exc}") from exc
        names = []
        for tier in config.tiers:
            names.append(tier.name)
            names.extend(tier.aliases)
        models = {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "shoal"} for n in dict.fromkeys(names)]}
        return cls(
            config=config,
            policy=routing.Policy.from_router_config(config),
            tiers={t.name: t for t in config.tiers},
            local=config.tier(config.local_tier),
            classifier=classifier,
            auth=auth,
            static_states={t.name: routing.TierState(scaled_to_zero=True) for t in config.tiers if t.scaled_to_zero},
            models_body=json.dumps(models).encode(),
            watched=watched,
        )


class Router:
    """The sidecar. `app()` is the aiohttp application; `start()`/`stop()` run the
    background work (config reload, engine scrape) and the upstream connection pool."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = RouterMetrics(self.registry)
        self.clock = clock
        config = load_config(settings.config_path)
        self.snapshot = Snapshot.build(config)
        self._signature = file_signature([settings.config_path, *self.snapshot.watched])
        cache = config.cache
        self.cache = ResponseCache(cache.max_entries, cache.max_bytes, cache.ttl_seconds, clock=clock)
        self.retry_budget = RetryBudget(config.fallback.retry_budget_percent, clock=clock)
        self.spend = HourlySpend(clock=clock)
        self.breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self.engine_waiting: float | None = None
        self.engine_running: float | None = None
        self.engine_seen = config.engine.metrics_url is None
        self.tier_states: dict[str, routing.TierState] = dict(self.snapshot.static_states)
        self.draining = False
        self.in_flight = 0
        self._session: aiohttp.ClientSession | None = None  # engine scrapes only
        self.upstreams: UpstreamPool | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=ABSOLUTE_MAX_BODY, handler_args={"max_field_size": 16384})
        for path in ENDPOINTS:
            app.router.add_post(path, self.handle_inference)
        app.router.add_get("/v1/models", self.handle_models)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/readyz", self.handle_readyz)
        app.router.add_get("/metrics", self.handle_metrics)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        server = self.snapshot.config.server
        self.upstreams = UpstreamPool(max_idle_per_origin=server.max_upstream_connections, idle_seconds=30.0, connect_timeout=10.0)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._tasks = [asyncio.create_task(self._reload_loop()), asyncio.create_task(self._scrape_loop())]

    async def _on_cleanup(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self.upstreams is not None:
            self.upstreams.close()

    # --- config reload ---------------------------------------------------------------------

    def reload_if_changed(self) -> bool:
        """Swap in the config file's new content if it (or a key or classifier file it
        names) changed and is valid. Returns whether a new snapshot is in use."""
        signature = file_signature([self.settings.config_path, *self.snapshot.watched])
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            snapshot = Snapshot.build(load_config(self.settings.config_path))
        except InvalidConfig as exc:
            self.metrics.child(self.metrics.reloads, "invalid").inc()
            log.error("config reload rejected, keeping the previous configuration: %s", exc)
            return False
        self._signature = file_signature([self.settings.config_path, *snapshot.watched])
        config = snapshot.config
        self.cache.resize(config.cache.max_entries, config.cache.max_bytes, config.cache.ttl_seconds)
        self.retry_budget.percent = config.fallback.retry_budget_percent
        for breaker in self.breakers.values():
            breaker.failures = config.fallback.circuit_breaker.consecutive_failures
            breaker.open_seconds = config.fallback.circuit_breaker.open_seconds
        self.snapshot = snapshot
        self._refresh_states()
        self.metrics.child(self.metrics.reloads, "ok").inc()
        log.info("configuration reloaded")
        return True

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_seconds)
            try:
                self.reload_if_changed()
            except Exception:  # a reload must never take the server down
                log.exception("config reload failed")

    # --- engine queue depth ---------------------------------------------------------------

    async def _scrape_loop(self) -> None:
        while True:
            engine = self.snapshot.config.engine
            if engine.metrics_url and self._session is not None:
                await self.scrape_engine(engine.metrics_url)
            await asyncio.sleep(engine.scrape_interval_seconds)

    async def scrape_engine(self, url: str) -> None:
        assert self._session is not None
        try:
            async with asyncio.timeout(2.0):
                async with self._session.get(url) as response:
                    text = await response.text() if response.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError, OSError):
            text = ""
        if not text:
            # Unknown, not zero: the decision never spills on an unknown queue.
            self.engine_waiting = self.engine_running = None
            self.engine_seen = False
        else:
            self.engine_waiting, self.engine_running = parse_engine_metrics(text)
            self.engine_seen = True
            self.metrics.engine_waiting.set(self.engine_waiting)
            self.metrics.engine_running.set(self.engine_running)
        self._refresh_states()

    def _refresh_states(self) -> None:
        states = dict(self.snapshot.static_states)
        if self.engine_waiting is not None:
            states[self.snapshot.local.name] = routing.TierState(waiting=self.engine_waiting)
        self.tier_states = states

    # --- small endpoints ----------------------------------------------------------------

    async def handle_healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def handle_readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="draining")
        if not self.engine_seen:
            return web.Response(status=503, text="local engine not answering")
        return web.Response(text="ready")

    async def handle_metrics(self, request: web.Request) -> web.Response:
        self.metrics.cache_entries.set(len(self.cache))
        self.metrics.cache_bytes.set(self.cache.bytes)
        self.metrics.in_flight.set(self.in_flight)
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_models(self, request: web.Request) -> web.Response:
        return web.Response(body=self.snapshot.models_body, content_type="application/json")

    # --- inference ------------------------------------------------------------------------

    async def handle_inference(self, request: web.Request) -> web.StreamResponse:
        # The gauge itself is set when /metrics is scraped; counting here is enough.
        self.in_flight += 1
        snap = self.snapshot
        try:
            return await self._inference(request, snap)
        except RouterError as exc:
            self.metrics.child(self.metrics.requests, exc.tier or "none", exc.reason or "none", _OUTCOME[type(exc)]).inc()
            headers = {}
            if isinstance(exc, TooLarge):
                headers["Connection"] = "close"
            if exc.tier is not None:
                headers[TIER_HEADER] = exc.tier
            if exc.reason is not None:
                headers[REASON_HEADER] = exc.reason
            return exc.response(headers)
        except asyncio.CancelledError:
            self.metrics.child(self.metrics.requests, "none", "none", "cancelled").inc()
            raise
        finally:
            self.in_flight -= 1

    async def _read_body(self, request: web.Request, snap: Snapshot) -> bytes:
        limit = snap.config.limits.max_request_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise TooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes", "request_too_large")
        if length is not None and request.content.is_eof():
            # The whole body came with the head (the usual case): no timer needed.
            return await request.read()
        try:
            async with asyncio.timeout(snap.config.server.body_timeout_seconds):
                if length is not None:
                    return await request.read()
                chunks = []
                size = 0
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"request body exceeds the limit of {limit} bytes", "request_too_large")
                    chunks.append(chunk)
                return b"".join(chunks)
        except TimeoutError as exc:
            raise BadRequest("request body was not received in time", "body_timeout") from exc

    async def _inference(self, request: web.Request, snap: Snapshot) -> web.StreamResponse:
        kind = ENDPOINTS[request.path]
        raw = await self._read_body(request, snap)
        body = parse_body(raw, kind)
        stream = body.get("stream") is True
        headers = request.headers

        if headers.get(HOP_HEADER):
            return await self._serve_hop(request, snap, raw, body, stream)

        meta = {k[len(META_HEADER_PREFIX):]: v for k, v in headers.items() if k.lower().startswith(META_HEADER_PREFIX)} if snap.policy.rules else None
        features = routing.request_features(body, header_tier=headers.get(TIER_HEADER), header_metadata=meta)
        budget = snap.config.budgets
        exhausted = budget.max_usd_per_hour is not None and self.spend.total() >= budget.max_usd_per_hour
        decided = routing.decide(snap.policy, features, self.tier_states, snap.classifier.predict if snap.classifier else None, exhausted)
        for skipped in decided.spilled_from:
            self.metrics.child(self.metrics.spillovers, skipped).inc()
        if decided.tier is None:
            exc = BudgetExceeded("the spending budget for this policy is exhausted", "budget_exceeded")
            exc.reason = routing.BUDGET
            raise exc

        key = None
        if snap.config.cache.mode == "exactMatch" and not stream and cacheable(body):
            tier = snap.tiers[decided.tier]
            key = cache_key(request.path, tier.name, tier.checkpoint, raw)
            hit = self.cache.get(key)
            if hit is not None:
                self.metrics.child(self.metrics.cache_hits, tier.name).inc()
                self.metrics.child(self.metrics.requests, tier.name, routing.CACHE, "ok").inc()
                return web.Response(
                    body=hit.body,
                    headers={"Content-Type": hit.content_type, TIER_HEADER: tier.name, REASON_HEADER: routing.CACHE},
                )
            self.metrics.child(self.metrics.cache_misses, tier.name).inc()

        return await self._forward(request, snap, raw, body, stream, decided, features, key)

    async def _serve_hop(self, request: web.Request, snap: Snapshot, raw: bytes, body: dict[str, Any], stream: bool) -> web.StreamResponse:
        """A request another tier's sidecar sent here: this pod's engine serves it, or it
        is refused at once (503, x-shoal-saturated) so the sender can move up the ladder."""
        local = snap.local
        limit = local.max_queue_depth
        if limit is not None and self.engine_waiting is not None and self.engine_waiting > limit:
            self.metrics.child(self.metrics.requests, local.name, routing.HOP, "no_upstream").inc()
            return NoHealthyUpstream(f"tier {local.name} is saturated", "saturated").response({SATURATED_HEADER: "1", TIER_HEADER: local.name})
        decided = routing.Decision(tier=local.name, reason=routing.HOP, ladder=(local.name,))
        return await self._forward(request, snap, raw, body, stream, decided, None, None)

    async def _forward(
        self,
        request: web.Request,
        snap: Snapshot,
        raw: bytes,
        body: dict[str, Any],
        stream: bool,
        decided: routing.Decision,
        features: routing.Request | None,
        key: bytes | None,
    ) -> web.StreamResponse:
        fallback = snap.config.fallback
        self.retry_budget.record_request()
        last: Failure | None = None
        attempts = 0
        for tier_name in decided.ladder:
            tier = snap.tiers[tier_name]
            breaker = self._breaker(tier)
            if not breaker.allow():
                last = Failure("circuit_open", "connectError", f"tier {tier.name}: circuit open after repeated failures", trips_breaker=False)
                self.metrics.child(self.metrics.fallbacks, tier.name, "circuit_open").inc()
                continue
            if attempts >= fallback.max_attempts:
                breaker.release()
                break
            if attempts > 0 and not self.retry_budget.try_retry():
                breaker.release()
                self.metrics.child(self.metrics.fallbacks, tier.name, "retry_budget").inc()
                break
            attempts += 1
            reason = decided.reason if tier_name == decided.tier else routing.FALLBACK
            try:
                response = await self._attempt(request, snap, tier, raw, body, stream, reason, features, decided, key)
            except Failure as failure:
                if failure.trips_breaker:
                    breaker.record_failure()
                    self._set_circuit_gauge(tier, breaker)
                else:
                    breaker.release()
                self.metrics.child(self.metrics.fallbacks, tier.name, failure.cause).inc()
                last = failure
                if failure.kind not in fallback.on:
                    break
                continue
            except BaseException:
                breaker.release()
                raise
            breaker.record_success()
            self._set_circuit_gauge(tier, breaker)
            return response
        error = _final_error(last)
        error.tier, error.reason = decided.tier, decided.reason
        raise error

    def _breaker(self, tier: UpstreamTier) -> CircuitBreaker:
        breaker = self.breakers.get((tier.name, tier.url))
        if breaker is None:
            spec = self.snapshot.config.fallback.circuit_breaker
            breaker = self.breakers[(tier.name, tier.url)] = CircuitBreaker(spec.consecutive_failures, spec.open_seconds, clock=self.clock)
        return breaker

    def _set_circuit_gauge(self, tier: UpstreamTier, breaker: CircuitBreaker) -> None:
        self.metrics.child(self.metrics.circuit_open, tier.name).set(0 if breaker.state == "closed" else 1)

    async def _attempt(
        self,
        request: web.Request,
        snap: Snapshot,
        tier: UpstreamTier,
        raw: bytes,
        body: dict[str, Any],
        stream: bool,
        reason: str,
        features: routing.Request | None,
        decided: routing.Decision,
        key: bytes | None,
    ) -> web.StreamResponse:
        assert self.upstreams is not None
        payload = raw if body.get("model") == tier.model else json.dumps({**body, "model": tier.model}).encode()
        out_headers = {"Content-Type": "application/json"}
        if tier.kind == "service":
            out_headers[HOP_HEADER] = "1"
            out_headers[TIER_HEADER] = tier.name
        auth = snap.auth.get(tier.name)
        if auth is not None:
            out_headers["Authorization"] = auth
        request_id = request.headers.get("x-request-id")
        if request_id is not None and len(request_id) <= 128 and request_id.isprintable():
            out_headers["x-request-id"] = request_id
        url = tier.url + request.path[3:]  # the part after /v1
        first_byte = snap.config.fallback.first_byte_timeout_seconds
        total = min(tier.timeout_seconds, snap.config.limits.request_timeout_seconds)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(min(first_byte, total)):
                upstream = await self.upstreams.request(url, payload, out_headers)
        except TimeoutError as exc:
            raise Failure("timeout", "timeout", f"tier {tier.name}: no response within {min(first_byte, total):g}s") from exc
        except ConnectFailed as exc:
            raise Failure("connect_error", "connectError", f"tier {tier.name}: cannot connect") from exc
        except UpstreamError as exc:
            raise Failure("upstream_broke", "serverError", f"tier {tier.name}: connection broke before a response") from exc

        try:
            status = upstream.status
            if status >= 500 or status == 429:
                if upstream.headers.get(SATURATED_HEADER):
                    raise Failure("rate_limited", "rateLimited", f"tier {tier.name} is saturated", trips_breaker=False)
                if status == 429:
                    raise Failure("rate_limited", "rateLimited", f"tier {tier.name} is rate limiting (429)")
                raise Failure("server_error", "serverError", f"tier {tier.name} answered {status}")
            tier_headers = {TIER_HEADER: tier.name, REASON_HEADER: reason}
            if status != 200:
                # The upstream refused the request itself (4xx): the client must fix it.
                # Passed through as is, never retried elsewhere.
                data = await _read_within(upstream, total)
                self.metrics.child(self.metrics.requests, tier.name, reason, "client_error").inc()
                return web.Response(status=status, body=data, headers={"Content-Type": upstream.content_type, **tier_headers})
            if stream and upstream.content_type == "text/event-stream":
                return await self._relay_stream(request, upstream, tier, tier_headers, reason, started, first_byte, total, features, decided)
            try:
                if upstream.complete:
                    data = await upstream.read()  # already here: no timer needed
                else:
                    async with asyncio.timeout(total):
                        data = await upstream.read()
            except TimeoutError as exc:
                raise Failure("timeout", "timeout", f"tier {tier.name}: response not complete within {total:g}s") from exc
            except UpstreamError as exc:
                raise Failure("upstream_broke", "serverError", f"tier {tier.name}: connection broke mid-response") from exc
        finally:
            # A response not read to its end (a failure, or a client that left mid-stream)
            # closes its connection, which is what cancels the generation upstream.
            upstream.release()

        self.metrics.child(self.metrics.upstream_latency, tier.name).observe(time.perf_counter() - started)
        out = {"Content-Type": upstream.content_type, **tier_headers}
        encoding = upstream.headers.get("content-encoding")
        if encoding is not None and encoding != "identity":
            # Not asked for, but an upstream may still compress: pass it on untouched.
            out["Content-Encoding"] = encoding
            self._account(tier, None, features, decided, reason)
            return web.Response(body=data, headers=out)
        usage = _usage_of(data)
        self._account(tier, usage, features, decided, reason)
        if key is not None and tier.name == decided.tier and upstream.content_type == "application/json":
            self.cache.put(key, data, upstream.content_type)
        return web.Response(body=data, headers=out)

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: Response,
        tier: UpstreamTier,
        tier_headers: dict[str, str],
        reason: str,
        started: float,
        first_byte: float,
        total: float,
        features: routing.Request | None,
        decided: routing.Decision,
    ) -> web.StreamResponse:
        """Pass SSE through chunk by chunk. The client's response starts only once the
        upstream's first chunk is here, so a failure before it can still fall back."""
        try:
            async with asyncio.timeout(first_byte):
                first = await upstream.readany()
        except TimeoutError as exc:
            raise Failure("timeout", "timeout", f"tier {tier.name}: no first token within {first_byte:g}s") from exc
        except UpstreamError as exc:
            raise Failure("upstream_broke", "serverError", f"tier {tier.name}: stream broke before the first token") from exc
        if not first:
            raise Failure("upstream_broke", "serverError", f"tier {tier.name}: empty stream")
        self.metrics.child(self.metrics.ttft, tier.name).observe(time.perf_counter() - started)

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **tier_headers})
        await response.prepare(request)
        # From here on bytes have reached the client: whatever happens, no retry.
        tail = first[-4096:]
        events = first.count(b"data:")
        outcome = "ok"
        try:
            await response.write(first)
            deadline = asyncio.timeout(total)
            async with deadline:
                while chunk := await upstream.readany():
                    await response.write(chunk)
                    events += chunk.count(b"data:")
                    tail = (tail + chunk)[-4096:]
        except TimeoutError:
            outcome = "timeout"
            await _write_stream_error(response, UpstreamTimeout(f"tier {tier.name}: stream not complete within {total:g}s", "upstream_timeout"))
        except UpstreamError as exc:
            if request.transport is None or request.transport.is_closing():
                raise asyncio.CancelledError from exc
            outcome = "upstream_error"
            log.warning("tier %s: stream broke mid-way (%s)", tier.name, type(exc).__name__)
            await _write_stream_error(response, UpstreamBroke(f"tier {tier.name}: the stream broke mid-way", "upstream_broke"))
        except (ConnectionResetError, ConnectionError) as exc:
            # The client went away: closing the upstream response (in the caller's
            # finally) cancels the generation.
            raise asyncio.CancelledError from exc
        self.metrics.child(self.metrics.upstream_latency, tier.name).observe(time.perf_counter() - started)
        usage = _stream_usage(tail)
        if usage is None:
            # No usage event (the client did not ask for one): estimate one token per event.
            usage = (features.prompt_tokens if features else 0, max(events - 2, 0))
        self._account(tier, usage, features, decided, reason, outcome)
        try:
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        return response

    def _account(
        self,
        tier: UpstreamTier,
        usage: tuple[int, int] | None,
        features: routing.Request | None,
        decided: routing.Decision,
        reason: str,
        outcome: str = "ok",
    ) -> None:
        m = self.metrics
        m.child(m.requests, tier.name, reason, outcome).inc()
        if decided.reason == routing.HOP:
            # The sidecar that forwarded the request counts its tokens and cost.
            return
        if reason == routing.FALLBACK:
            m.child(m.escalations, tier.name, routing.FALLBACK).inc()
        elif decided.reason in (routing.SPILLOVER, routing.BUDGET) or (
            decided.reason == routing.LOW_CONFIDENCE and decided.predicted is not None and decided.predicted.tier != tier.name
        ):
            # Started above the tier it would otherwise have: an escalation by decision.
            m.child(m.escalations, tier.name, decided.reason).inc()
        if usage is None:
            return
        prompt, completion = usage
        m.child(m.tokens, tier.name, "prompt").inc(prompt)
        m.child(m.tokens, tier.name, "completion").inc(completion)
        cost = prompt * tier.input_usd_per_token + completion * tier.output_usd_per_token
        if cost:
            m.child(m.cost, tier.name).inc(cost)
            if tier.kind == "external":
                self.spend.add(cost)


# --- helpers -------------------------------------------------------------------------------


def parse_body(raw: bytes, kind: str) -> dict[str, Any]:
    """Parse and check the fields the router relies on; 400 naming the field otherwise."""
    try:
        body = _loads(raw)
    except (ValueError, RecursionError) as exc:
        # RecursionError: the stdlib parser on absurdly deep nesting ([[[[...).
        raise BadRequest(f"request body is not valid JSON: {str(exc)[:200]}", "invalid_json") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", "invalid_type")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("model must be a string", "invalid_type", "model")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequest("stream must be a boolean", "invalid_type", "stream")
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty array", "invalid_type", "messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequest(f"messages[{i}] must be an object with a string role", "invalid_type", f"messages[{i}]")
    elif kind == "completions":
        if not isinstance(body.get("prompt"), (str, list)):
            raise BadRequest("prompt must be a string or an array", "invalid_type", "prompt")
    elif not isinstance(body.get("input"), (str, list)):
        raise BadRequest("input must be a string or an array", "invalid_type", "input")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise BadRequest(f"{name} must be a number", "invalid_type", name)
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise BadRequest(f"{name} must be an integer", "invalid_type", name)
    return body


def cacheable(body: dict[str, Any]) -> bool:
    """Deterministic completions only: temperature explicitly 0 and a single choice."""
    return body.get("temperature") == 0 and body.get("n", 1) == 1 and ("messages" in body or "prompt" in body)


def parse_engine_metrics(text: str) -> tuple[float, float]:
    """(waiting, running) from vLLM's Prometheus text, summed over label sets. Only the
    exact names count (vLLM also has e.g. vllm:num_requests_waiting_by_reason)."""
    waiting = running = 0.0
    for line in text.splitlines():
        if not line.startswith("vllm:num_requests_"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name == "vllm:num_requests_waiting":
            waiting += float(line.rsplit(" ", 1)[1])
        elif name == "vllm:num_requests_running":
            running += float(line.rsplit(" ", 1)[1])
    return waiting, running


def _usage_of(data: bytes) -> tuple[int, int] | None:
    try:
        usage = _loads(data).get("usage")
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (ValueError, AttributeError, TypeError):
        return None


def _stream_usage(tail: bytes) -> tuple[int, int] | None:
    for line in reversed(tail.split(b"\n")):
        if line.startswith(b"data:") and b'"usage"' in line:
            found = _usage_of(line[5:].strip())
            if found is not None:
                return found
    return None


async def _read_within(upstream: Response, seconds: float) -> bytes:
    try:
        async with asyncio.timeout(seconds):
            return await upstream.read()
    except (TimeoutError, UpstreamError):
        return b""


async def _write_stream_error(response: web.StreamResponse, error: RouterError) -> None:
    try:
        await response.write(b"data: " + error.body() + b"\n\n")
    except (ConnectionError, RuntimeError):
        pass


_OUTCOME = {
    BadRequest: "client_error",
    TooLarge: "client_error",
    BudgetExceeded: "budget",
    UpstreamBroke: "upstream_error",
    NoHealthyUpstream: "no_upstream",
    UpstreamTimeout: "timeout",
}


def _final_error(last: Failure | None) -> RouterError:
    if last is None:
        return NoHealthyUpstream("no upstream could be tried", "no_healthy_upstream")
    if last.kind == "timeout":
        return UpstreamTimeout(last.message, "upstream_timeout")
    if last.cause in ("server_error", "upstream_broke"):
        return UpstreamBroke(last.message, "upstream_error")
    return NoHealthyUpstream(last.message, "no_healthy_upstream")


# --- running it ----------------------------------------------------------------------------


async def serve(settings: Settings, registry: CollectorRegistry | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain: stop being ready, let requests in flight
    finish (up to server.drainSeconds), and exit."""
    # The *_created series double the size of /metrics and nothing here reads them.
    disable_created_metrics()
    router = Router(settings, registry)
    server = router.snapshot.config.server
    runner = web.AppRunner(
        router.app(),
        handler_cancellation=True,
        access_log=None,
        keepalive_timeout=server.keepalive_timeout_seconds,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=2048, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on http://{settings.host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    router.draining = True
    deadline = loop.time() + router.snapshot.config.server.drain_seconds
    while router.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await runner.cleanup()
