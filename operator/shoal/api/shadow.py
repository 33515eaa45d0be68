"""Shadow evaluation of live traffic: `RoutePolicy.spec.shadow`.

Why on the RoutePolicy and not on the ModelTier: the reference that grades a tier is a
rung of a ladder (a larger tier or the frontier API, whose URL, price and API key only the
policy knows), the sidecars that answer the requests are configured from the policy, and
the money spent on reference calls is a policy's budget. What is graded is a ModelTier's
serving checkpoint, so the verdict (the `Drifting` condition) is reported on the
ModelTier, whose status already carries its checkpoints and evaluations.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import ShoalModel

# The fixed rubric of the LLM judge. Fixed on purpose: a drift signal is only comparable
# over time if the question asked of the judge does not change.
JUDGE_RUBRIC = (
    "You compare a response to a reference answer written by a stronger model for the same "
    "request. PASS if the response gives the same final answer or the same facts as the "
    "reference (wording, length and formatting may differ); FAIL if it contradicts the "
    "reference, misses what the reference answers, or answers a different question."
)


class ShadowTier(ShoalModel):
    tier: str = Field(min_length=1, max_length=63, description="The tier (a rung of spec.tiers) whose answers are checked.")
    reference: str = Field(
        min_length=1, max_length=63,
        description="The rung that answers the same request as the reference: a larger tier or the frontier API, above `tier` in spec.tiers.",
    )
    sample_percent: float = Field(
        default=5.0, gt=0, le=100,
        description="Share of the requests answered by `tier` (and not excluded) that are also sent to the reference, in percent.",
    )
    baseline_agreement: float | None = Field(
        default=None, gt=0, le=1,
        description=(
            "Agreement with the reference measured when the serving checkpoint was promoted (0..1). "
            "Unset: the first detection.warmupSamples graded samples after each promotion set it."
        ),
    )


class ShadowGrading(ShoalModel):
    type: Literal["exactMatch", "jsonFields", "numeric", "choice", "llmJudge"] = Field(
        default="exactMatch",
        description=(
            "How a tier's answer is compared with the reference's: exactMatch (after normalising case, "
            "spaces, quotes and final punctuation), jsonFields (the JSON values of `fields` are equal), "
            "numeric (the last number within `tolerance`), choice (the same option letter), llmJudge (a "
            "model answers PASS or FAIL to a fixed rubric)."
        ),
    )
    fields: list[str] = Field(default_factory=list, max_length=32, description="jsonFields: top-level keys compared; empty compares the whole JSON value.")
    tolerance: float = Field(default=0.0, ge=0, description="numeric: the largest absolute difference that still agrees.")
    judge_tier: str | None = Field(
        default=None, max_length=63,
        description="llmJudge: the rung (of spec.tiers) that judges, through its OpenAI-compatible API. Default: the reference tier.",
    )


class ShadowExclusions(ShoalModel):
    tool_calls: Literal["exclude", "include"] = Field(
        default="exclude", description="Requests that offer tools or answers that call them: their effects cannot be replayed safely.",
    )
    private: Literal["exclude", "include"] = Field(
        default="exclude",
        description="Requests marked private (header x-shoal-private: 1, or metadata.private true in the body).",
    )
    requests: Literal["all", "deterministicOnly"] = Field(
        default="all",
        description=(
            "deterministicOnly samples only requests with temperature 0, for exactMatch grading of a tier "
            "that is otherwise sampled at random. A client can always opt a request out with x-shoal-shadow: off."
        ),
    )


class ShadowLabels(ShoalModel):
    mode: Literal["off", "keep"] = Field(
        default="off",
        description=(
            "keep: the sidecar keeps sampled prompts with the reference answer and the grade, as JSON lines for the "
            "router's trainer, in its own volume. Prompts are user data: off by default; never in status, logs, Events or metrics."
        ),
    )
    max_items: int = Field(default=10000, ge=1, le=1_000_000, description="Most labelled samples kept per sidecar (the oldest are dropped).")
    max_bytes: int = Field(default=32 * 1024 * 1024, ge=4096, le=1024 * 1024 * 1024, description="Most bytes of labelled samples kept per sidecar.")


class ShadowDetection(ShoalModel):
    min_drop_percent: float = Field(
        default=10.0, gt=0, lt=100,
        description="The drop of agreement, in points, the sequential test is tuned to detect (smaller drops are found more slowly).",
    )
    warmup_samples: int = Field(default=2000, ge=50, le=1_000_000, description="Graded samples after a promotion that set the baseline when baselineAgreement is unset.")
    method: Literal["cusum", "sprt", "wilson"] = Field(
        default="cusum", description="The sequential test: cusum (default, fastest in the benchmark), sprt, or a wilson window.",
    )


class ShadowSpec(ShoalModel):
    """Grade a sample of live answers against a reference tier and watch for drift."""

    tiers: list[ShadowTier] = Field(min_length=1, max_length=16, description="Which tiers are checked, against which reference, how often.")
    max_usd_per_hour: float = Field(
        default=1.0, gt=0,
        description="Spend per hour on reference (and judge) calls, per sidecar; once reached, samples are skipped until spend falls.",
    )
    max_concurrency: int = Field(default=4, ge=1, le=256, description="Reference calls in flight at once, per sidecar.")
    max_queue: int = Field(default=64, ge=1, le=10000, description="Samples waiting for a reference call, per sidecar; beyond it they are skipped.")
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600, description="Longest a reference (or judge) call may take.")
    grading: ShadowGrading = Field(default_factory=ShadowGrading, description="How a sampled answer is compared with the reference's answer.")
    exclusions: ShadowExclusions = Field(default_factory=ShadowExclusions, description="Which requests are never sampled.")
    labels: ShadowLabels = Field(default_factory=ShadowLabels, description="Whether graded samples are kept as training data for the router (off by default).")
    detection: ShadowDetection = Field(default_factory=ShadowDetection, description="The sequential test the operator runs on each tier's agreement to set its Drifting condition.")

    @model_validator(mode="after")
    def _distinct(self) -> ShadowSpec:
        names = [t.tier for t in self.tiers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"shadow.tiers: each tier at most once; repeated: {', '.join(repeated)}")
        for t in self.tiers:
            if t.tier == t.reference:
                raise ValueError(f"shadow.tiers: tier {t.tier} cannot be its own reference")
        return self

    def check_ladder(self, ladder: list[str]) -> None:
        """Every named rung exists and every reference sits above its tier (ValueError naming the field)."""
        position = {name: i for i, name in enumerate(ladder)}
        for i, t in enumerate(self.tiers):
            if t.tier not in position:
                raise ValueError(f"shadow.tiers[{i}].tier: {t.tier!r} is not a tier of this policy")
            if t.reference not in position:
                raise ValueError(f"shadow.tiers[{i}].reference: {t.reference!r} is not a tier of this policy")
            if position[t.reference] <= position[t.tier]:
                raise ValueError(f"shadow.tiers[{i}].reference: {t.reference!r} must come after {t.tier!r} in spec.tiers (a larger tier)")
        judge = self.grading.judge_tier
        if judge is not None and judge not in position:
            raise ValueError(f"shadow.grading.judgeTier: {judge!r} is not a tier of this policy")

    def for_tier(self, name: str) -> ShadowTier | None:
        for t in self.tiers:
            if t.tier == name:
                return t
        return None
