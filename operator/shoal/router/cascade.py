"""The cascade: verify a small tier's non-streamed answer before the client gets it.

Joins the router through the `verify` hook (shoal.router.call): for an answer of one of
`cascade.tiers`, the configured verifiers (shoal.router.verify) run in order on the
answer's text; the first rejection returns its reason and the router climbs to the next
tier (fallback cause `rejected`). Streams are never verified (their bytes are already on
the way to the client), so a cascade costs streamed requests nothing.

Accounting: every verdict is counted (`shoal_cascade_verdicts_total{tier, verdict}`), and
a rejected answer's tokens and cost (`shoal_cascade_rejected_cost_usd_total{tier}`) and
its latency (`shoal_cascade_rejected_seconds_total{tier}`) are counted too, since the
client pays for the extra call in money and time; the answer that is finally sent is
costed as every answer is.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from shoal.api.routepolicy import CascadeSpec

from . import verify as V
from .classifier import DifficultyModel
from .features import answer_features


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


def answer_text(body: bytes | None) -> str | None:
    """The first choice's text of an OpenAI-style chat or completions response."""
    if not body:
        return None
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

    def judge(self, tier: str, request_body: Mapping[str, Any], prompt: str, response: bytes | None) -> V.Verdict:
        text = answer_text(response)
        if text is None:
            return V.OK  # nothing to judge by (tool calls, an odd body): never block on it
        for name in self.spec.verifiers:
            verdict = self._one(name, request_body, prompt, text, response)
            if not verdict.accepted:
                return verdict
        return V.OK

    def _one(self, name: str, request_body: Mapping[str, Any], prompt: str, text: str, response: bytes | None) -> V.Verdict:
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
            try:
                data = json.loads(response or b"{}")
            except ValueError:
                return V.OK
            return V.verify_logprobs(V.chat_logprobs(data), self.spec.min_logprob, self.spec.mean_logprob)
        if name == "trained":
            model = getattr(self.classifier(), "model", self.classifier())
            if isinstance(model, DifficultyModel) and model.verifier is not None:
                gain = model.verifier.gain(answer_features(prompt, text, model.bits))
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
        verdict = self.judge(tier, call.body, prompt, answer.body)
        self.metrics.verdicts.labels(tier, verdict.reason).inc()
        if verdict.accepted:
            return None
        usage = _usage(answer.body)
        if usage is not None and tier in self.prices:
            prompt_price, completion_price = self.prices[tier]
            self.metrics.rejected_cost.labels(tier).inc(usage[0] * prompt_price + usage[1] * completion_price)
        if call.attempts:
            self.metrics.rejected_seconds.labels(tier).inc(max(0.0, time.perf_counter() - call.attempts[-1].started))
        return f"{verdict.reason}: {verdict.detail}" if verdict.detail else verdict.reason


def _usage(body: bytes | None) -> tuple[int, int] | None:
    try:
        usage = json.loads(body or b"{}")["usage"]
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
