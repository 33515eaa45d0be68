"""The routing decision: which tier a request starts at, and the ladder it may climb.

Pure and synchronous: no I/O, no clock, no randomness. The sidecar calls it on every
request and the simulator (shoal.sim) calls the very same code, so what the simulation
predicts is what the data plane does.

Order of precedence (the first that applies wins):

1. explicit   the request names a tier: an `x-shoal-tier` header or a `model` equal to a
              tier name or alias, when `escalation.explicitRouting` is allowed.
2. rule:NAME  the first rule whose every condition holds (prompt tokens, regex, keywords,
              metadata).
3. classifier the trained classifier's predicted tier when its confidence reaches the
              threshold; below it, `classifier-low-confidence` and one tier up
              (escalation.onLowConfidence=nextTier) or the predicted tier (predictedTier).
4. default    the first (smallest) tier of the ladder.

Then spill-over (not for explicit requests, which asked for that tier): while the starting
tier's engine has more waiting requests than its `maxQueueDepth`, or it is scaled to
zero, the request starts one tier higher instead (`spillover`).

Then budgets: tiers whose estimated cost for this request exceeds
`budgets.maxUSDPerRequest`, and external tiers once the hourly budget is spent, are
removed. If nothing is left, `stayOnCluster` serves from the largest in-cluster tier and
`reject` returns a decision with `tier=None` and reason `budget`.

The returned ladder is the starting tier followed by every higher tier: fallback (on
failure, decided by the caller) only ever climbs.

Reasons form a closed set (they are metric label values): see REASONS.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.api.routepolicy import RoutePolicySpec, RouteRule
    from shoal.api.routerconfig import RouterConfig

EXPLICIT = "explicit"
CLASSIFIER = "classifier"
LOW_CONFIDENCE = "classifier-low-confidence"
DEFAULT = "default"
SPILLOVER = "spillover"
BUDGET = "budget"
RULE_PREFIX = "rule:"
# Reasons the data plane adds after the decision: served from the cache, served by a
# higher tier after a failure, or a forwarded request served by this pod's engine.
FALLBACK = "fallback"
CACHE = "cache"
HOP = "hop"
REASONS = frozenset({EXPLICIT, CLASSIFIER, LOW_CONFIDENCE, DEFAULT, SPILLOVER, BUDGET, FALLBACK, CACHE, HOP})
"""Every reason except `rule:NAME`, whose names are bounded by the policy (at most 64 rules)."""

# Output tokens assumed for the per-request budget when the request sets no max_tokens.
DEFAULT_OUTPUT_TOKENS_ESTIMATE = 256


@dataclass(frozen=True)
class Rung:
    """One tier of the ladder, as far as the decision needs it."""

    name: str
    aliases: tuple[str, ...] = ()
    in_cluster: bool = True
    max_queue_depth: int | None = None
    input_usd_per_token: float = 0.0
    output_usd_per_token: float = 0.0


@dataclass(frozen=True)
class Rule:
    """A compiled RouteRule: every condition that is set must hold."""

    name: str
    tier: str
    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None
    patterns: tuple[re.Pattern[str], ...] = ()
    keywords: tuple[str, ...] = ()  # lower-cased
    metadata: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_spec(cls, rule: RouteRule) -> Rule:
        m = rule.match
        return cls(
            name=rule.name,
            tier=rule.tier,
            min_prompt_tokens=m.min_prompt_tokens,
            max_prompt_tokens=m.max_prompt_tokens,
            patterns=tuple(re.compile(p) for p in m.regex),
            keywords=tuple(k.lower() for k in m.keywords),
            metadata=tuple(sorted(m.metadata.items())),
        )

    def matches(self, request: Request) -> bool:
        if self.min_prompt_tokens is not None and request.prompt_tokens < self.min_prompt_tokens:
            return False
        if self.max_prompt_tokens is not None and request.prompt_tokens > self.max_prompt_tokens:
            return False
        for key, value in self.metadata:
            if request.metadata.get(key) != value:
                return False
        if self.patterns and not any(p.search(request.text) for p in self.patterns):
            return False
        if self.keywords:
            lowered = request.text.lower()
            if not any(k in lowered for k in self.keywords):
                return False
        return True


@dataclass(frozen=True)
class Policy:
    """What the decision needs from a RoutePolicy (or from the sidecar's config file)."""

    rungs: tuple[Rung, ...]
    rules: tuple[Rule, ...] = ()
    explicit_allowed: bool = True
    confidence_threshold: float = 0.7
    on_low_confidence: str = "nextTier"  # or "predictedTier"
    max_usd_per_request: float | None = None
    on_budget_exceeded: str = "stayOnCluster"  # or "reject"
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    _explicit: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for i, rung in enumerate(self.rungs):
            self._index[rung.name] = i
            self._explicit.setdefault(rung.name, rung.name)
        for rung in self.rungs:
            for alias in rung.aliases:
                self._explicit.setdefault(alias, rung.name)

    @classmethod
    def from_route_policy(cls, spec: RoutePolicySpec) -> Policy:
        """The policy of a RoutePolicy spec (what the simulator uses). Prices of in-cluster
        tiers are unknown here (they live on the ModelTiers), so they count as free."""
        rungs = tuple(
            Rung(
                name=t.name,
                aliases=tuple(t.aliases),
                in_cluster=t.model_tier_ref is not None,
                max_queue_depth=t.max_queue_depth,
                input_usd_per_token=(t.external.input_usd_per_million_tokens / 1e6) if t.external else 0.0,
                output_usd_per_token=(t.external.output_usd_per_million_tokens / 1e6) if t.external else 0.0,
            )
            for t in spec.tiers
        )
        return cls(
            rungs=rungs,
            rules=tuple(Rule.from_spec(r) for r in spec.rules),
            explicit_allowed=spec.escalation.explicit_routing == "allowed",
            confidence_threshold=spec.classifier.confidence_threshold,
            on_low_confidence=spec.escalation.on_low_confidence,
            max_usd_per_request=spec.budgets.max_usd_per_request,
            on_budget_exceeded=spec.budgets.on_exceeded,
        )

    @classmethod
    def from_router_config(cls, config: RouterConfig) -> Policy:
        rungs = tuple(
            Rung(
                name=t.name,
                aliases=tuple(t.aliases),
                in_cluster=t.kind != "external",
                max_queue_depth=t.max_queue_depth,
                input_usd_per_token=t.input_usd_per_token,
                output_usd_per_token=t.output_usd_per_token,
            )
            for t in config.tiers
        )
        return cls(
            rungs=rungs,
            rules=tuple(Rule.from_spec(r) for r in config.rules),
            explicit_allowed=config.escalation.explicit_routing == "allowed",
            confidence_threshold=config.classifier.confidence_threshold if config.classifier else 0.7,
            on_low_confidence=config.escalation.on_low_confidence,
            max_usd_per_request=config.budgets.max_usd_per_request,
            on_budget_exceeded=config.budgets.on_exceeded,
        )

    def index(self, tier: str) -> int:
        return self._index[tier]

    def explicit_tier(self, name: str | None) -> str | None:
        """The tier a model name or header value selects, if any."""
        if name is None:
            return None
        return self._explicit.get(name)


@dataclass(frozen=True)
class Request:
    """The features of one request the decision looks at.

    `text` is the last user message (what rules and the classifier read); `prompt_tokens`
    is an estimate over all messages (see estimate_tokens).
    """

    text: str = ""
    prompt_tokens: int = 0
    model: str | None = None
    header_tier: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    max_output_tokens: int | None = None


@dataclass(frozen=True)
class TierState:
    """What is known right now about a tier's capacity. Unknown waiting: never spill."""

    waiting: float | None = None
    scaled_to_zero: bool = False


@dataclass(frozen=True)
class Prediction:
    tier: str
    confidence: float
    # The prompt's hashed features as the model read them (v2 models), for a cascade's
    # trained verifier to reuse rather than hash the prompt again.
    features: dict[int, float] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Decision:
    """Where a request starts, why, and the tiers it may fall back to (in order).

    `tier` is None only when the budget rejects the request (reason `budget`).
    """

    tier: str | None
    reason: str
    ladder: tuple[str, ...]
    predicted: Prediction | None = None
    # Tiers the request was meant for but skipped because they were saturated or asleep:
    # the autoscaler's signal that a tier at zero is wanted again.
    spilled_from: tuple[str, ...] = ()


_NO_STATES: Mapping[str, TierState] = {}


def decide(
    policy: Policy,
    request: Request,
    states: Mapping[str, TierState] = _NO_STATES,
    classify: Callable[[str], Prediction] | None = None,
    external_budget_exhausted: bool = False,
) -> Decision:
    """Choose the starting tier and the fallback ladder for one request.

    policy: the compiled ladder and rules (Policy.from_route_policy / from_router_config).
    request: the request's features.
    states: per tier name, the known queue depth and whether it is scaled to zero; tiers
        missing from it are assumed to have capacity.
    classify: the trained classifier (text -> Prediction), or None when disabled. A
        prediction naming a tier that is not in the ladder is ignored.
    external_budget_exhausted: the hourly budget for external tiers is spent.
    """
    rungs = policy.rungs
    start: int | None = None
    reason = DEFAULT
    predicted: Prediction | None = None

    if policy.explicit_allowed:
        tier = policy.explicit_tier(request.header_tier) or policy.explicit_tier(request.model)
        if tier is not None:
            start, reason = policy.index(tier), EXPLICIT

    if start is None:
        for rule in policy.rules:
            if rule.matches(request):
                start, reason = policy.index(rule.tier), RULE_PREFIX + rule.name
                break

    if start is None and classify is not None:
        prediction = classify(request.text)
        if prediction.tier in policy._index:
            predicted = prediction
            start = policy.index(prediction.tier)
            if prediction.confidence >= policy.confidence_threshold:
                reason = CLASSIFIER
            else:
                reason = LOW_CONFIDENCE
                if policy.on_low_confidence == "nextTier":
                    start = min(start + 1, len(rungs) - 1)

    if start is None:
        start = 0

    spilled_from: tuple[str, ...] = ()
    if reason != EXPLICIT:
        spilled = start
        while spilled < len(rungs) - 1 and _saturated(rungs[spilled], states.get(rungs[spilled].name)):
            spilled += 1
        if spilled != start:
            spilled_from = tuple(r.name for r in rungs[start:spilled])
            start, reason = spilled, SPILLOVER

    ladder = tuple(r for r in rungs[start:] if _affordable(policy, r, request, external_budget_exhausted))
    if not ladder:
        if policy.on_budget_exceeded == "reject":
            return Decision(tier=None, reason=BUDGET, ladder=(), predicted=predicted)
        largest = [r.name for r in rungs if r.in_cluster][-1]
        return Decision(tier=largest, reason=BUDGET, ladder=(largest,), predicted=predicted)
    ladder_names = tuple(r.name for r in ladder)
    if ladder_names[0] != rungs[start].name:
        # The starting tier itself was over budget: the request starts higher, on budget.
        reason = BUDGET
    return Decision(tier=ladder_names[0], reason=reason, ladder=ladder_names, predicted=predicted, spilled_from=spilled_from)


def _saturated(rung: Rung, state: TierState | None) -> bool:
    if state is None:
        return False
    if state.scaled_to_zero:
        return True
    return rung.max_queue_depth is not None and state.waiting is not None and state.waiting > rung.max_queue_depth


def estimated_cost_usd(rung: Rung, prompt_tokens: int, output_tokens: int) -> float:
    return prompt_tokens * rung.input_usd_per_token + output_tokens * rung.output_usd_per_token


def _affordable(policy: Policy, rung: Rung, request: Request, external_budget_exhausted: bool) -> bool:
    if external_budget_exhausted and not rung.in_cluster:
        return False
    if policy.max_usd_per_request is None:
        return True
    output = request.max_output_tokens if request.max_output_tokens is not None else DEFAULT_OUTPUT_TOKENS_ESTIMATE
    return estimated_cost_usd(rung, request.prompt_tokens, output) <= policy.max_usd_per_request


# --- features of an OpenAI-style request ---------------------------------------------------


def estimate_tokens(chars: int) -> int:
    """A tokenizer-free estimate: about four characters per token for English text."""
    return (chars + 3) // 4


def request_features(
    body: Mapping[str, Any],
    header_tier: str | None = None,
    header_metadata: Mapping[str, str] | None = None,
) -> Request:
    """Features of a validated chat-completions, completions or embeddings body.

    The text is the last user message (chat), the prompt (completions) or the input
    (embeddings); prompt tokens are estimated over every message. Request metadata comes
    from the body's `metadata` object, overridden by x-shoal-meta-KEY headers.
    """
    text = ""
    chars = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            content = _content_text(message.get("content"))
            chars += len(content)
            if message.get("role") == "user":
                text = content
    else:
        prompt = body.get("prompt", body.get("input"))
        text = _content_text(prompt)
        chars = len(text)
    metadata: dict[str, str] = {}
    raw_metadata = body.get("metadata")
    if isinstance(raw_metadata, Mapping):
        metadata = {str(k): str(v) for k, v in raw_metadata.items()}
    if header_metadata:
        metadata.update(header_metadata)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    model = body.get("model")
    return Request(
        text=text,
        prompt_tokens=estimate_tokens(chars),
        model=model if isinstance(model, str) else None,
        header_tier=header_tier,
        metadata=metadata,
        max_output_tokens=max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else None,
    )


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return ""
