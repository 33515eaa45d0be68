"""Shadow evaluation: after a client was answered, ask a reference tier too, and grade.

The contract with the request path (server.py), in two calls:

    ticket = sampler.select(tier, path, body, headers)    # before forwarding; O(1), no I/O
    ...the client's response is sent and completed...
    sampler.submit(ticket, answered_tier, response_bytes, content_type)   # O(1), no I/O

`select` decides whether this request is a sample (the tier is shadowed, the request is
not excluded, the coin says so) and returns None otherwise, so the server keeps the
response bytes (a stream's chunks) only for the few requests that are samples. `submit`
only puts the sample on a bounded queue; everything else happens in background workers:
the reference call, the grading, the metrics and the optional label. Neither call can
raise into the request path, and neither waits: the client's response is never delayed or
changed, and a reference that fails, hangs or is too expensive only costs a skipped or
failed sample (fail open).

Bounds, all per sidecar: `maxConcurrency` reference calls at once (the workers),
`maxQueue` samples waiting (beyond it a sample is skipped, `queue_full`), and
`maxUSDPerHour` of reference and judge spend over the last hour (a sample is skipped,
`budget`, while the spend is at or over it; calls already in flight may overshoot it by at
most `maxConcurrency` calls).

Exclusions (skipped with a reason, counted): requests that offer tools or answers that
call them (`tool_calls`), requests marked private (`private`: header x-shoal-private: 1,
or metadata.private true), requests the client opted out (`opted_out`: header
x-shoal-shadow: off), non-deterministic requests under `deterministicOnly`
(`nondeterministic`), endpoints without a gradable answer and multi-choice requests
(`unsupported`), and samples answered by another tier than the one sampled because of a
fallback (`escalated`). Streamed requests are sampled like any other.

Grading reuses the evaluation's scorers (shoal.evaluate.scorers) and its judge prompt
format (shoal.evaluate.runner), with the reference answer in the role of the dataset's
reference. A sample's outcome is `agree`, `disagree`, `reference_error` (the reference
or judge call failed: not graded, not counted for drift) or `ungradable` (the reference
answer has nothing to compare, e.g. no number for a numeric grading).

Labels (opt-in, `labels.mode: keep`): prompt, reference answer and grade as JSON lines in
the outcome format the router's trainer reads, `{"prompt", "outcomes": {TIER: bool},
"response"}`, written to the sidecar's labels volume in two files that rotate, so at most
`maxItems` lines and `maxBytes` bytes are kept. They never go to logs or metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from shoal.api.routerconfig import UpstreamTier
from shoal.api.shadow import JUDGE_RUBRIC, ShadowGrading, ShadowSpec
from shoal.evaluate import scorers
from shoal.evaluate.dataset import Item
from shoal.evaluate.runner import judge_messages, parse_judgement

from .resilience import HourlySpend
from .upstream import UpstreamError, UpstreamPool

log = logging.getLogger("shoal.router.shadow")

PRIVATE_HEADER = "x-shoal-private"
OPT_OUT_HEADER = "x-shoal-shadow"

OUTCOMES = ("agree", "disagree", "reference_error", "ungradable")
SKIP_REASONS = ("tool_calls", "private", "opted_out", "nondeterministic", "unsupported", "escalated", "budget", "queue_full", "too_large")
# The largest answer kept for grading; a longer one is skipped (`too_large`).
MAX_RESPONSE_BYTES = 1024 * 1024
# The agreement-rate gauge is over this many of the latest graded samples.
RATE_WINDOW = 500

_GRADABLE_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


class ShadowMetrics:
    """The shadow metrics, on the router's registry. Labels: `tier` (the tier checked, at
    most 16 per policy), `outcome` and `reason` (the closed sets above)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.samples = Counter(
            "shoal_shadow_samples", "Shadow samples by the tier checked and outcome (agree, disagree, reference_error, ungradable).",
            ["tier", "outcome"], registry=registry,
        )
        self.skipped = Counter(
            "shoal_shadow_skipped", "Requests that would have been shadow samples but were skipped, by tier and reason.",
            ["tier", "reason"], registry=registry,
        )
        self.cost = Counter("shoal_shadow_cost_usd", "Spend on reference and judge calls, in US dollars, by the tier checked.", ["tier"], registry=registry)
        self.agreement = Gauge(
            "shoal_shadow_agreement_ratio", f"Share of the latest {RATE_WINDOW} graded shadow samples that agreed with the reference.",
            ["tier"], registry=registry,
        )
        self.queued = Gauge("shoal_shadow_queue_depth", "Shadow samples waiting for a reference call.", registry=registry)
        self.in_flight = Gauge("shoal_shadow_calls_in_flight", "Reference and judge calls in flight.", registry=registry)

    def skip(self, tier: str, reason: str) -> None:
        self.skipped.labels(tier, reason).inc()


@dataclass(frozen=True)
class Ticket:
    """A request chosen as a sample, before its answer is known."""

    tier: str
    path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Sample:
    ticket: Ticket
    answer: str


@dataclass(frozen=True)
class Grade:
    outcome: str  # OUTCOMES
    reference_answer: str | None = None


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"))


def uses_tools(body: Mapping[str, Any]) -> bool:
    if body.get("tools") or body.get("functions") or body.get("tool_choice") not in (None, "none"):
        return True
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and (message.get("role") in ("tool", "function") or message.get("tool_calls")):
                return True
    return False


def is_private(body: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    if _truthy(headers.get(PRIVATE_HEADER)):
        return True
    metadata = body.get("metadata")
    return isinstance(metadata, dict) and _truthy(metadata.get("private"))


def prompt_text(body: Mapping[str, Any]) -> str:
    """The prompt a label records: the user messages' text (chat) or the prompt (completions)."""
    if isinstance(body.get("prompt"), str):
        return body["prompt"]
    parts = []
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            parts.append(_content_text(message.get("content")))
    return "\n".join(p for p in parts if p)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def answer_text(data: bytes, content_type: str) -> tuple[str | None, bool]:
    """(the answer's text, whether it calls tools) from a JSON or SSE response body.

    None when the body has no single answer to grade.
    """
    if content_type.startswith("text/event-stream"):
        pieces = []
        tools = False
        for line in data.split(b"\n"):
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            for choice in event.get("choices") or []:
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    if delta.get("tool_calls"):
                        tools = True
                    if isinstance(delta.get("content"), str):
                        pieces.append(delta["content"])
                elif isinstance(choice.get("text"), str):
                    pieces.append(choice["text"])
        return ("".join(pieces), tools) if pieces or tools else (None, False)
    try:
        obj = json.loads(data)
        choice = obj["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None, False
    if not isinstance(choice, dict):
        return None, False
    message = choice.get("message")
    if isinstance(message, dict):
        tools = bool(message.get("tool_calls") or message.get("function_call"))
        content = message.get("content")
        return (content if isinstance(content, str) else ("" if tools else None)), tools
    text = choice.get("text")
    return (text if isinstance(text, str) else None), False


# --- grading ---------------------------------------------------------------------------------


def grade_locally(grading: ShadowGrading, answer: str, reference_answer: str) -> str:
    """agree / disagree / ungradable for the rule-based gradings (everything but llmJudge)."""
    if grading.type == "exactMatch":
        return "agree" if scorers.exact_match(answer, Item(id="shadow", messages=[], reference=reference_answer)) else "disagree"
    if grading.type == "numeric":
        expected = scorers.extract_number(reference_answer)
        if expected is None or not math.isfinite(expected):
            return "ungradable"
        got = scorers.numeric(answer, Item(id="shadow", messages=[], reference=expected), grading.tolerance)
        return "agree" if got else "disagree"
    if grading.type == "choice":
        letter = scorers.extract_choice(reference_answer, None)
        if letter is None:
            return "ungradable"
        return "agree" if scorers.choice(answer, Item(id="shadow", messages=[], reference=letter)) else "disagree"
    if grading.type == "jsonFields":
        try:
            expected = scorers.extract_json(reference_answer)
        except ValueError:
            return "ungradable"
        try:
            got = scorers.extract_json(answer)
        except ValueError:
            return "disagree"
        if not grading.fields:
            return "agree" if got == expected else "disagree"
        if not isinstance(expected, dict) or not any(f in expected for f in grading.fields):
            return "ungradable"
        if not isinstance(got, dict):
            return "disagree"
        return "agree" if all(got.get(f) == expected.get(f) for f in grading.fields) else "disagree"
    raise ValueError(f"grading {grading.type} is not local")


# --- labels ------------------------------------------------------------------------------------


class LabelStore:
    """Labelled samples as JSON lines in two rotating files under `directory`.

    The current file takes new lines; when it would pass half the item or byte bound it
    replaces the previous file, so the two together never hold more than the bounds.
    """

    CURRENT = "labels.jsonl"
    PREVIOUS = "labels.1.jsonl"

    def __init__(self, directory: str | Path, max_items: int, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.half_items = max(1, max_items // 2)
        self.half_bytes = max(1, max_bytes // 2)
        current = self.directory / self.CURRENT
        self.items = sum(1 for _ in current.open("rb")) if current.exists() else 0
        self.bytes = current.stat().st_size if current.exists() else 0

    def add(self, prompt: str, tier: str, agreed: bool, reference_tier: str, reference_answer: str) -> bool:
        line = (json.dumps({"prompt": prompt, "outcomes": {tier: agreed, reference_tier: True}, "response": reference_answer},
                           ensure_ascii=False) + "\n").encode()
        if len(line) > self.half_bytes:
            return False  # one sample larger than half the bound is never kept
        if self.items + 1 > self.half_items or self.bytes + len(line) > self.half_bytes:
            os.replace(self.directory / self.CURRENT, self.directory / self.PREVIOUS)
            self.items = self.bytes = 0
        with open(self.directory / self.CURRENT, "ab") as f:
            f.write(line)
        self.items += 1
        self.bytes += len(line)
        return True

    def export(self) -> bytes:
        """Everything kept, oldest first (what `kubectl exec ... cat` of both files gives)."""
        out = b""
        for name in (self.PREVIOUS, self.CURRENT):
            path = self.directory / name
            if path.exists():
                out += path.read_bytes()
        return out


# --- the sampler ---------------------------------------------------------------------------------


class ShadowSampler:
    """Chooses samples, calls the reference off the request path, grades, counts.

    `tiers` are the ladder's upstreams by name and `auth` their Authorization headers (both
    from the router's config snapshot; `update()` swaps them on a reload). `pool` is an
    UpstreamPool of its own, so reference calls never take the client traffic's
    connections. `rng` and `clock` are injectable for tests.
    """

    def __init__(
        self,
        spec: ShadowSpec,
        tiers: Mapping[str, UpstreamTier],
        auth: Mapping[str, str],
        metrics: ShadowMetrics,
        *,
        pool: UpstreamPool | None = None,
        labels_dir: str | Path | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.rng = rng if rng is not None else random.Random()
        self.spend = HourlySpend(clock=clock)
        self.pool = pool if pool is not None else UpstreamPool(max_idle_per_origin=16, idle_seconds=30.0, connect_timeout=10.0)
        self._own_pool = pool is None
        self.labels_dir = labels_dir
        self.labels: LabelStore | None = None
        self._latest: dict[str, deque[bool]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._queue: asyncio.Queue[Sample] | None = None
        self.calls = 0  # reference and judge calls made (for tests and benchmarks)
        self.update(spec, tiers, auth)

    def update(self, spec: ShadowSpec, tiers: Mapping[str, UpstreamTier], auth: Mapping[str, str]) -> None:
        """A new configuration. Samples, budget and labels carry over; the queue and the
        workers keep the sizes they were started with until the router restarts."""
        self.spec = spec
        self.tiers = dict(tiers)
        self.auth = dict(auth)
        self.rates = {t.tier: t.sample_percent / 100.0 for t in spec.tiers}
        self.references = {t.tier: t.reference for t in spec.tiers}
        if spec.labels.mode == "keep" and self.labels_dir is not None:
            if self.labels is None:
                self.labels = LabelStore(self.labels_dir, spec.labels.max_items, spec.labels.max_bytes)
        else:
            self.labels = None

    # --- lifecycle ---

    def start(self) -> None:
        """Start the workers (call from within the running event loop)."""
        self._queue = asyncio.Queue(maxsize=self.spec.max_queue)
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.spec.max_concurrency)]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._own_pool:
            self.pool.close()

    async def drain(self) -> None:
        """Wait until every queued sample was handled (tests, and a graceful stop)."""
        if self._queue is not None:
            await self._queue.join()

    # --- the request path: no I/O, no exceptions ---

    def select(self, tier: str | None, path: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> Ticket | None:
        """Whether this request is a sample of `tier` (the tier expected to answer it)."""
        try:
            return self._select(tier, path, body, headers)
        except Exception:  # the request path must never see a shadow failure
            log.exception("shadow sampling failed; the request is served without it")
            return None

    def _select(self, tier: str | None, path: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> Ticket | None:
        rate = self.rates.get(tier) if tier is not None else None
        if rate is None or tier is None:
            return None
        # The coin first: requests that would not be sampled anyway are not counted as skipped.
        if self.rng.random() >= rate:
            return None
        excl = self.spec.exclusions
        if (headers.get(OPT_OUT_HEADER) or "").strip().lower() in ("off", "0", "false", "no"):
            return self._skip(tier, "opted_out")
        if excl.private == "exclude" and is_private(body, headers):
            return self._skip(tier, "private")
        if excl.tool_calls == "exclude" and uses_tools(body):
            return self._skip(tier, "tool_calls")
        if path not in _GRADABLE_PATHS or body.get("n", 1) != 1:
            return self._skip(tier, "unsupported")
        if excl.requests == "deterministicOnly" and body.get("temperature") != 0:
            return self._skip(tier, "nondeterministic")
        if self.spend.total() >= self.spec.max_usd_per_hour:
            return self._skip(tier, "budget")
        return Ticket(tier=tier, path=path, body=dict(body))

    def offer(self, tier: str, path: str, body: Mapping[str, Any], headers: Mapping[str, str], data: bytes, content_type: str) -> None:
        """`select` and `submit` in one call, for a request whose answer is already complete
        (the router's `complete` hook): tier is the tier that answered."""
        self.submit(self.select(tier, path, body, headers), tier, data, content_type)

    def _skip(self, tier: str, reason: str) -> None:
        self.metrics.skip(tier, reason)
        return None

    def submit(self, ticket: Ticket | None, answered_tier: str | None, data: bytes, content_type: str) -> None:
        """Queue a completed sample for grading (call after the client's response completed)."""
        if ticket is None:
            return
        try:
            self._submit(ticket, answered_tier, data, content_type)
        except Exception:
            log.exception("shadow submit failed; the sample is dropped")

    def _submit(self, ticket: Ticket, answered_tier: str | None, data: bytes, content_type: str) -> None:
        if answered_tier != ticket.tier:
            self.metrics.skip(ticket.tier, "escalated")
            return
        if len(data) > MAX_RESPONSE_BYTES:
            self.metrics.skip(ticket.tier, "too_large")
            return
        answer, tools = answer_text(data, content_type)
        if tools and self.spec.exclusions.tool_calls == "exclude":
            self.metrics.skip(ticket.tier, "tool_calls")
            return
        if answer is None:
            self.metrics.skip(ticket.tier, "unsupported")
            return
        if self._queue is None or self._queue.full():
            self.metrics.skip(ticket.tier, "queue_full")
            return
        self._queue.put_nowait(Sample(ticket, answer))
        self.metrics.queued.set(self._queue.qsize())

    # --- background work ---

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            sample = await self._queue.get()
            self.metrics.queued.set(self._queue.qsize())
            try:
                await self._handle(sample)
            except asyncio.CancelledError:
                raise
            except Exception:  # a shadow failure is counted, never fatal
                log.exception("shadow sample of tier %s failed", sample.ticket.tier)
                self.metrics.samples.labels(sample.ticket.tier, "reference_error").inc()
            finally:
                self._queue.task_done()

    async def _handle(self, sample: Sample) -> None:
        tier = sample.ticket.tier
        if self.spend.total() >= self.spec.max_usd_per_hour:
            self.metrics.skip(tier, "budget")
            return
        reference_name = self.references.get(tier)
        reference = self.tiers.get(reference_name or "")
        if reference is None:
            self.metrics.samples.labels(tier, "reference_error").inc()
            return
        body = {k: v for k, v in sample.ticket.body.items() if k not in ("stream", "stream_options")}
        body["model"] = reference.model
        try:
            reference_answer = await self._complete(reference, sample.ticket.path, body, tier)
        except ReferenceFailed:
            self.metrics.samples.labels(tier, "reference_error").inc()
            return
        if reference_answer is None:
            self.metrics.samples.labels(tier, "ungradable").inc()
            return
        if self.spec.grading.type == "llmJudge":
            outcome = await self._judge(sample, reference_answer, reference)
        else:
            outcome = grade_locally(self.spec.grading, sample.answer, reference_answer)
        self.metrics.samples.labels(tier, outcome).inc()
        if outcome in ("agree", "disagree"):
            latest = self._latest.setdefault(tier, deque(maxlen=RATE_WINDOW))
            latest.append(outcome == "agree")
            self.metrics.agreement.labels(tier).set(sum(latest) / len(latest))
            if self.labels is not None:
                try:
                    self.labels.add(prompt_text(sample.ticket.body), tier, outcome == "agree", reference_name or "", reference_answer)
                except OSError as exc:
                    log.warning("shadow labels not written: %s", exc.strerror or type(exc).__name__)

    async def _judge(self, sample: Sample, reference_answer: str, reference: UpstreamTier) -> str:
        judge = self.tiers.get(self.spec.grading.judge_tier or "") or reference
        item = Item(id="shadow", messages=[{"role": "user", "content": prompt_text(sample.ticket.body)}], reference=reference_answer)
        body = {"model": judge.model, "messages": judge_messages(JUDGE_RUBRIC, item, sample.answer), "temperature": 0, "max_tokens": 8}
        try:
            text = await self._complete(judge, "/v1/chat/completions", body, sample.ticket.tier)
        except ReferenceFailed:
            return "reference_error"
        verdict = parse_judgement(text or "")
        if verdict is None:
            return "ungradable"
        return "agree" if verdict == 1.0 else "disagree"

    async def _complete(self, upstream: UpstreamTier, path: str, body: dict[str, Any], tier: str) -> str | None:
        """One non-streaming call; its cost is counted. Raises ReferenceFailed."""
        headers = {"Content-Type": "application/json"}
        if upstream.kind == "service":
            # Another tier's sidecar must serve it with its own engine, not route it again.
            headers["x-shoal-hop"] = "1"
            headers["x-shoal-tier"] = upstream.name
        auth = self.auth.get(upstream.name)
        if auth is not None:
            headers["Authorization"] = auth
        url = upstream.url + path[3:]
        self.calls += 1
        self.metrics.in_flight.inc()
        try:
            async with asyncio.timeout(min(self.spec.timeout_seconds, upstream.timeout_seconds)):
                response = await self.pool.request(url, json.dumps(body).encode(), headers)
                try:
                    data = await response.read()
                finally:
                    response.release()
        except (TimeoutError, UpstreamError, OSError) as exc:
            raise ReferenceFailed(f"{upstream.name}: {type(exc).__name__}") from exc
        finally:
            self.metrics.in_flight.dec()
        if response.status != 200:
            raise ReferenceFailed(f"{upstream.name} answered {response.status}")
        try:
            usage = json.loads(data).get("usage") or {}
            cost = int(usage.get("prompt_tokens") or 0) * upstream.input_usd_per_token + int(usage.get("completion_tokens") or 0) * upstream.output_usd_per_token
        except (ValueError, AttributeError, TypeError):
            cost = 0.0
        if cost:
            self.spend.add(cost)
            self.metrics.cost.labels(tier).inc(cost)
        answer, _ = answer_text(data, response.content_type)
        return answer


class ReferenceFailed(Exception):
    """The reference (or judge) call failed: the sample is counted as reference_error."""
