"""The RoutePolicy resource: how requests flow across tiers.

A RoutePolicy is an ordered ladder, smallest and cheapest first: ModelTiers in the cluster,
then external OpenAI-compatible endpoints (a frontier API). Each request starts at the
smallest tier that can handle it (explicit choice, rules, then a trained classifier),
spills over when that tier is saturated or asleep, falls back on failure, may be answered
from a cache, and is costed.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import (
    API_VERSION,
    DNS_LABEL_PATTERN,
    ConfigMapKeyReference,
    KubeObject,
    SecretKeyReference,
    ShoalModel,
    cel,
    validations,
)
from .conditions import Condition
from .shadow import ShadowSpec

KIND = "RoutePolicy"
PLURAL = "routepolicies"
MAX_TIERS = 16


class ExternalEndpoint(ShoalModel):
    url: str = Field(
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of an OpenAI-compatible API, including the version path (for example https://api.openai.com/v1).",
    )
    model: str = Field(min_length=1, max_length=256, description="Model name sent to the endpoint.")
    api_key_secret_ref: SecretKeyReference | None = Field(
        default=None,
        description="Secret key holding the API key. It is mounted into the router as a file, never logged or reported.",
    )
    input_usd_per_million_tokens: float = Field(default=0.0, ge=0, le=10000, description="Price of one million prompt tokens, in US dollars.")
    output_usd_per_million_tokens: float = Field(default=0.0, ge=0, le=10000, description="Price of one million generated tokens, in US dollars.")
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600, description="Longest a whole request to this endpoint may take.")


class ModelTierReference(ShoalModel):
    name: str = Field(
        min_length=1,
        max_length=253,
        description="Name of the ModelTier, in the same namespace as the RoutePolicy.",
    )
    adapter: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.:]*$",
        description=(
            "One of the ModelTier's spec.adapters (its name): this rung serves that LoRA adapter "
            "on the tier's engines instead of the base model. Unset: the base model."
        ),
    )


class TierRef(ShoalModel):
    model_config = ShoalModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "has(self.modelTierRef) != has(self.external)",
                "each tier sets exactly one of modelTierRef or external",
            )
        )
    }

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Name of this rung of the ladder, used in headers (x-shoal-tier), metrics and rules.",
    )
    model_tier_ref: ModelTierReference | None = Field(
        default=None,
        description="A ModelTier in the same namespace (optionally one of its LoRA adapters); requests go to its Service.",
    )
    external: ExternalEndpoint | None = Field(default=None, description="An external OpenAI-compatible endpoint.")
    aliases: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Extra model names that select this tier when explicit routing is allowed.",
    )
    max_queue_depth: int | None = Field(
        default=None,
        ge=0,
        le=100000,
        description="Spill to the next tier when this tier's engine has more waiting requests than this. Unset: never spill on queue depth.",
    )

    @model_validator(mode="after")
    def _one_target(self) -> TierRef:
        if (self.model_tier_ref is None) == (self.external is None):
            raise ValueError(f"tier {self.name}: set exactly one of modelTierRef or external")
        return self


class RuleMatch(ShoalModel):
    min_prompt_tokens: int | None = Field(default=None, ge=0, description="Matches when the estimated prompt tokens are at least this.")
    max_prompt_tokens: int | None = Field(default=None, ge=0, description="Matches when the estimated prompt tokens are at most this.")
    regex: list[str] = Field(default_factory=list, max_length=32, description="Matches when any expression is found in the last user message.")
    keywords: list[str] = Field(default_factory=list, max_length=256, description="Matches when any keyword (case-insensitive) occurs in the last user message.")
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description="Matches when every key equals the value in the request's `metadata` object or x-shoal-meta-KEY headers.",
    )

    @field_validator("regex")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"regex {pattern!r} does not compile: {exc}") from exc
        return patterns


class RouteRule(ShoalModel):
    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN, description="Name of the rule, reported as the route reason rule:NAME.")
    match: RuleMatch = Field(description="Every condition set here must hold for the rule to match.")
    tier: str = Field(min_length=1, max_length=63, description="Tier (by name) the matching requests start at.")


class ClassifierSpec(ShoalModel):
    model_config = ShoalModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.mode != 'enabled' || has(self.configMapRef)",
                "classifier.configMapRef is required when classifier.mode is enabled",
                field_path=".configMapRef",
            )
        )
    }

    mode: Literal["disabled", "enabled"] = Field(default="disabled", description="enabled: requests no rule matched are routed by the trained classifier.")
    config_map_ref: ConfigMapKeyReference | None = Field(
        default=None,
        description="ConfigMap key holding the classifier trained by `shoal router train` (JSON).",
    )
    confidence_threshold: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="Below this confidence the request starts one tier above the predicted one (v1 models; a v2 model decides with its own thresholds).",
    )
    target_shares: dict[str, float] = Field(
        default_factory=dict,
        max_length=16,
        description=(
            "Share of classifier-routed requests to keep on each named tier, e.g. {small: 0.8} (v2 models, trained from "
            "outcome lines). The thresholds start from the model's calibration sample; each sidecar then tracks the share "
            "it sends over windows of 500 decisions and moves the thresholds (within 0.2 of the target) so the share holds "
            "when the traffic mix drifts. The largest tier takes what is left. Empty: the model's own thresholds."
        ),
    )
    learn_from_evaluations: Literal["enabled", "disabled"] = Field(
        default="enabled",
        description=(
            "enabled: when a ModelTier of this ladder (not the largest rung) promotes a checkpoint after an evaluation, "
            "the step above that rung is recalibrated from the evaluation's per-item outcomes (v2 models): the model's "
            "expected share of requests that tier fails moves by the change in failure rate the evaluation measured "
            "against the checkpoint it replaces (baseline: serving, or the kept outcomes of that checkpoint's own "
            "evaluation on the same dataset). The result goes to the ConfigMap <policy>-classifier, which the sidecars "
            "prefer over configMapRef and reload without a restart; status.classifier names the version and its data. "
            "Needs the evaluation dataset in a ConfigMap. disabled: the sidecars use configMapRef as it is."
        ),
    )

    def learns(self) -> bool:
        """Whether the sidecars prefer a model learned from evaluations (and the operator learns one)."""
        return self.mode == "enabled" and self.config_map_ref is not None and self.learn_from_evaluations == "enabled"

    @model_validator(mode="after")
    def _needs_model(self) -> ClassifierSpec:
        if self.mode == "enabled" and self.config_map_ref is None:
            raise ValueError("classifier.configMapRef is required when classifier.mode is enabled")
        for tier, share in self.target_shares.items():
            if not 0 <= share <= 1:
                raise ValueError(f"classifier.targetShares.{tier} must be between 0 and 1")
        if sum(self.target_shares.values()) > 1 + 1e-9:
            raise ValueError("classifier.targetShares add up to more than 1")
        return self


class CascadeSpec(ShoalModel):
    """Answer with a small tier first; when a verifier rejects the answer, climb."""

    tiers: list[str] = Field(
        min_length=1, max_length=16,
        description=(
            "Tiers whose answers are verified before they reach the client (streamed ones only with streaming: buffer); "
            "a rejected answer moves the request to the next tier."
        ),
    )
    verifiers: list[Literal["refusal", "arithmetic", "jsonSchema", "regex", "logprobs", "trained"]] = Field(
        min_length=1, max_length=6,
        description=(
            "refusal: refusal or uncertainty phrases; arithmetic: a written calculation is wrong; jsonSchema: the request's "
            "response_format asks for JSON (or a JSON schema) and the answer does not fit; regex: the answer does not match "
            "`regex`; logprobs: the answer's token log-probabilities fall below `minLogprob`/`meanLogprob` (the router asks "
            "the engine for them when the request did not, and takes them off the answer the client gets); trained: the classifier's verifier (a v2 model trained with responses) expects "
            "climbing to help by at least `trainedMinGain`."
        ),
    )
    regex: str | None = Field(default=None, max_length=1024, description="Pattern the answer must match (verifier regex).")
    min_logprob: float | None = Field(default=None, le=0, description="Reject when any token's log-probability is below this.")
    mean_logprob: float | None = Field(default=None, le=0, description="Reject when the mean token log-probability is below this.")
    trained_min_gain: float | None = Field(
        default=None, ge=-1, le=1, description="Expected gain at which the trained verifier rejects; unset: the model's own threshold.",
    )
    streaming: Literal["passThrough", "buffer"] = Field(
        default="passThrough",
        description=(
            "Streamed requests. passThrough: a cascade tier's stream goes to the client as it comes and is never verified "
            "(no added latency). buffer: the router reads the tier's whole stream before sending a byte, verifies it, then "
            "sends it as the same SSE stream, or climbs and the next tier's answer streams as usual; the client's time to "
            "first byte becomes the small tier's whole answer time (plus the next tier's time to first byte when rejected). "
            "A stream longer than 4 MiB is sent on unverified."
        ),
    )

    @model_validator(mode="after")
    def _complete(self) -> CascadeSpec:
        if "regex" in self.verifiers:
            if self.regex is None:
                raise ValueError("cascade.regex is required with the regex verifier")
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"cascade.regex does not compile: {exc}") from exc
        if "logprobs" in self.verifiers and self.min_logprob is None and self.mean_logprob is None:
            raise ValueError("cascade.minLogprob or cascade.meanLogprob is required with the logprobs verifier")
        return self


class EscalationSpec(ShoalModel):
    explicit_routing: Literal["allowed", "disallowed"] = Field(
        default="allowed",
        description="allowed: a request naming a tier (model field or x-shoal-tier header) goes there.",
    )
    on_low_confidence: Literal["nextTier", "predictedTier"] = Field(
        default="nextTier", description="Where a request goes when the classifier is unsure."
    )
    on_unknown_model: Literal["reject", "route"] = Field(
        default="reject",
        description=(
            "A request whose `model` is neither a tier name, an alias nor a tier's served model name: "
            "reject answers 404 model_not_found (what the OpenAI API does); route serves it as if it named "
            "no model (rules, classifier, then the first tier)."
        ),
    )
    entry_tier: str | None = Field(
        default=None,
        max_length=63,
        description="Tier whose pods receive the policy's traffic (the entry Service selects them). Unset: the first ModelTier.",
    )


class CircuitBreakerSpec(ShoalModel):
    consecutive_failures: int = Field(default=5, ge=1, le=1000, description="Failures in a row that open the circuit of an upstream.")
    open_seconds: float = Field(default=30.0, gt=0, le=3600, description="How long an open circuit skips the upstream before one trial request.")


class FallbackSpec(ShoalModel):
    on: list[Literal["connectError", "serverError", "rateLimited", "timeout"]] = Field(
        default_factory=lambda: ["connectError", "serverError", "rateLimited", "timeout"],
        description="Failures (before the first byte reached the client) that move the request to the next tier.",
    )
    max_attempts: int = Field(default=3, ge=1, le=16, description="Most upstreams one request may try.")
    retry_budget_percent: float = Field(
        default=20.0,
        ge=0,
        le=100,
        description="Retries allowed as a share of recent requests, so a failing tier cannot double the load on the next.",
    )
    first_byte_timeout_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="An upstream that sends nothing for this long is treated as timed out."
    )
    circuit_breaker: CircuitBreakerSpec = Field(default_factory=CircuitBreakerSpec, description="Per-upstream circuit breaker.")


class CacheSpec(ShoalModel):
    mode: Literal["disabled", "exactMatch"] = Field(
        default="exactMatch",
        description="exactMatch: deterministic requests (temperature 0) with identical model, messages and parameters are answered from memory.",
    )
    max_entries: int = Field(default=10000, ge=1, le=10_000_000, description="Most responses kept (least recently used are evicted).")
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=64 * 1024**3, description="Most bytes of responses kept.")
    ttl_seconds: int = Field(default=600, ge=1, le=604800, description="How long a cached response may be served.")


class BudgetSpec(ShoalModel):
    max_usd_per_request: float | None = Field(default=None, gt=0, description="A tier whose estimated cost for the request exceeds this is skipped.")
    max_usd_per_hour: float | None = Field(default=None, gt=0, description="Spend per hour on external tiers beyond which they are no longer used.")
    on_exceeded: Literal["reject", "stayOnCluster"] = Field(
        default="stayOnCluster",
        description="When a budget is exhausted: reject (HTTP 429) or stayOnCluster (serve from the largest in-cluster tier).",
    )


class LimitsSpec(ShoalModel):
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="Larger request bodies are refused with 413.")
    request_timeout_seconds: float = Field(default=600.0, gt=0, le=86400, description="Longest a whole request may take through the router.")


class RoutePolicySpec(ShoalModel):
    model_config = ShoalModel.model_config | {
        "json_schema_extra": validations(
            cel(
                "self.tiers.all(t, self.tiers.exists_one(u, u.name == t.name))",
                "tier names must be unique",
                field_path=".tiers",
            ),
            cel(
                "self.tiers.exists(t, has(t.modelTierRef))",
                "at least one tier must reference a ModelTier (the policy's entry point)",
                field_path=".tiers",
            ),
            cel(
                "!has(self.rules) || self.rules.all(r, self.tiers.exists(t, t.name == r.tier))",
                "every rule must name a tier of this policy",
                field_path=".rules",
            ),
        )
    }

    tiers: list[TierRef] = Field(
        min_length=1,
        max_length=MAX_TIERS,
        description="The ladder, smallest and cheapest first. Requests escalate and fall back towards the end.",
    )
    rules: list[RouteRule] = Field(default_factory=list, max_length=64, description="Ordered rules; the first match picks the starting tier.")
    classifier: ClassifierSpec = Field(default_factory=ClassifierSpec, description="Trained classifier for requests no rule matched.")
    escalation: EscalationSpec = Field(default_factory=EscalationSpec, description="Explicit routing and what uncertainty does.")
    fallback: FallbackSpec = Field(default_factory=FallbackSpec, description="What happens when a tier fails.")
    cache: CacheSpec = Field(default_factory=CacheSpec, description="Response cache for deterministic requests.")
    budgets: BudgetSpec = Field(default_factory=BudgetSpec, description="Spending limits.")
    limits: LimitsSpec = Field(default_factory=LimitsSpec, description="Request size and time limits.")
    cascade: CascadeSpec | None = Field(
        default=None,
        description=(
            "Verify the answers of small tiers before they reach the client and climb when a verifier rejects one "
            "(non-streamed requests; streamed ones too with cascade.streaming: buffer)."
        ),
    )
    shadow: ShadowSpec | None = Field(
        default=None,
        description=(
            "Shadow evaluation: after a client was answered, send a sample of a tier's requests to a reference "
            "tier, grade the two answers, and report drift on the ModelTier (condition Drifting). Off when unset."
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> RoutePolicySpec:
        names = [t.name for t in self.tiers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tier names must be unique; repeated: {', '.join(duplicates)}")
        if not any(t.model_tier_ref for t in self.tiers):
            raise ValueError("at least one tier must reference a ModelTier (the policy's entry point)")
        for rule in self.rules:
            if rule.tier not in names:
                raise ValueError(f"rule {rule.name} names tier {rule.tier!r}, which is not in tiers")
        if self.cascade is not None:
            for i, tier in enumerate(self.cascade.tiers):
                if tier not in names[:-1]:
                    raise ValueError(f"cascade.tiers[{i}]: {tier!r} is not a tier below the largest ({', '.join(names[:-1])})")
        for tier in self.classifier.target_shares:
            if tier not in names[:-1]:
                raise ValueError(f"classifier.targetShares names {tier!r}, which is not a tier below the largest ({', '.join(names[:-1])})")
        entry = self.escalation.entry_tier
        if entry is not None and entry not in {t.name for t in self.tiers if t.model_tier_ref}:
            raise ValueError(f"escalation.entryTier {entry!r} must name a tier with a modelTierRef")
        if self.shadow is not None:
            self.shadow.check_ladder(names)
            for i, shadowed in enumerate(self.shadow.tiers):
                if not any(t.name == shadowed.tier and t.model_tier_ref for t in self.tiers):
                    raise ValueError(f"shadow.tiers[{i}].tier: {shadowed.tier!r} must be a tier with a modelTierRef (drift is reported on a ModelTier)")
        return self

    def entry_tier(self) -> TierRef:
        """The tier whose pods receive the policy's traffic."""
        wanted = self.escalation.entry_tier
        for tier in self.tiers:
            if tier.model_tier_ref and (wanted is None or tier.name == wanted):
                return tier
        raise AssertionError("validated spec has an entry tier")

    def secret_refs(self) -> list[SecretKeyReference]:
        return [t.external.api_key_secret_ref for t in self.tiers if t.external and t.external.api_key_secret_ref]


class LearnedFrom(ShoalModel):
    model_tier: str = Field(description="The ModelTier whose promoted checkpoint (or adapter source) was evaluated.")
    adapter: str | None = Field(
        default=None, description="For a rung that serves one of the ModelTier's LoRA adapters: the adapter (its name). Unset: the base model."
    )
    rung: str = Field(description="The policy's tier (rung) whose step up was recalibrated.")
    checkpoint: str = Field(description="The promoted checkpoint; for an adapter rung, the adapter's promoted source.")
    evaluation_job: str = Field(description="The evaluation Job whose per-item outcomes were used.")
    dataset_digest: str = Field(description="sha256 of the evaluation dataset whose prompts were used.")
    items: int = Field(description="Items with an outcome for both the promoted checkpoint and the one it replaced.")
    compared_with: Literal["baseline", "previousEvaluation"] = Field(
        description="baseline: the serving checkpoint, scored in the same Job; previousEvaluation: the kept outcomes of the replaced checkpoint's own evaluation."
    )
    failure_rate: float = Field(description="Share of those items the promoted checkpoint failed.")
    previous_failure_rate: float = Field(description="Share of those items the checkpoint it replaced failed.")
    prompts: Literal["dataset", "none"] | None = Field(
        default=None,
        description=(
            "dataset: the evaluation's prompts were read from its dataset ConfigMap and the intercept moved over them; "
            "none: the dataset is a uri, which the operator does not download: the intercept moved by the level alone (meanOver)."
        ),
    )
    mean_over: Literal["evaluationPrompts", "trainingSample", "interceptOnly"] | None = Field(
        default=None,
        description=(
            "What the mean predicted need for help was moved over: evaluationPrompts (the evaluation's own prompts); "
            "trainingSample (no prompts: the model's sample of its training prompts); interceptOnly (no prompts, and a model "
            "file trained before it carried that sample: one point at the intercept; retrain to learn better from a uri dataset)."
        ),
    )


class ClassifierStatus(ShoalModel):
    version: str | None = Field(default=None, description="sha256 (first 16 hex digits) of the model file the sidecars load; they report it at /shoal/state.")
    source: Literal["ConfigMap", "Learned"] = Field(description="ConfigMap: spec.classifier.configMapRef as it is; Learned: recalibrated from evaluations (learnedFrom).")
    config_map: str = Field(description="The ConfigMap (and key) the sidecars read the model from.")
    learned_from: LearnedFrom | None = Field(default=None, description="The evaluation the learned model's last recalibration came from.")
    learned_at: datetime | None = Field(default=None, description="When the learned model was written.")
    message: str | None = Field(default=None, description="What the operator did with the latest promotion's outcomes, as a sentence.")


class TargetShareStatus(ShoalModel):
    tier: str = Field(description="The tier (rung) whose share is held (spec.classifier.targetShares).")
    target_share: float = Field(description="The share of classifier-routed requests asked for.")
    observed_share: float | None = Field(
        default=None, description="Mean over the sidecars of the share each kept on the tier in its last full window of 500 decisions; unset before any sidecar completed one."
    )
    threshold: float | None = Field(
        default=None, description="Mean over the sidecars of the expected gain a request needs now to climb above the tier (unset when it is infinite: a target of 0 or 1)."
    )
    sidecars: int = Field(description="Sidecars whose observed share is in the mean.")


class RoutePolicyStatus(ShoalModel):
    observed_generation: int | None = Field(default=None, description="The metadata.generation this status was computed from.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready and ResolvedRefs.")
    endpoint: str | None = Field(default=None, description="In-cluster base URL of the policy's OpenAI-compatible API (the entry Service).")
    classifier: ClassifierStatus | None = Field(default=None, description="Which classifier the sidecars use and where it came from (classifier.mode enabled).")
    target_shares: list[TargetShareStatus] | None = Field(
        default=None,
        description="Per tier of spec.classifier.targetShares: the target, the share the sidecars observe and their current threshold, read from the sidecars every 30 s (written when a value rounded to 3 decimals changes).",
    )


class RoutePolicy(KubeObject):
    """A whole RoutePolicy object. `from_body` validates what the API server stored."""

    api_version: Literal["shoal.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["RoutePolicy"] = KIND
    spec: RoutePolicySpec
    status: RoutePolicyStatus = Field(default_factory=RoutePolicyStatus)
