"""The router sidecar's configuration file: what `shoal router --config FILE` reads.

This is a wire format between the operator (which renders it from a ModelTier and its
RoutePolicy, see `shoal.render.routerconfig`) and the sidecar (which validates it on start
and on every reload). It reuses the RoutePolicy's own models for rules, fallback, cache,
budgets and limits, so a policy field means the same thing in both places.

The file is JSON (`router.json`) or YAML (`router.yaml`); both parse to this model.
Secrets are never in the file: an external tier carries the PATH of its mounted API key.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import ShoalModel
from .routepolicy import BudgetSpec, CacheSpec, CascadeSpec, EscalationSpec, FallbackSpec, LimitsSpec, RouteRule
from .shadow import ShadowSpec

CONFIG_VERSION = 1

# Where the operator mounts things into the sidecar. Kept here, beside the format, so the
# renderer and the router agree on them.
CONFIG_DIR = "/etc/shoal/router"
CONFIG_KEY = "router.json"
CLASSIFIER_DIR = "/etc/shoal/classifier"
SECRETS_DIR = "/var/run/shoal/secrets"
# The sidecar's own volume for shadow labels (an emptyDir, only when labels are kept).
LABELS_DIR = "/var/lib/shoal/labels"


# The serving checkpoint of the pod's own engine reaches its sidecar through the pod
# template (render/deployment.py), never through this file: it changes exactly when the
# pod's engine does. What the sidecar knows of OTHER tiers (asleep or not, their serving
# checkpoint) it learns from those tiers' sidecars (router/peers.py), so this file
# changes only when the policy or the tier's spec does.
CHECKPOINT_ENV = "SHOAL_SERVING_CHECKPOINT"


def secret_file_path(secret_name: str, key: str) -> str:
    """Where the key `key` of Secret `secret_name` is mounted in the sidecar."""
    return f"{SECRETS_DIR}/{secret_name}/{key}"


class UpstreamTier(ShoalModel):
    """One rung of the ladder as the sidecar sees it: where to send, what it costs."""

    name: str = Field(min_length=1, max_length=63, description="Rung name (the RoutePolicy tier name), used in headers and metrics.")
    kind: Literal["local", "service", "external"] = Field(
        description=(
            "local: this pod's own engine; service: another ModelTier's Service (its sidecar "
            "serves the request with its own engine, never re-routing it); external: an "
            "OpenAI-compatible API outside the cluster."
        )
    )
    url: str = Field(min_length=1, max_length=2048, description="Base URL including the version path, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(min_length=1, max_length=256, description="Model name sent upstream in the request's `model` field.")
    aliases: list[str] = Field(default_factory=list, description="Extra model names that select this tier explicitly.")
    api_key_file: str | None = Field(default=None, description="Path of a file holding the bearer token (external tiers).")
    input_usd_per_token: float = Field(default=0.0, ge=0, description="Price of one prompt token, USD.")
    output_usd_per_token: float = Field(default=0.0, ge=0, description="Price of one generated token, USD.")
    timeout_seconds: float = Field(default=600.0, gt=0, description="Longest a whole request to this upstream may take.")
    max_queue_depth: int | None = Field(default=None, ge=0, description="Spill to the next tier above this many waiting requests.")
    adapters: dict[str, str] | None = Field(
        default=None,
        description=(
            "LoRA adapters this tier's engines serve: model name -> serving source. A request "
            "naming one selects this tier and is sent with its model unchanged; the source is "
            "part of the cache key."
        ),
    )
    adapter_source: str | None = Field(
        default=None,
        description=(
            "A rung serving one adapter of its tier: the adapter's serving source. With the base "
            "checkpoint the sidecar learns live, it keys the cache (BASE+lora:SOURCE)."
        ),
    )
    adapter_cost_centers: dict[str, str] | None = Field(
        default=None, description="Adapter name -> who its tokens and cost are attributed to (spec.adapters[].cost.costCenter)."
    )

    @property
    def in_cluster(self) -> bool:
        return self.kind != "external"


class AdapterConfig(ShoalModel):
    """One LoRA adapter the local engine should have loaded (see router/adapters.py)."""

    name: str = Field(min_length=1, max_length=128, description="Model name the adapter is served as (vLLM's lora_name).")
    source: str = Field(min_length=1, max_length=1024, description="The adapter's serving source URI, as in the ModelTier.")
    path: str | None = Field(
        default=None,
        description="What the engine loads (lora_path): a directory in the engine container or a Hub repository. None: not loadable at run time.",
    )
    unsupported_reason: str | None = Field(default=None, description="Why path is None, as a sentence.")
    cost_center: str | None = Field(default=None, description="Who the adapter's tokens and cost are attributed to.")


class ClassifierConfig(ShoalModel):
    path: str = Field(description="Path of the classifier trained by `shoal router train` (JSON).")
    learned_path: str | None = Field(
        default=None,
        description="Path of the model the operator learned from evaluations; used instead of `path` whenever the file exists (it appears and changes without a restart).",
    )
    confidence_threshold: float = Field(default=0.7, ge=0, le=1, description="Below this confidence the request starts one tier up.")
    target_shares: dict[str, float] | None = Field(
        default=None, description="Share of classifier-routed requests to hold on each named tier (v2 models, shoal.router.share)."
    )


class EngineConfig(ShoalModel):
    metrics_url: str | None = Field(
        default=None,
        description="The local engine's Prometheus endpoint, scraped for queue depth (vllm:num_requests_waiting/running).",
    )
    scrape_interval_seconds: float = Field(default=1.0, gt=0, le=60, description="How often the engine's queue depth is scraped.")


class ServerConfig(ShoalModel):
    keepalive_timeout_seconds: float = Field(default=75.0, gt=0, le=3600, description="Idle client connections are closed after this long.")
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600, description="A client must send its whole request body within this long.")
    max_upstream_connections: int = Field(default=256, ge=1, le=100000, description="Idle keep-alive connections kept per upstream.")
    drain_seconds: float = Field(default=20.0, ge=0, le=3600, description="On shutdown, requests in flight get this long to finish.")


class PeersConfig(ShoalModel):
    """How the sidecar learns the state of other in-cluster tiers from their sidecars."""

    poll_interval_seconds: float = Field(default=2.0, gt=0, le=60, description="How often each peer's GET /shoal/state is polled.")
    poll_timeout_seconds: float = Field(default=1.0, gt=0, le=60, description="A poll not answered within this long marks the peer asleep.")
    stale_after_seconds: float = Field(
        default=5.0, gt=0, le=600,
        description="A peer's checkpoint learned longer ago than this is not trusted: its answers are neither cached nor served from the cache.",
    )

    @model_validator(mode="after")
    def _fresh_enough(self) -> PeersConfig:
        if self.stale_after_seconds <= self.poll_interval_seconds + self.poll_timeout_seconds:
            raise ValueError("staleAfterSeconds must exceed pollIntervalSeconds + pollTimeoutSeconds, or healthy peers would go stale between polls")
        return self


class RouterConfig(ShoalModel):
    """The whole sidecar configuration file."""

    version: Literal[1] = CONFIG_VERSION
    model_tier: str = Field(description="Name of the ModelTier this sidecar belongs to.")
    local_tier: str = Field(description="Name of the rung (in `tiers`) served by this pod's own engine.")
    tiers: list[UpstreamTier] = Field(min_length=1, description="The ladder, smallest and cheapest first.")
    rules: list[RouteRule] = Field(default_factory=list)
    classifier: ClassifierConfig | None = None
    escalation: EscalationSpec = Field(default_factory=EscalationSpec)
    fallback: FallbackSpec = Field(default_factory=FallbackSpec)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    budgets: BudgetSpec = Field(default_factory=BudgetSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    adapters: list[AdapterConfig] | None = Field(
        default=None,
        description="LoRA adapters the local engine should have loaded. Reloaded in place: a change never restarts the pod.",
    )
    server: ServerConfig = Field(default_factory=ServerConfig)
    cascade: CascadeSpec | None = Field(default=None, description="The policy's cascade (router/cascade.py); None: off.")
    peers: PeersConfig = Field(default_factory=PeersConfig)
    shadow: ShadowSpec | None = Field(default=None, description="The policy's shadow evaluation (router/shadow.py); None: off.")
    labels_dir: str | None = Field(
        default=None, description="Directory (a volume of the sidecar) where shadow labels are kept when shadow.labels.mode is keep.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RouterConfig:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique: {names}")
        local = [t for t in self.tiers if t.name == self.local_tier]
        if not local or local[0].kind != "local":
            raise ValueError(f"localTier {self.local_tier!r} must name a tier of kind local")
        for rule in self.rules:
            if rule.tier not in names:
                raise ValueError(f"rule {rule.name} names tier {rule.tier!r}, which is not in tiers")
        if self.shadow is not None:
            self.shadow.check_ladder(names)
        return self

    def tier(self, name: str) -> UpstreamTier:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)
