"""The router sidecar's HTTP server: OpenAI-compatible in, the tier ladder out.

One request, in order (a `call.Call` carries it through):
  1. the body is read within the size limit (413 before reading an oversized body) and
     within the body timeout, parsed once and checked (400 naming the bad field);
     a `model` no tier knows is 404 `model_not_found` unless the policy routes unknown
     names (`escalation.onUnknownModel: route`);
  2. the `start` hooks run, then the decision (shoal.router.decision) picks the starting
     tier and the ladder;
  3. deterministic requests may be answered from the cache (keyed by tier + checkpoint);
  4. the ladder is walked (shoal.router.ladder): each attempt goes to the tier's upstream:
     this pod's engine, another tier's Service (marked with x-shoal-hop so that sidecar
     serves it with its own engine), or an external API with its key read from a file;
  5. a failure before the first byte reached the client is one `failures.UpstreamFailure`
     whose cause decides the metric, whether to climb, and the client's error. Once a
     byte has reached the client there is no retry: a stream that breaks ends with an
     SSE error event;
  6. a non-streamed answer (or a stream the cascade holds back whole, `streaming:
     buffer`) passes the `verify` hooks; tokens and cost are counted from the response's
     usage; the `complete` hooks run once the client has it all.

Every response carries `x-request-id` (the client's, else the engine's, else one made
here), the same id as the request's log line.

The configuration is reloaded when its file changes; each request keeps the snapshot it
started with, so a reload never disturbs requests in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import signal
import time
import uuid
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
from .adapters import AdapterAccounting, AdapterSync
from .cache import ResponseCache, cache_key
from .call import STREAM_BODY_LIMIT, Answer, Attempt, Call, Hooks
from .answers import StreamStripper, ask_logprobs, stream_logprobs, stream_usage, strip_logprobs, strip_stream_logprobs, token_logprobs
from .cascade import Cascade, CascadeMetrics
from .classifier import Classifier
from .share import ShareCollector, hold_shares
from .config import InvalidConfig, file_signature, load_config
from .errors import (
    BadRequest,
    BudgetExceeded,
    MethodNotAllowed,
    NoHealthyUpstream,
    NotFound,
    RouterError,
    TooLarge,
    UpstreamBroke,
    UpstreamTimeout,
)
from .failures import CONNECT_ERROR, REJECTED, TIMEOUT, UPSTREAM_BROKE, UpstreamFailure, parse_retry_after, status_cause
from .ladder import LadderWalk
from .metrics import RouterMetrics
from .peers import Peers
from .resilience import CircuitBreaker, HourlySpend, RetryBudget
from .shadow import ShadowMetrics, ShadowSampler
from .upstream import ConnectFailed, Response, UpstreamError, UpstreamPool

log = logging.getLogger("shoal.router")
access_log = logging.getLogger("shoal.router.access")

TIER_HEADER = "x-shoal-tier"
REASON_HEADER = "x-shoal-route-reason"
CHECKPOINT_HEADER = "x-shoal-checkpoint"
HOP_HEADER = "x-shoal-hop"
SATURATED_HEADER = "x-shoal-saturated"
META_HEADER_PREFIX = "x-shoal-meta-"
REQUEST_ID_HEADER = "x-request-id"
# The largest body the server will ever accept, whatever the config says (the RoutePolicy
# schema's own maximum); the per-config limit is enforced per request.
ABSOLUTE_MAX_BODY = 256 * 1024 * 1024

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}

# Client headers that reach every tier: tracing context and the request id.
FORWARDED_HEADERS = ("traceparent", "tracestate")
# Client headers that reach in-cluster tiers only. Authorization: a self-hosted engine
# started with --api-key checks the client's key. The OpenAI-* headers identify the
# client to a gateway in front of an engine. None of these go to an external API: the
# router calls it with the policy's own key, and the client's key or organisation would
# either leak to a third party or not match that key.
IN_CLUSTER_HEADERS = ("authorization", "openai-organization", "openai-project")

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
    # The checkpoint this pod's engine serves (from the pod template, CHECKPOINT_ENV).
    checkpoint: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything a request needs from one version of the config, prepared once."""

    config: RouterConfig
    policy: routing.Policy
    tiers: dict[str, UpstreamTier]
    local: UpstreamTier
    classifier: Classifier | None
    # The loaded model's version (sha256 of the file, as the RoutePolicy status names it)
    # and whether it is the operator's learned one.
    classifier_info: dict[str, str] | None
    auth: dict[str, str]  # tier name -> "Bearer ..." (never logged)
    peers: tuple[UpstreamTier, ...]  # in-cluster tiers served by other sidecars
    models_body: bytes
    # Every `model` a request may name: tier names, aliases and the upstreams' model names.
    known_models: frozenset[str] = frozenset()
    model_objects: dict[str, bytes] = field(default_factory=dict)
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
        classifier_info: dict[str, str] | None = None
        if config.classifier is not None:
            watched.append(config.classifier.path)
            path = config.classifier.path
            if config.classifier.learned_path is not None:
                # The operator's learned model, once it exists (a missing file is part of
                # the watched signature, so its appearance is a reload like any change).
                watched.append(config.classifier.learned_path)
                if Path(config.classifier.learned_path).is_file():
                    path = config.classifier.learned_path
            try:
                raw = Path(path).read_bytes()
                classifier_info = {
                    "version": "sha256:" + hashlib.sha256(raw).hexdigest()[:16],
                    "source": "learned" if path == config.classifier.learned_path else "configured",
                }
                classifier = Classifier.load(path)
                if config.classifier.target_shares:
                    classifier = hold_shares(classifier, config.classifier.target_shares)
            except (OSError, ValueError) as exc:
                raise InvalidConfig(f"classifier {path}: {exc}") from exc
        names = []
        for tier in config.tiers:
            names.append(tier.name)
            names.extend(tier.aliases)
        objects = [{"id": n, "object": "model", "created": 0, "owned_by": "shoal"} for n in dict.fromkeys(names)]
        models = {"object": "list", "data": objects}
        return cls(
            config=config,
            policy=routing.Policy.from_router_config(config),
            tiers={t.name: t for t in config.tiers},
            local=config.tier(config.local_tier),
            classifier=classifier,
            classifier_info=classifier_info,
            auth=auth,
            peers=tuple(t for t in config.tiers if t.kind == "service"),
            models_body=json.dumps(models).encode(),
            known_models=frozenset(names) | {t.model for t in config.tiers},
            model_objects={o["id"]: json.dumps(o).encode() for o in objects},
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
        # What this sidecar knows of the other tiers, from their sidecars (router/peers.py).
        self.peers = Peers(clock=clock)
        self.tier_states: dict[str, routing.TierState] = {}
        self.draining = False
        self.in_flight = 0
        self._session: aiohttp.ClientSession | None = None  # engine scrapes only
        self.upstreams: UpstreamPool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # LoRA adapters of the local engine, loaded at run time (router/adapters.py).
        self.adapters = AdapterSync(self.snapshot.local.url, self.registry, clock=clock)
        self.adapters.set_desired(config.adapters or [])
        # Extension points on the request path (shoal.router.call): empty unless used.
        self.hooks = Hooks()
        # Target shares (shoal.router.share): observed share, target and threshold as gauges.
        self.registry.register(ShareCollector(lambda: self.snapshot.classifier))
        # The cascade (shoal.router.cascade) joins through the `verify` hook while configured.
        self.cascade: Cascade | None = None
        self._cascade_metrics: CascadeMetrics | None = None
        self.adapter_accounting = AdapterAccounting(self.registry)
        self._account_adapters(config)
        self._allowed: dict[str, str] = {}  # path -> its methods, for 405 answers
        # Shadow evaluation (shoal.router.shadow): joins through the `complete` hook, so it
        # only ever sees a request once the client has the whole answer.
        self.shadow: ShadowSampler | None = None
        self._shadow_metrics: ShadowMetrics | None = None
        self._stopping: asyncio.Task[None] | None = None  # a sampler stopped by a reload

    # --- lifecycle -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=ABSOLUTE_MAX_BODY, handler_args={"max_field_size": 16384})
        for path in ENDPOINTS:
            app.router.add_post(path, self.handle_inference)
        app.router.add_get("/v1/models", self.handle_models)
        app.router.add_get("/v1/models/{model}", self.handle_model)
        app.router.add_get("/shoal/state", self.handle_state)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/readyz", self.handle_readyz)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/adapters", self.handle_adapters)
        # A known path with another method is 405, anything else 404, both as OpenAI
        # error JSON. Routes match in order, so these come last and cost the served
        # paths nothing.
        for resource in list(app.router.resources()):
            self._allowed[resource.canonical] = ", ".join(sorted({route.method for route in resource}))
            app.router.add_route("*", resource.canonical, self.handle_wrong_method)
        app.router.add_route("*", "/{path:.*}", self.handle_unknown_path)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        server = self.snapshot.config.server
        self.upstreams = UpstreamPool(max_idle_per_origin=server.max_upstream_connections, idle_seconds=30.0, connect_timeout=10.0)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._tasks = [
            asyncio.create_task(self._reload_loop()),
            asyncio.create_task(self._scrape_loop()),
            asyncio.create_task(self._peer_loop()),
        ]
        self._configure_shadow(self.snapshot)
        self._configure_cascade(self.snapshot)
        if self.snapshot.config.adapters:
            self._tasks.append(asyncio.create_task(self.adapters.run()))

    async def _on_cleanup(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.shadow is not None:
            await self.shadow.stop()
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
        self.adapters.set_desired(config.adapters or [])
        self._account_adapters(config)
        if config.adapters and not self.adapters.running and self._tasks:
            self._tasks.append(asyncio.create_task(self.adapters.run()))
        self.peers.forget(t.name for t in snapshot.peers)
        self._refresh_states()
        self._configure_shadow(snapshot)
        self._configure_cascade(snapshot)
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

    async def _peer_loop(self) -> None:
        while True:
            snap = self.snapshot
            if snap.peers and self._session is not None:
                try:
                    await self.peers.poll(self._session, snap.peers, snap.config.peers)
                except Exception:  # polling must never take the server down
                    log.exception("polling peers failed")
                self._refresh_states()
            await asyncio.sleep(snap.config.peers.poll_interval_seconds)

    def _refresh_states(self) -> None:
        states = self.peers.tier_states()
        if self.engine_waiting is not None:
            states[self.snapshot.local.name] = routing.TierState(waiting=self.engine_waiting)
        self.tier_states = states

    # --- small endpoints ----------------------------------------------------------------

    async def handle_state(self, request: web.Request) -> web.Response:
        """What peers poll (router/peers.py): this pod's tier, serving checkpoint,
        readiness and engine queue. Always 200; `ready` says whether to send work."""
        state = {
            "tier": self.snapshot.local.name,
            "modelTier": self.snapshot.config.model_tier,
            "checkpoint": self.settings.checkpoint,
            "ready": not self.draining and self.engine_seen,
            "waiting": self.engine_waiting,
            "running": self.engine_running,
            # This sidecar's view of its peers (for people and tests; peers ignore it).
            "peers": self.peers.describe(),
            "classifier": self.snapshot.classifier_info,
        }
        return web.json_response(state)

    async def handle_healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def handle_readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="draining")
        if not self.engine_seen:
            return web.Response(status=503, text="local engine not answering")
        loaded, why = self.adapters.ready()
        if not loaded:
            return web.Response(status=503, text=why)
        return web.Response(text="ready")

    def _account_adapters(self, config: RouterConfig) -> None:
        """Count per-adapter tokens and cost once any rung serves adapters (a hook costs
        every request something, so it is only added when it has work)."""
        hook = self.adapter_accounting.complete
        if any(t.adapters for t in config.tiers) and hook not in self.hooks.complete:
            self.hooks.complete.append(hook)

    async def handle_adapters(self, request: web.Request) -> web.Response:
        return web.json_response({"adapters": self.adapters.report()})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        self.metrics.cache_entries.set(len(self.cache))
        self.metrics.cache_bytes.set(self.cache.bytes)
        self.metrics.in_flight.set(self.in_flight)
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_models(self, request: web.Request) -> web.Response:
        return web.Response(body=self.snapshot.models_body, content_type="application/json", headers=_id_header(request))

    async def handle_model(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        found = self.snapshot.model_objects.get(model)
        if found is None:
            error = NotFound(f"The model `{model}` does not exist.", "model_not_found", "model")
            return _error_response(error, _usable_id(request.headers.get(REQUEST_ID_HEADER)))
        return web.Response(body=found, content_type="application/json", headers=_id_header(request))

    async def handle_wrong_method(self, request: web.Request) -> web.Response:
        resource = request.match_info.route.resource
        allowed = self._allowed.get(resource.canonical, "") if resource is not None else ""
        error = MethodNotAllowed(f"Method {request.method} is not allowed for {request.path}.", "method_not_allowed")
        return _error_response(error, _usable_id(request.headers.get(REQUEST_ID_HEADER)), {"Allow": allowed})

    async def handle_unknown_path(self, request: web.Request) -> web.Response:
        error = NotFound(f"Invalid URL ({request.method} {request.path})", "unknown_url")
        return _error_response(error, _usable_id(request.headers.get(REQUEST_ID_HEADER)))

    # --- inference ------------------------------------------------------------------------

    async def handle_inference(self, request: web.Request) -> web.StreamResponse:
        # The gauge itself is set when /metrics is scraped; counting here is enough.
        self.in_flight += 1
        started = time.perf_counter()
        request_id = _usable_id(request.headers.get(REQUEST_ID_HEADER))
        try:
            response = await self._inference(request, self.snapshot, started, request_id)
        except RouterError as exc:
            self.metrics.child(self.metrics.requests, exc.tier or "none", exc.reason or "none", exc.outcome).inc()
            response = _error_response(exc, request_id)
        except asyncio.CancelledError:
            self.metrics.child(self.metrics.requests, "none", "none", "cancelled").inc()
            access_log.info("%s %s cancelled request_id=%s %.1fms", request.method, request.path, request_id or "-", 1000 * (time.perf_counter() - started))
            raise
        finally:
            self.in_flight -= 1
        if access_log.isEnabledFor(logging.INFO):
            headers = response.headers
            access_log.info(
                "%s %s %d tier=%s reason=%s request_id=%s %.1fms", request.method, request.path, response.status,
                headers.get(TIER_HEADER, "-"), headers.get(REASON_HEADER, "-"), headers.get(REQUEST_ID_HEADER, "-"),
                1000 * (time.perf_counter() - started),
            )
        return response

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

    async def _inference(self, request: web.Request, snap: Snapshot, started: float, request_id: str | None) -> web.StreamResponse:
        kind = ENDPOINTS[request.path]
        raw = await self._read_body(request, snap)
        body = parse_body(raw, kind)
        headers = request.headers
        call = Call(
            request=request, snap=snap, kind=kind, raw=raw, body=body, stream=body.get("stream") is True,
            request_id=request_id, started=started, hop=bool(headers.get(HOP_HEADER)), policy=snap.policy,
            upstream_headers=_forwarded_headers(headers, request_id),
        )
        if call.hop:
            return await self._serve_hop(call)

        model = body.get("model")
        if model is not None and model not in snap.known_models and snap.config.escalation.on_unknown_model == "reject":
            raise NotFound(
                f"The model `{model}` does not exist. Known: {', '.join(sorted(snap.known_models))}.", "model_not_found", "model"
            )
        meta = {k[len(META_HEADER_PREFIX):]: v for k, v in headers.items() if k.lower().startswith(META_HEADER_PREFIX)} if snap.policy.rules else None
        call.features = routing.request_features(body, header_tier=headers.get(TIER_HEADER), header_metadata=meta)
        for hook in self.hooks.start:
            _run_hook(hook, call)
        budget = snap.config.budgets
        exhausted = budget.max_usd_per_hour is not None and self.spend.total() >= budget.max_usd_per_hour
        assert call.policy is not None
        decided = call.decision = routing.decide(
            call.policy, call.features, self.tier_states, snap.classifier.predict if snap.classifier else None, exhausted
        )
        for skipped in decided.spilled_from:
            self.metrics.child(self.metrics.spillovers, skipped).inc()
        if decided.tier is None:
            raise BudgetExceeded("the spending budget for this policy is exhausted", "budget_exceeded", reason=routing.BUDGET)

        if snap.config.cache.mode == "exactMatch" and not call.stream and cacheable(body):
            tier = snap.tiers[decided.tier]
            # An adapter's answers change with its serving source, not the base checkpoint.
            adapter_source = (tier.adapters or {}).get(call.features.model or "")
            checkpoint = adapter_source or self.checkpoint_of(tier)
            # A peer whose checkpoint is not known fresh: no cache either way.
            usable = adapter_source is not None or tier.kind != "service" or checkpoint is not None
            call.cache_key = cache_key(request.path, tier.name, checkpoint, raw) if usable else None
            # Keyed by the base checkpoint: stored under the one that answers (see _respond).
            call.cache_checkpoint = checkpoint if adapter_source is None else None
            hit = self.cache.get(call.cache_key) if call.cache_key is not None else None
            if hit is not None:
                self.metrics.child(self.metrics.cache_hits, tier.name).inc()
                self.metrics.child(self.metrics.requests, tier.name, routing.CACHE, "ok").inc()
                out = {
                    "Content-Type": hit.content_type, TIER_HEADER: tier.name, REASON_HEADER: routing.CACHE,
                    REQUEST_ID_HEADER: request_id or _new_id(),
                }
                if checkpoint is not None:
                    out[CHECKPOINT_HEADER] = checkpoint
                return web.Response(body=hit.body, headers=out)
            if call.cache_key is not None:
                self.metrics.child(self.metrics.cache_misses, tier.name).inc()

        return await self._walk(call)

    async def _serve_hop(self, call: Call) -> web.StreamResponse:
        """A request another tier's sidecar sent here: this pod's engine serves it, or it
        is refused at once (503, x-shoal-saturated) so the sender can move up the ladder."""
        local = call.snap.local
        limit = local.max_queue_depth
        if limit is not None and self.engine_waiting is not None and self.engine_waiting > limit:
            self.metrics.child(self.metrics.requests, local.name, routing.HOP, "no_upstream").inc()
            error = NoHealthyUpstream(f"tier {local.name} is saturated", "saturated", tier=local.name)
            return _error_response(error, call.request_id, {SATURATED_HEADER: "1"})
        call.decision = routing.Decision(tier=local.name, reason=routing.HOP, ladder=(local.name,))
        return await self._walk(call)

    async def _walk(self, call: Call) -> web.StreamResponse:
        """Try the ladder's tiers in turn until one answers (see shoal.router.ladder)."""
        decided = call.decision
        assert decided is not None
        snap = call.snap
        walk = LadderWalk(
            decided.ladder, snap.tiers, snap.config.fallback, self._breaker, self.retry_budget,
            self._count_fallback, self._set_circuit_gauge,
        )
        rejected: Answer | None = None
        while (tier := walk.next()) is not None:
            attempt = Attempt(tier, decided.reason if tier.name == decided.tier else routing.FALLBACK, time.perf_counter())
            call.attempts.append(attempt)
            try:
                result = await self._attempt(call, attempt)
            except UpstreamFailure as failure:
                walk.failed(failure)
                continue
            except BaseException:
                walk.abandoned()
                raise
            if isinstance(result, Answer) and result.status == 200 and self.hooks.verify and not call.hop:
                verdict = await self._verify(call, result)
                if verdict is not None:
                    walk.failed(UpstreamFailure(REJECTED, tier.name, f"tier {tier.name}: answer rejected: {verdict}"))
                    rejected = result
                    continue
            walk.succeeded()
            if isinstance(result, Answer):
                return await self._respond(call, result)
            return result
        if rejected is not None:
            # Every tier's answer was rejected: the last one is still an answer.
            return await self._respond(call, rejected)
        raise walk.error(decided.tier, decided.reason)

    def _count_fallback(self, tier: str, cause: str) -> None:
        self.metrics.child(self.metrics.fallbacks, tier, cause).inc()

    def _breaker(self, tier: UpstreamTier) -> CircuitBreaker:
        breaker = self.breakers.get((tier.name, tier.url))
        if breaker is None:
            spec = self.snapshot.config.fallback.circuit_breaker
            breaker = self.breakers[(tier.name, tier.url)] = CircuitBreaker(spec.consecutive_failures, spec.open_seconds, clock=self.clock)
        return breaker

    def _set_circuit_gauge(self, tier: UpstreamTier, breaker: CircuitBreaker) -> None:
        self.metrics.child(self.metrics.circuit_open, tier.name).set(0 if breaker.state == "closed" else 1)

    def checkpoint_of(self, tier: UpstreamTier) -> str | None:
        """The serving checkpoint of a tier as this sidecar knows it now: its own from the
        pod template; a peer's from the peer, only while fresh (router/peers.py);
        None for external APIs and for peers not heard from recently. A rung serving an
        adapter adds the adapter's source (BASE+lora:SOURCE)."""
        if tier.kind == "local":
            return _with_adapter_source(tier, self.settings.checkpoint)
        if tier.kind == "service":
            return _with_adapter_source(tier, self.peers.checkpoint(tier.name, self.snapshot.config.peers.stale_after_seconds))
        return None

    def _upstream_headers(self, call: Call, tier: UpstreamTier) -> dict[str, str]:
        headers = dict(call.upstream_headers)
        if tier.kind == "external":
            auth = call.snap.auth.get(tier.name)
            if auth is not None:
                headers["Authorization"] = auth
            return headers
        client = call.request.headers
        for name in IN_CLUSTER_HEADERS:
            value = client.get(name)
            if value is not None:
                headers[name] = value
        if tier.kind == "service":
            headers[HOP_HEADER] = "1"
            headers[TIER_HEADER] = tier.name
        return headers

    async def _attempt(self, call: Call, attempt: Attempt) -> Answer | web.StreamResponse:
        """One try at one tier: an Answer read in full (200, or a 4xx the client must
        see), a stream already relayed to the client, or an UpstreamFailure raised."""
        assert self.upstreams is not None
        tier = attempt.tier
        config = call.snap.config
        # A request for one of the tier's LoRA adapters keeps its model name: it is what
        # the engine serves the adapter as.
        requested = call.body.get("model")
        payload = call.raw if requested in (tier.adapters or {}) else with_model(call.raw, call.body, tier.model)
        cascade = self.cascade if not call.hop else None
        # The cascade's logprobs verifier reads the engine's own log-probabilities: asked
        # for here when the client did not ask, and taken off the answer again below.
        asked = cascade is not None and cascade.asks_logprobs(tier.name, call.kind, call.body, call.stream)
        if asked:
            payload = ask_logprobs(payload, call.kind)
        url = tier.url + call.path[3:]  # the part after /v1
        first_byte = config.fallback.first_byte_timeout_seconds
        total = min(tier.timeout_seconds, config.limits.request_timeout_seconds)
        sent_at = self.clock()
        try:
            async with asyncio.timeout(min(first_byte, total)):
                upstream = await self.upstreams.request(url, payload, self._upstream_headers(call, tier))
        except TimeoutError as exc:
            raise UpstreamFailure(TIMEOUT, tier.name, f"tier {tier.name}: no response within {min(first_byte, total):g}s") from exc
        except ConnectFailed as exc:
            raise UpstreamFailure(CONNECT_ERROR, tier.name, f"tier {tier.name}: cannot connect") from exc
        except UpstreamError as exc:
            raise UpstreamFailure(UPSTREAM_BROKE, tier.name, f"tier {tier.name}: connection broke before a response") from exc

        try:
            status = upstream.status
            if status >= 500 or status == 429:
                saturated = bool(upstream.headers.get(SATURATED_HEADER))
                if saturated:
                    message = f"tier {tier.name} is saturated"
                elif status == 429:
                    message = f"tier {tier.name} is rate limiting (429)"
                else:
                    message = f"tier {tier.name} answered {status}"
                raise UpstreamFailure(status_cause(status, saturated), tier.name, message, parse_retry_after(upstream.headers.get("retry-after")))
            checkpoint = self._answered_checkpoint(tier, upstream.headers, sent_at)
            if status != 200:
                # The upstream refused the request itself (4xx): the client must fix it.
                # Passed through as is, never retried elsewhere.
                data = await _read_within(upstream, total)
                return Answer(tier, attempt.reason, status, upstream.content_type, upstream.headers, data, checkpoint=checkpoint)
            if call.stream and upstream.content_type == "text/event-stream":
                if cascade is not None and cascade.buffers(tier.name, call.stream):
                    return await self._buffer_stream(call, attempt, upstream, checkpoint, first_byte, total, asked)
                return await self._relay_stream(call, attempt, upstream, checkpoint, first_byte, total)
            try:
                if upstream.complete:
                    data = await upstream.read()  # already here: no timer needed
                else:
                    async with asyncio.timeout(total):
                        data = await upstream.read()
            except TimeoutError as exc:
                raise UpstreamFailure(TIMEOUT, tier.name, f"tier {tier.name}: response not complete within {total:g}s") from exc
            except UpstreamError as exc:
                raise UpstreamFailure(UPSTREAM_BROKE, tier.name, f"tier {tier.name}: connection broke mid-response") from exc
        finally:
            # A response not read to its end (a failure, or a client that left mid-stream)
            # closes its connection, which is what cancels the generation upstream.
            upstream.release()
        self.metrics.child(self.metrics.upstream_latency, tier.name).observe(time.perf_counter() - attempt.started)
        logprobs = None
        if asked and upstream.headers.get("content-encoding", "identity") == "identity":
            try:
                logprobs = token_logprobs(json.loads(data))
            except (ValueError, AttributeError):
                logprobs = []
            data = strip_logprobs(data)
        return Answer(tier, attempt.reason, 200, upstream.content_type, upstream.headers, data, checkpoint=checkpoint, logprobs=logprobs)

    def _answered_checkpoint(self, tier: UpstreamTier, headers: dict[str, str], sent_at: float) -> str | None:
        """Which checkpoint produced an answer: the peer says so in its response header
        (which also tells this sidecar the peer's checkpoint); this pod's engine serves
        this pod's checkpoint; external APIs do not say."""
        if tier.kind == "service":
            said = headers.get(CHECKPOINT_HEADER)
            if said:
                self.peers.heard(tier.name, said, sent_at)
                return _with_adapter_source(tier, said)
            return None
        if tier.kind == "local":
            return self.checkpoint_of(tier)
        return None

    async def _verify(self, call: Call, answer: Answer) -> str | None:
        for hook in self.hooks.verify:
            try:
                verdict = await hook(call, answer)
            except Exception:  # a verifier's bug must not become the client's error
                log.exception("verify hook failed; the answer is accepted")
                continue
            if verdict is not None:
                return verdict
        return None

    async def _respond(self, call: Call, answer: Answer) -> web.StreamResponse:
        """Send a tier's answer read in full to the client, count it, cache it."""
        if answer.streamed:
            return await self._send_held_stream(call, answer)
        tier = answer.tier
        out = {
            "Content-Type": answer.content_type, TIER_HEADER: tier.name, REASON_HEADER: answer.reason,
            REQUEST_ID_HEADER: self._response_id(call, answer.headers),
        }
        if answer.checkpoint is not None:
            out[CHECKPOINT_HEADER] = answer.checkpoint
        data = answer.body or b""
        if answer.status != 200:
            self.metrics.child(self.metrics.requests, tier.name, answer.reason, "client_error").inc()
            retry_after = answer.headers.get("retry-after")
            if retry_after is not None:
                out["Retry-After"] = retry_after
            return web.Response(status=answer.status, body=data, headers=out)
        encoding = answer.headers.get("content-encoding")
        if encoding is not None and encoding != "identity":
            # Not asked for, but an upstream may still compress: pass it on untouched.
            out["Content-Encoding"] = encoding
            self._account(call, tier, None, answer.reason)
        else:
            self._account(call, tier, _usage_of(data), answer.reason)
            assert call.decision is not None
            if call.cache_key is not None and tier.name == call.decision.tier and answer.content_type == "application/json":
                key = call.cache_key
                if call.cache_checkpoint is not None and answer.checkpoint != call.cache_checkpoint:
                    # A peer's answer is stored under the checkpoint that produced it (the
                    # peer changed since the lookup), which later lookups will ask for.
                    key = cache_key(call.path, tier.name, answer.checkpoint, call.raw) if answer.checkpoint is not None else None
                if key is not None:
                    self.cache.put(key, data, answer.content_type)
        response = web.Response(body=data, headers=out)
        if self.hooks.complete and not call.hop:
            await response.prepare(call.request)
            await response.write_eof()
            self._complete(call, answer)
        return response

    def _complete(self, call: Call, answer: Answer) -> None:
        for hook in self.hooks.complete:
            _run_hook(hook, call, answer)

    # --- shadow evaluation -----------------------------------------------------------------

    def _configure_shadow(self, snap: Snapshot) -> None:
        """Start, update or stop the shadow sampler for a (new) config. Runs in the event loop."""
        spec = snap.config.shadow
        # The hook is there only while shadow evaluation is on: without it, a non-streamed
        # answer takes the router's usual path, with nothing to run after it.
        if spec is None:
            if self.shadow is not None:
                self.hooks.complete.remove(self._shadow_complete)
                sampler, self.shadow = self.shadow, None
                self._stopping = asyncio.get_running_loop().create_task(sampler.stop())
            return
        if self._shadow_metrics is None:
            self._shadow_metrics = ShadowMetrics(self.registry)
        if self.shadow is None:
            self.shadow = ShadowSampler(spec, snap.tiers, snap.auth, self._shadow_metrics, labels_dir=snap.config.labels_dir)
            self.shadow.start()
            self.hooks.complete.append(self._shadow_complete)
        else:
            self.shadow.update(spec, snap.tiers, snap.auth)

    def _configure_cascade(self, snap: Snapshot) -> None:
        """Register, replace or remove the cascade's verify hook for a (new) config."""
        if self.cascade is not None:
            self.hooks.verify.remove(self.cascade)
            self.cascade = None
        spec = snap.config.cascade
        if spec is None:
            return
        if self._cascade_metrics is None:
            self._cascade_metrics = CascadeMetrics(self.registry)
        prices = {t.name: (t.input_usd_per_token, t.output_usd_per_token) for t in snap.config.tiers}
        self.cascade = Cascade(spec, lambda: self.snapshot.classifier, self._cascade_metrics, prices)
        self.hooks.verify.append(self.cascade)

    def _shadow_complete(self, call: Call, answer: Answer) -> None:
        sampler = self.shadow
        if sampler is None or answer.status != 200 or answer.body is None:
            return
        sampler.offer(answer.tier.name, call.path, call.body, call.request.headers, answer.body, answer.content_type)

    def _response_id(self, call: Call, upstream_headers: dict[str, str]) -> str:
        return call.request_id or _usable_id(upstream_headers.get(REQUEST_ID_HEADER)) or _new_id()

    async def _first_chunk(self, attempt: Attempt, upstream: Response, first_byte: float) -> bytes:
        """A stream's first chunk, or an UpstreamFailure: nothing has reached the client yet."""
        tier = attempt.tier
        try:
            async with asyncio.timeout(first_byte):
                first = await upstream.readany()
        except TimeoutError as exc:
            raise UpstreamFailure(TIMEOUT, tier.name, f"tier {tier.name}: no first token within {first_byte:g}s") from exc
        except UpstreamError as exc:
            raise UpstreamFailure(UPSTREAM_BROKE, tier.name, f"tier {tier.name}: stream broke before the first token") from exc
        if not first:
            raise UpstreamFailure(UPSTREAM_BROKE, tier.name, f"tier {tier.name}: empty stream")
        self.metrics.child(self.metrics.ttft, tier.name).observe(time.perf_counter() - attempt.started)
        return first

    async def _buffer_stream(
        self, call: Call, attempt: Attempt, upstream: Response, checkpoint: str | None, first_byte: float, total: float, asked: bool
    ) -> Answer | web.StreamResponse:
        """Read a cascade tier's stream to its end without sending a byte (`cascade.streaming:
        buffer`), so that it can be verified, and a stream that breaks or times out on the
        way still falls back. A stream longer than `STREAM_BODY_LIMIT` cannot be held: it
        is sent on unverified from there (what was held first, then as it comes)."""
        tier = attempt.tier
        chunks = [await self._first_chunk(attempt, upstream, first_byte)]
        size = len(chunks[0])
        try:
            async with asyncio.timeout(total):
                while size <= STREAM_BODY_LIMIT and (chunk := await upstream.readany()):
                    chunks.append(chunk)
                    size += len(chunk)
        except TimeoutError as exc:
            raise UpstreamFailure(TIMEOUT, tier.name, f"tier {tier.name}: stream not complete within {total:g}s") from exc
        except UpstreamError as exc:
            raise UpstreamFailure(UPSTREAM_BROKE, tier.name, f"tier {tier.name}: stream broke before its end") from exc
        if size > STREAM_BODY_LIMIT:
            log.warning("tier %s: stream longer than %d bytes, sent unverified", tier.name, STREAM_BODY_LIMIT)
            edit = StreamStripper() if asked else None
            return await self._relay_stream(call, attempt, upstream, checkpoint, first_byte, total, b"".join(chunks), edit)
        self.metrics.child(self.metrics.upstream_latency, tier.name).observe(time.perf_counter() - attempt.started)
        body = b"".join(chunks)
        logprobs = None
        if asked:
            logprobs = stream_logprobs(body)
            body = strip_stream_logprobs(body)
        return Answer(tier, attempt.reason, 200, "text/event-stream", upstream.headers, body, streamed=True, checkpoint=checkpoint, logprobs=logprobs)

    async def _send_held_stream(self, call: Call, answer: Answer) -> web.StreamResponse:
        """Send a stream that was held back until verified, as the SSE it was."""
        tier = answer.tier
        out = {
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", TIER_HEADER: tier.name,
            REASON_HEADER: answer.reason, REQUEST_ID_HEADER: self._response_id(call, answer.headers),
        }
        if answer.checkpoint is not None:
            out[CHECKPOINT_HEADER] = answer.checkpoint
        body = answer.body or b""
        response = web.StreamResponse(headers=out)
        await response.prepare(call.request)
        try:
            await response.write(body)
            await response.write_eof()
        except (ConnectionResetError, ConnectionError) as exc:
            raise asyncio.CancelledError from exc
        self._account(call, tier, stream_usage(body, call.features.prompt_tokens if call.features else 0), answer.reason)
        if self.hooks.complete and not call.hop:
            self._complete(call, answer)
        return response

    async def _relay_stream(
        self, call: Call, attempt: Attempt, upstream: Response, checkpoint: str | None, first_byte: float, total: float,
        first: bytes | None = None, edit: StreamStripper | None = None,
    ) -> web.StreamResponse:
        """Pass SSE through chunk by chunk. The client's response starts only once the
        upstream's first chunk is here, so a failure before it can still fall back.
        `first`: what was already read (a held stream too long to verify); `edit`: takes
        off log-probabilities the router asked for."""
        tier = attempt.tier
        if first is None:
            first = await self._first_chunk(attempt, upstream, first_byte)
        if edit is not None:
            first = edit.feed(first)

        out = {
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", TIER_HEADER: tier.name,
            REASON_HEADER: attempt.reason, REQUEST_ID_HEADER: self._response_id(call, upstream.headers),
        }
        if checkpoint is not None:
            out[CHECKPOINT_HEADER] = checkpoint
        response = web.StreamResponse(headers=out)
        await response.prepare(call.request)
        # From here on bytes have reached the client: whatever happens, no retry.
        keep: list[bytes] | None = [first] if self.hooks.complete and not call.hop and len(first) <= STREAM_BODY_LIMIT else None
        kept = len(first)
        tail = first[-4096:]
        events = first.count(b"data:")
        outcome = "ok"
        try:
            await response.write(first)
            async with asyncio.timeout(total):
                while chunk := await upstream.readany():
                    if edit is not None:
                        chunk = edit.feed(chunk)
                    await response.write(chunk)
                    events += chunk.count(b"data:")
                    tail = (tail + chunk)[-4096:]
                    if keep is not None:
                        kept += len(chunk)
                        if kept > STREAM_BODY_LIMIT:
                            keep = None
                        else:
                            keep.append(chunk)
                if edit is not None and (rest := edit.close()):
                    await response.write(rest)
                    tail = (tail + rest)[-4096:]
        except TimeoutError:
            outcome = "timeout"
            await _write_stream_error(response, UpstreamTimeout(f"tier {tier.name}: stream not complete within {total:g}s", "upstream_timeout"))
        except UpstreamError as exc:
            if call.request.transport is None or call.request.transport.is_closing():
                raise asyncio.CancelledError from exc
            outcome = "upstream_error"
            log.warning("tier %s: stream broke mid-way (%s)", tier.name, type(exc).__name__)
            await _write_stream_error(response, UpstreamBroke(f"tier {tier.name}: the stream broke mid-way", "upstream_broke"))
        except (ConnectionResetError, ConnectionError) as exc:
            # The client went away: closing the upstream response (in the caller's
            # finally) cancels the generation.
            raise asyncio.CancelledError from exc
        self.metrics.child(self.metrics.upstream_latency, tier.name).observe(time.perf_counter() - attempt.started)
        usage = _stream_usage(tail)
        if usage is None:
            # No usage event (the client did not ask for one): estimate one token per event.
            usage = (call.features.prompt_tokens if call.features else 0, max(events - 2, 0))
        self._account(call, tier, usage, attempt.reason, outcome)
        try:
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        if self.hooks.complete and not call.hop and outcome == "ok":
            body = b"".join(keep) if keep is not None else None
            self._complete(call, Answer(tier, attempt.reason, 200, "text/event-stream", upstream.headers, body, streamed=True, checkpoint=checkpoint))
        return response

    def _account(self, call: Call, tier: UpstreamTier, usage: tuple[int, int] | None, reason: str, outcome: str = "ok") -> None:
        m = self.metrics
        m.child(m.requests, tier.name, reason, outcome).inc()
        decided = call.decision
        assert decided is not None
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
    """Parse and check the fields the router relies on; 400 naming the field otherwise.
    Every optional field may be null, as the OpenAI API documents them as nullable and
    its SDKs send them so (e.g. `"stream": null`)."""
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
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
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
    n = body.get("n")
    return body.get("temperature") == 0 and (n is None or n == 1) and ("messages" in body or "prompt" in body)


_MODEL_KEY = re.compile(rb'"model"\s*:\s*')


def with_model(raw: bytes, body: dict[str, Any], model: str) -> bytes:
    """The request bytes with the top-level `model` set to `model`, every other byte as
    the client sent it (numbers, key order, escapes, whitespace): engines see exactly
    the client's request. Falls back to re-serialising when the bytes resist."""
    if body.get("model") == model:
        return raw
    encoded = json.dumps(model).encode()
    if "model" not in body:
        start = raw.find(b"{")
        candidate = raw[: start + 1] + b'"model":' + encoded + (b"," if body else b"") + raw[start + 1 :]
        if _checks(candidate, body, model):
            return candidate
    else:
        for match in _MODEL_KEY.finditer(raw):
            start = match.end()
            end = _json_scalar_end(raw, start)
            if end is None:
                continue
            candidate = raw[:start] + encoded + raw[end:]
            # A nested "model" key (a tool's schema, say) leaves the top level unchanged,
            # so the check below rejects it and the next match is tried.
            if _checks(candidate, body, model):
                return candidate
    return json.dumps({**body, "model": model}).encode()


def _json_scalar_end(raw: bytes, start: int) -> int | None:
    """End of the JSON string or null starting at `start`, or None."""
    if raw.startswith(b"null", start):
        return start + 4
    if raw[start : start + 1] != b'"':
        return None
    i = start + 1
    while True:
        i = raw.find(b'"', i)
        if i < 0:
            return None
        backslashes = 0
        j = i - 1
        while raw[j] == 0x5C:  # backslash
            backslashes += 1
            j -= 1
        if backslashes % 2 == 0:
            return i + 1
        i += 1


def _checks(candidate: bytes, body: dict[str, Any], model: str) -> bool:
    try:
        parsed = _loads(candidate)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("model") == model and len(parsed) == len(body) + ("model" not in body)


def _usable_id(value: str | None) -> str | None:
    """A request id fit to echo and log: printable ASCII, at most 128 characters."""
    if value is None or not value or len(value) > 128 or not value.isascii() or not value.isprintable():
        return None
    return value


def _new_id() -> str:
    return "req_" + uuid.uuid4().hex


def _forwarded_headers(headers: Any, request_id: str | None) -> dict[str, str]:
    """What every tier receives from the client's headers (see FORWARDED_HEADERS)."""
    out = {"Content-Type": "application/json"}
    if request_id is not None:
        out[REQUEST_ID_HEADER] = request_id
    for name in FORWARDED_HEADERS:
        value = headers.get(name)
        if value is not None:
            out[name] = value
    return out


def _error_response(error: RouterError, request_id: str | None, extra: dict[str, str] | None = None) -> web.Response:
    headers = {REQUEST_ID_HEADER: request_id or _new_id()}
    if isinstance(error, TooLarge):
        headers["Connection"] = "close"
    if error.tier is not None:
        headers[TIER_HEADER] = error.tier
    if error.reason is not None:
        headers[REASON_HEADER] = error.reason
    if extra:
        headers.update(extra)
    return error.response(headers)


def _with_adapter_source(tier: UpstreamTier, base: str | None) -> str | None:
    if base is None or tier.adapter_source is None:
        return base
    return f"{base}+lora:{tier.adapter_source}"


def _id_header(request: web.Request) -> dict[str, str]:
    return {REQUEST_ID_HEADER: _usable_id(request.headers.get(REQUEST_ID_HEADER)) or _new_id()}


def _run_hook(hook: Callable[..., None], *args: Any) -> None:
    try:
        hook(*args)
    except Exception:  # a hook's bug must not become the client's error
        log.exception("router hook %r failed", hook)


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
