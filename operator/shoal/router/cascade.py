"""The cascade: verify a small tier's answer before the client gets it.

Joins the router through the `verify` hook (shoal.router.call): for an answer of one of
`cascade.tiers`, the configured verifiers (shoal.router.verify) run in order on the
answer's text; the first rejection returns its reason and the router climbs to the next
tier (fallback cause `rejected`).

Streams: with `streaming: passThrough` (the default) a stream is never verified, since
its bytes are on the way to the client as they come, so a cascade costs streamed requests
nothing. With `streaming: buffer` the router reads a cascade tier's whole stream before
sending a byte (`Cascade.buffers`), verifies it, and then sends the held chunks as the SSE
they were, or climbs and lets the next tier's answer stream as usual: the client's time to
its first byte becomes the small tier's whole answer time.

Log-probabilities: with the `logprobs` verifier the router asks a cascade tier's engine
for them itself when the client did not (`Cascade.asks_logprobs`); they are taken off the
answer before anything else sees it (shoal.router.answers), so the client, the cache and
the `complete` hooks get the answer as it would have been without asking.

Accounting: every verdict is counted (`shoal_cascade_verdicts_total{tier, verdict}`), and
a rejected answer's tokens and cost (`shoal_cascade_rejected_cost_usd_total{tier}`) and
its latency (`shoal_cascade_rejected_seconds_total{tier}`) are counted too, since the
client pays for the extra call in money and time; a buffered stream's bytes and the time
it was held before its verdict (`shoal_cascade_buffered_bytes_total{tier}`,
`shoal_cascade_buffered_seconds_total{tier}`) are the client's wait. The answer that is
finally sent is costed as every answer is.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from shoal.api.routepolicy import CascadeSpec

from . import answers
from . import verify as V
from .classifier import DifficultyModel


class CascadeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.verdicts = Counter(
            "shoal_cascade_verdicts", "Answers of cascade tiers by verdict (accepted, or the verifier that rejected).",
            ["tier", "verdict"], registry=registry,
        )
        self.rejected_cost = Counter(
            "shoal_cascade_rejected_cost_usd", "Cost of answers the cascade rejected (paid, then discarded).", ["tier"], registry=registry,
        )
        self.rejected_seconds = Counter(
            "shoal_cascade_rejected_seconds", "Time spent on answers the cascade rejected.", ["tier"], registry=registry,
        )
        self.buffered_bytes = Counter(
            "shoal_cascade_buffered_bytes", "Bytes of streamed answers held back until their verdict (streaming: buffer).",
            ["tier"], registry=registry,
        )
        self.buffered_seconds = Counter(
            "shoal_cascade_buffered_seconds",
            "Time streamed answers were held back before their verdict: the client's wait for its first byte (streaming: buffer).",
            ["tier"], registry=registry,
        )


def answer_text(body: bytes | None, streamed: bool = False) -> str | None:
    """The first choice's text of an OpenAI-style chat or completions response (or, with
    `streamed`, of its SSE stream)."""
    if not body:
        return None
    if streamed:
        return answers.stream_text(body)
    try:
        data = json.loads(body)
        choice = data["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(choice, Mapping):
        return None
    message = choice.get("message")
    if isinstance(message, Mapping) and isinstance(message.get("content"), str):
        return message["content"]
    return choice.get("text") if isinstance(choice.get("text"), str) else None


def requested_schema(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The JSON schema the request's response_format asks for ({} for plain JSON), or None."""
    fmt = body.get("response_format")
    if not isinstance(fmt, Mapping):
        return None
    if fmt.get("type") == "json_object":
        return {}
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), Mapping):
        schema = fmt["json_schema"].get("schema")
        return schema if isinstance(schema, Mapping) else {}
    return None


class Cascade:
    """The verdict on one answer. `classifier` returns the sidecar's current model."""

    def __init__(self, spec: CascadeSpec, classifier: Callable[[], Any], metrics: CascadeMetrics, prices: Mapping[str, tuple[float, float]]):
        self.spec = spec
        self.tiers = frozenset(spec.tiers)
        self.pattern = re.compile(spec.regex) if spec.regex else None
        self.classifier = classifier
        self.metrics = metrics
        self.prices = prices  # tier -> (USD per prompt token, USD per completion token)
        self.wants_logprobs = "logprobs" in spec.verifiers

    def verifies(self, tier: str, stream: bool) -> bool:
        """Whether this tier's answer to a (streamed) request is verified."""
        return tier in self.tiers and (not stream or self.spec.streaming == "buffer")

    def buffers(self, tier: str, stream: bool) -> bool:
        """Whether this tier's stream is read to its end and verified before a byte is sent."""
        return stream and tier in self.tiers and self.spec.streaming == "buffer"

    def asks_logprobs(self, tier: str, kind: str, body: Mapping[str, Any], stream: bool) -> bool:
        """Whether the router asks this tier's engine for log-probabilities the client did
        not ask for (and takes them off the answer again)."""
        return (
            self.wants_logprobs and kind in ("chat", "completions") and self.verifies(tier, stream)
            and not answers.client_asked_logprobs(kind, body)
        )

    def judge(
        self, tier: str, request_body: Mapping[str, Any], prompt: str, response: bytes | None,
        streamed: bool = False, logprobs: list[float] | None = None, prompt_feats: dict[int, float] | None = None,
    ) -> V.Verdict:
        """The verdict on one answer. `logprobs`: the ones the router asked for itself
        (no longer in `response`); None: read them from the response, if it has any.
        `prompt_feats`: the prompt's features as the current model read them when routing
        (None: the trained verifier hashes the prompt itself)."""
        text = answer_text(response, streamed)
        if text is None:
            return V.OK  # nothing to judge by (tool calls, an odd body): never block on it
        for name in self.spec.verifiers:
            verdict = self._one(name, request_body, prompt, text, response, streamed, logprobs, prompt_feats)
            if not verdict.accepted:
                return verdict
        return V.OK

    def _one(
        self, name: str, request_body: Mapping[str, Any], prompt: str, text: str, response: bytes | None,
        streamed: bool, logprobs: list[float] | None, prompt_feats: dict[int, float] | None = None,
    ) -> V.Verdict:
        if name == "refusal":
            return V.verify_refusal(text)
        if name == "arithmetic":
            return V.verify_arithmetic(text)
        if name == "regex" and self.pattern is not None:
            return V.verify_regex(text, self.pattern)
        if name == "jsonSchema":
            schema = requested_schema(request_body)
            return V.OK if schema is None else V.verify_json_schema(text, schema)
        if name == "logprobs":
            if logprobs is None:
                logprobs = _response_logprobs(response or b"", streamed)
            return V.verify_logprobs(logprobs, self.spec.min_logprob, self.spec.mean_logprob)
        if name == "trained":
            model = getattr(self.classifier(), "model", self.classifier())
            if isinstance(model, DifficultyModel) and model.verifier is not None:
                gain = model.verifier_gain(prompt, text, prompt_feats)
                limit = self.spec.trained_min_gain if self.spec.trained_min_gain is not None else model.verifier.threshold
                if gain >= limit:
                    return V.Verdict(False, V.TRAINED, f"expected gain of climbing {gain:.2f} reaches {limit:.2f}")
        return V.OK

    async def __call__(self, call: Any, answer: Any) -> str | None:
        """The router's verify hook."""
        tier = answer.tier.name
        if tier not in self.tiers or answer.status != 200:
            return None
        prompt = call.features.text if call.features is not None else ""
        predicted = call.decision.predicted if call.decision is not None else None
        # The routing decision's prompt features, when the model that made it is the one
        # judging now (a reload in between may have changed the feature version or bits).
        feats = predicted.features if predicted is not None and call.snap.classifier is self.classifier() else None
        verdict = self.judge(tier, call.body, prompt, answer.body, answer.streamed, answer.logprobs, feats)
        self.metrics.verdicts.labels(tier, verdict.reason).inc()
        if answer.streamed:
            self.metrics.buffered_bytes.labels(tier).inc(len(answer.body or b""))
            if call.attempts:
                self.metrics.buffered_seconds.labels(tier).inc(max(0.0, time.perf_counter() - call.attempts[-1].started))
        if verdict.accepted:
            return None
        if answer.streamed:
            usage: tuple[int, int] | None = answers.stream_usage(answer.body or b"", call.features.prompt_tokens if call.features else 0)
        else:
            usage = _usage(answer.body)
        if usage is not None and tier in self.prices:
            prompt_price, completion_price = self.prices[tier]
            self.metrics.rejected_cost.labels(tier).inc(usage[0] * prompt_price + usage[1] * completion_price)
        if call.attempts:
            self.metrics.rejected_seconds.labels(tier).inc(max(0.0, time.perf_counter() - call.attempts[-1].started))
        return f"{verdict.reason}: {verdict.detail}" if verdict.detail else verdict.reason


def _response_logprobs(response: bytes, streamed: bool) -> list[float]:
    if streamed:
        return answers.stream_logprobs(response)
    try:
        data = json.loads(response or b"{}")
    except ValueError:
        return []
    return answers.token_logprobs(data) if isinstance(data, Mapping) else []


def _usage(body: bytes | None) -> tuple[int, int] | None:
    try:
        usage = json.loads(body or b"{}")["usage"]
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
