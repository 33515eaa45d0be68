"""LoRA adapters loaded into the pod's running engine, without restarting it.

The router's configuration (`adapters`, from the tier's ConfigMap) says which adapters this
pod serves and from where; the engine (vLLM started with --enable-lora and
VLLM_ALLOW_RUNTIME_LORA_UPDATING) says which it has loaded (`GET /v1/models`: every LoRA
module is listed with its `root`, the path it was loaded from). The sidecar makes the
second match the first with the engine's own API: `POST /v1/load_lora_adapter` and
`POST /v1/unload_lora_adapter`.

The engine is the only record of what is loaded, read again on every pass: an engine that
restarted (and lost its adapters) is refilled; nothing is remembered that could go stale.

Per adapter, each pass (the pure `plan_sync`):
  - desired, not loaded                         -> load;
  - desired, loaded from another path           -> unload, then load the new path
                                                   (a new source; the name is briefly
                                                   absent, under a second for small adapters);
  - loaded, no longer desired                   -> unload;
  - a failed load or unload waits out a backoff (1 s doubling to 60 s) before it is tried
    again, so a broken source never floods the engine.

Readiness: a new pod reports ready only once every adapter of its serving set is loaded
(except those no engine can load, below), so the Service never sends it a request for an
adapter it lacks. After that first time a
failing adapter no longer takes the pod out of the Service (every pod would fail the same
way at once, and the base model and the other adapters still serve): its state is in the
metrics (`shoal_adapter_loaded`, `shoal_adapter_load_failures_total`) and in
`GET /adapters` of the sidecar.

Sources: pvc://CLAIM/PATH is read from the claim's read-only mount in the engine container
(the renderer mounts every claim the tier's adapters name); hf://ORG/REPO is handed to vLLM,
which downloads it from the Hub. hf:// with a pinned @REVISION, s3:// and gs:// cannot be
loaded at run time by vLLM: such an adapter is reported Unsupported with the reason, never
tried, and does not hold readiness back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from shoal.api.routerconfig import AdapterConfig

from .call import Answer, Call

log = logging.getLogger("shoal.router.adapters")

State = Literal["Pending", "Loaded", "Failed", "Unsupported"]

BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


@dataclass(frozen=True)
class Action:
    """One call to the engine: load `name` from `path`, or unload `name`."""

    verb: Literal["load", "unload"]
    name: str
    path: str | None = None


@dataclass
class AdapterStatus:
    """What the sidecar knows of one desired adapter."""

    name: str
    source: str
    state: State = "Pending"
    message: str = ""
    failures: int = 0
    retry_at: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "source": self.source, "state": self.state, "message": self.message, "failures": self.failures}


def backoff_seconds(failures: int) -> float:
    """Delay before the next attempt after `failures` consecutive failures."""
    return min(BACKOFF_MAX_SECONDS, BACKOFF_INITIAL_SECONDS * 2 ** max(0, failures - 1))


def plan_sync(
    desired: Iterable[AdapterConfig],
    loaded: Mapping[str, str],
    statuses: Mapping[str, AdapterStatus],
    now: float,
) -> list[Action]:
    """The calls that bring the engine's loaded set (`loaded`: name -> path) to `desired`.

    Unloads come first (they free slots for the loads). An adapter whose status is waiting
    out a backoff (`retry_at` > now) is left alone this pass; one without a loadable path
    is never called for.
    """
    wanted = {a.name: a for a in desired}
    actions: list[Action] = []
    for name, path in sorted(loaded.items()):
        adapter = wanted.get(name)
        if adapter is None or (adapter.path is not None and path != adapter.path):
            status = statuses.get(name)
            if status is None or status.retry_at <= now:
                actions.append(Action("unload", name))
    for name, adapter in wanted.items():
        if adapter.path is None:
            continue
        status = statuses.get(name)
        if status is not None and status.retry_at > now:
            continue
        if loaded.get(name) != adapter.path:
            actions.append(Action("load", name, adapter.path))
    return actions


class EngineRefused(Exception):
    """The engine answered a load or unload with an error (the message is its own)."""


class AdapterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.loaded = Gauge(
            "shoal_adapter_loaded", "1 while the adapter's serving source is loaded in this pod's engine, else 0.",
            ["adapter"], registry=registry,
        )
        self.failures = Counter(
            "shoal_adapter_load_failures", "Failed attempts to load or unload an adapter in this pod's engine.",
            ["adapter"], registry=registry,
        )
        self.load_seconds = Gauge(
            "shoal_adapter_load_seconds", "How long the adapter's last successful load took.",
            ["adapter"], registry=registry,
        )


@dataclass
class AdapterSync:
    """Keeps the local engine's LoRA adapters equal to the configured set.

    engine_url: the engine's base URL with /v1 (http://127.0.0.1:8000/v1).
    The caller sets `desired` (on start and on every config reload) and runs `loop()`, or
    calls `sync_once()` itself (tests).
    """

    engine_url: str
    registry: CollectorRegistry
    clock: Callable[[], float] = time.monotonic
    interval_seconds: float = 2.0
    desired: tuple[AdapterConfig, ...] = ()
    statuses: dict[str, AdapterStatus] = field(default_factory=dict)
    ever_ready: bool = False
    running: bool = False
    # Loading reads the adapter from disk (or the Hub) and may take seconds.
    request_timeout_seconds: float = 120.0

    def __post_init__(self) -> None:
        self.metrics = AdapterMetrics(self.registry)
        self._wake = asyncio.Event()

    def set_desired(self, adapters: Iterable[AdapterConfig]) -> None:
        """A new serving set: statuses of adapters whose source changed start afresh."""
        self.desired = tuple(adapters)
        statuses: dict[str, AdapterStatus] = {}
        for adapter in self.desired:
            old = self.statuses.get(adapter.name)
            if old is not None and old.source == adapter.source:
                statuses[adapter.name] = old
            else:
                status = AdapterStatus(adapter.name, adapter.source)
                if adapter.path is None:
                    status.state = "Unsupported"
                    status.message = adapter.unsupported_reason or "this source cannot be loaded at run time"
                statuses[adapter.name] = status
        for name in set(self.statuses) - set(statuses):
            try:
                self.metrics.loaded.remove(name)
            except KeyError:  # never exported (removed before its first pass)
                pass
        self.statuses = statuses
        self._wake.set()

    def ready(self) -> tuple[bool, str]:
        """Whether the pod may report ready, and if not, why (a sentence)."""
        if self.ever_ready:
            return True, ""
        # An adapter no engine can load at run time (Unsupported) never holds readiness back:
        # waiting for it would keep every new pod out of service for good.
        missing = [s for s in self.statuses.values() if s.state not in ("Loaded", "Unsupported")]
        if not missing:
            self.ever_ready = True
            return True, ""
        first = missing[0]
        detail = f" ({first.message})" if first.message else ""
        return False, f"adapters not loaded yet: {', '.join(s.name for s in missing)}; {first.name} is {first.state}{detail}"

    def report(self) -> list[dict[str, object]]:
        return [s.to_dict() for s in self.statuses.values()]

    async def observe(self, session: aiohttp.ClientSession) -> dict[str, str]:
        """name -> path of the LoRA modules the engine has loaded now."""
        async with session.get(f"{self.engine_url}/models") as response:
            response.raise_for_status()
            body = await response.json()
        base = {m["id"] for m in body.get("data", []) if not m.get("parent")}
        return {m["id"]: m.get("root") or "" for m in body.get("data", []) if m.get("parent") and m["id"] not in base}

    async def _call(self, session: aiohttp.ClientSession, action: Action) -> None:
        if action.verb == "load":
            url, payload = f"{self.engine_url}/load_lora_adapter", {"lora_name": action.name, "lora_path": action.path}
        else:
            url, payload = f"{self.engine_url}/unload_lora_adapter", {"lora_name": action.name}
        async with session.post(url, json=payload) as response:
            if response.status != 200:
                text = (await response.text())[:300]
                raise EngineRefused(f"engine answered {response.status} to {action.verb} {action.name}: {text}")

    async def sync_once(self, session: aiohttp.ClientSession) -> None:
        """One pass: observe, plan, act; statuses and metrics updated. Engine unreachable:
        statuses are left as they were (the next pass tries again)."""
        try:
            loaded = await self.observe(session)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return
        now = self.clock()
        for action in plan_sync(self.desired, loaded, self.statuses, now):
            status = self.statuses.get(action.name)
            started = time.perf_counter()
            try:
                await self._call(session, action)
            except (EngineRefused, aiohttp.ClientError, TimeoutError, OSError) as exc:
                if status is not None:
                    status.failures += 1
                    status.retry_at = self.clock() + backoff_seconds(status.failures)
                    status.state = "Failed"
                    status.message = str(exc) or type(exc).__name__
                self.metrics.failures.labels(action.name).inc()
                log.warning("adapter %s: %s failed: %s", action.name, action.verb, exc)
                continue
            if action.verb == "load":
                loaded[action.name] = action.path or ""
                self.metrics.load_seconds.labels(action.name).set(time.perf_counter() - started)
                log.info("adapter %s loaded from %s", action.name, action.path)
            else:
                loaded.pop(action.name, None)
                log.info("adapter %s unloaded", action.name)
        for adapter in self.desired:
            status = self.statuses[adapter.name]
            if adapter.path is not None and loaded.get(adapter.name) == adapter.path:
                status.state, status.message, status.failures, status.retry_at = "Loaded", "", 0, 0.0
            elif status.state == "Loaded":
                status.state, status.message = "Pending", "the engine no longer has it loaded"
            self.metrics.loaded.labels(adapter.name).set(1 if status.state == "Loaded" else 0)

    async def run(self) -> None:
        """Sync until cancelled, with a session of its own (loads outlast the scrape timeout)."""
        self.running = True
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.request_timeout_seconds)) as session:
                await self.loop(session)
        finally:
            self.running = False

    async def loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                await self.sync_once(session)
            except Exception:  # the sync must never take the sidecar down
                log.exception("adapter sync failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self._next_delay())
            except TimeoutError:
                pass

    def _next_delay(self) -> float:
        """Sooner while an adapter is pending or due for a retry, else the interval."""
        now = self.clock()
        delay = self.interval_seconds
        for status in self.statuses.values():
            if status.state in ("Pending", "Failed"):
                delay = min(delay, max(0.05, status.retry_at - now) if status.retry_at else 0.2)
        return delay


class AdapterAccounting:
    """Tokens, requests and estimated cost per adapter, with the adapter's cost center.

    Runs as a `complete` hook (router/call.py) of the sidecar that took the request from
    the client (hops are counted where they started). Labels are bounded: an adapter name
    is one of at most 64 per tier, a cost center one per adapter. A request counts for an
    adapter when its `model` is one of the answering rung's adapters.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["tier", "adapter", "cost_center"]
        self.requests = Counter("shoal_adapter_requests", "Requests answered by a LoRA adapter.", labels, registry=registry)
        self.tokens = Counter(
            "shoal_adapter_tokens", "Tokens processed by a LoRA adapter, by kind (prompt or completion).",
            [*labels, "kind"], registry=registry,
        )
        self.cost = Counter("shoal_adapter_cost_usd", "Estimated cost of the requests a LoRA adapter served, in US dollars.", labels, registry=registry)

    def complete(self, call: Call, answer: Answer) -> None:
        tier = answer.tier
        model = call.body.get("model")
        if not tier.adapters or model not in tier.adapters or answer.status != 200:
            return
        labels = (tier.name, model, (tier.adapter_cost_centers or {}).get(model, ""))
        self.requests.labels(*labels).inc()
        usage = usage_of(answer.body) if answer.body is not None else None
        if usage is None:
            return
        prompt, completion = usage
        self.tokens.labels(*labels, "prompt").inc(prompt)
        self.tokens.labels(*labels, "completion").inc(completion)
        cost = prompt * tier.input_usd_per_token + completion * tier.output_usd_per_token
        if cost:
            self.cost.labels(*labels).inc(cost)


def usage_of(body: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens of a JSON answer, or of the last SSE event carrying usage."""
    candidates = [body] if not body.lstrip().startswith(b"data:") else [
        line[5:].strip() for line in reversed(body.split(b"\n")) if line.startswith(b"data:") and b'"usage"' in line
    ]
    for candidate in candidates:
        try:
            usage = json.loads(candidate).get("usage")
            return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        except (ValueError, AttributeError, TypeError):
            continue
    return None
