"""ModelTier (+ its RoutePolicy) -> the router sidecar's configuration file content.

The controller puts the result, as JSON, in the tier's router ConfigMap under
`routerconfig.CONFIG_KEY` (router.json), mounted at `routerconfig.CONFIG_DIR`.

Where the ladder's rungs point:
- this tier's own rung: the pod's engine, http://127.0.0.1:<engine.port>/v1 (kind local);
- another ModelTier: its Service, http://<tier>.<namespace>.svc/v1 (kind service); that
  pod's sidecar serves the forwarded request with its own engine;
- an external endpoint: its URL, with the API key read from the Secret mounted at
  /var/run/shoal/secrets/<secret>/<key> (the file path is in the config, never the key).

Nothing here changes while the fleet runs: not whether another tier is asleep, nor which
checkpoint it serves. Sidecars learn both from each other (router/peers.py), and the
pod's own serving checkpoint is in its pod template (render/deployment.py), so this
file changes only when the policy or a tier's spec does.

Cost of self-hosted tiers: the GPU time of a busy replica is attributed to the tokens it
generates, USD per output token = cost.gpuHourUSD * gpus / 3600 / cost.tokensPerSecondPerReplica;
prompt tokens are covered by that estimate (prefill is far cheaper than decoding).
External tiers use the RoutePolicy's per-million-token prices.
"""

from __future__ import annotations

from typing import Any

from shoal.api.modeltier import ModelTier
from shoal.api.naming import LEARNED_MODEL_PATH, tier_endpoint
from shoal.api.routepolicy import RoutePolicy, TierRef
from shoal.api.routerconfig import CLASSIFIER_DIR, LABELS_DIR, RouterConfig, secret_file_path
from shoal.api.shadow import ShadowSpec

from .deployment import adapter_location


def self_hosted_usd_per_token(tier: ModelTier) -> float:
    """Estimated USD per generated token of a self-hosted tier (0 without GPUs or a price)."""
    cost = tier.spec.cost
    gpus = tier.spec.resources.gpu.count
    return cost.gpu_hour_usd * gpus / 3600.0 / cost.tokens_per_second_per_replica


def render_router_config(
    tier: ModelTier,
    policy: RoutePolicy | None,
    tiers: dict[str, ModelTier],
    namespace: str,
    *,
    adapters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The sidecar config of `tier`'s pods, as a dict ready to be dumped as JSON.

    tier: the ModelTier whose pods run this sidecar.
    policy: the RoutePolicy named by tier.spec.router.routePolicy, or None: then the
        ladder is the local engine alone.
    tiers: ModelTiers of the namespace by name. A policy rung whose ModelTier is missing
        is left out of the ladder (the controller reports it with ResolvedRefs=False), so
        the other rungs keep serving.
    namespace: where the tier's Services live.
    adapters: adapter name -> the source `tier` serves, as this pass decided
        (plan/adapters.py); None: read from the tier's status (`serving_adapters`).

    If the policy does not list `tier` itself, its rung is added first so the pod still
    serves what its own Service receives.
    """
    serving = serving_adapters(tier) if adapters is None else adapters
    local_rung_name = tier.name
    local_seen = False
    rungs: list[dict[str, Any]] = []
    if policy is not None:
        for ref in policy.spec.tiers:
            adapter = ref.model_tier_ref.adapter if ref.model_tier_ref is not None else None
            if ref.model_tier_ref is not None and ref.model_tier_ref.name == tier.name and adapter is None and not local_seen:
                local_rung_name, local_seen = ref.name, True
                rungs.append(_local(tier, ref, serving))
            elif ref.model_tier_ref is not None and ref.model_tier_ref.name == tier.name:
                # An adapter of this pod's own engine (or a second base rung): the engine
                # directly, under the adapter's name. An adapter that serves nothing yet
                # (its first source not passed) is left out until it does.
                if adapter is None or adapter in serving:
                    rungs.append(_on_adapter(_local(tier, ref, serving), serving, adapter))
            elif ref.model_tier_ref is not None:
                target = tiers.get(ref.model_tier_ref.name)
                # A missing ModelTier or adapter is left out (ResolvedRefs=False says why).
                target_serving = serving_adapters(target) if target is not None else {}
                if target is not None and (adapter is None or adapter in target_serving):
                    rungs.append(_on_adapter(_service(target, ref, namespace, target_serving), target_serving, adapter))
            elif ref.external is not None:
                rungs.append(_external(ref))
    if not any(r["kind"] == "local" for r in rungs):
        rungs.insert(0, _local(tier, None, serving))
    elif not local_seen:
        # The ladder names this tier only through its adapters ("refunds adapter on the 8B
        # -> 70B"): the first of those rungs is the one this pod's own engine serves.
        local_rung_name = next(r["name"] for r in rungs if r["kind"] == "local")

    config: dict[str, Any] = {
        "version": 1,
        "modelTier": tier.name,
        "localTier": local_rung_name,
        "tiers": rungs,
        "engine": {"metricsUrl": f"http://127.0.0.1:{tier.spec.engine.port}/metrics"},
    }
    if serving:
        config["adapters"] = [_adapter(tier, name, source) for name, source in serving.items()]
    if policy is not None:
        spec = policy.spec
        rung_names = {r["name"] for r in rungs}
        config["rules"] = [r.to_wire() for r in spec.rules if r.tier in rung_names]
        if spec.classifier.mode == "enabled" and spec.classifier.config_map_ref is not None:
            config["classifier"] = {
                "path": f"{CLASSIFIER_DIR}/{spec.classifier.config_map_ref.key}",
                **({"learnedPath": f"{CLASSIFIER_DIR}/{LEARNED_MODEL_PATH}"} if spec.classifier.learns() else {}),
                "confidenceThreshold": spec.classifier.confidence_threshold,
                **({"targetShares": dict(spec.classifier.target_shares)} if spec.classifier.target_shares else {}),
            }
        escalation = spec.escalation.to_wire()
        escalation.pop("entryTier", None)
        config["escalation"] = escalation
        config["fallback"] = spec.fallback.to_wire()
        config["cache"] = spec.cache.to_wire()
        config["budgets"] = spec.budgets.to_wire()
        config["limits"] = spec.limits.to_wire()
        if spec.cascade is not None and any(t in rung_names for t in spec.cascade.tiers):
            cascade = spec.cascade.to_wire()
            cascade["tiers"] = [t for t in spec.cascade.tiers if t in rung_names]
            config["cascade"] = cascade
        shadow = _shadow(spec.shadow, rung_names)
        if shadow is not None:
            config["shadow"] = shadow
            if spec.shadow is not None and spec.shadow.labels.mode == "keep":
                config["labelsDir"] = LABELS_DIR
    # Validate here so a bad render fails in the operator, not in every sidecar.
    return RouterConfig.model_validate(config).to_wire()


def _shadow(shadow: ShadowSpec | None, rung_names: set[str]) -> dict[str, Any] | None:
    """The policy's shadow spec for this sidecar: only the pairs whose two rungs it can reach
    (a rung whose ModelTier is missing is left out of the ladder, and so is its pair)."""
    if shadow is None:
        return None
    wire = shadow.to_wire()
    wire["tiers"] = [t.to_wire() for t in shadow.tiers if t.tier in rung_names and t.reference in rung_names]
    judge = shadow.grading.judge_tier
    if not wire["tiers"] or (judge is not None and judge not in rung_names):
        return None
    return wire


def serving_adapters(tier: ModelTier) -> dict[str, str]:
    """Adapter name -> the source it serves now, in spec order, as the tier's status says.

    An adapter with an evaluation (its own or the tier's) serves the status's
    ``adapters[].servingSource``: only a source that passed, and nothing before its first
    source passed. One without serves its spec source as soon as it is committed. The
    tier's own pass renders from its plan instead (the `adapters` argument of
    `render_router_config`), so a promotion reaches the ConfigMap in the pass that decides it.
    """
    status = {a.name: a.serving_source for a in tier.status.adapters}
    serving: dict[str, str] = {}
    for adapter in tier.spec.adapters:
        source = status.get(adapter.name) if tier.spec.adapter_evaluation(adapter) is not None else adapter.source
        if source is not None:
            serving[adapter.name] = source
    return serving


def _adapter(tier: ModelTier, name: str, source: str) -> dict[str, Any]:
    spec = tier.spec.adapter(name)
    assert spec is not None
    path, reason = adapter_location(source)
    entry: dict[str, Any] = {"name": name, "source": source}
    if path is not None:
        entry["path"] = path
    if reason is not None:
        entry["unsupportedReason"] = reason
    if spec.cost.cost_center is not None:
        entry["costCenter"] = spec.cost.cost_center
    return entry


def _local(tier: ModelTier, ref: TierRef | None, serving: dict[str, str]) -> dict[str, Any]:
    rung: dict[str, Any] = {
        "name": ref.name if ref else tier.name,
        "kind": "local",
        "url": f"http://127.0.0.1:{tier.spec.engine.port}/v1",
        "model": tier.spec.model.name,
        "outputUSDPerToken": self_hosted_usd_per_token(tier),
    }
    return _with_adapters(_with_ref(rung, ref), tier, serving)


def _service(target: ModelTier, ref: TierRef, namespace: str, serving: dict[str, str]) -> dict[str, Any]:
    rung: dict[str, Any] = {
        "name": ref.name,
        "kind": "service",
        "url": tier_endpoint(target.name, namespace),
        "model": target.spec.model.name,
        "outputUSDPerToken": self_hosted_usd_per_token(target),
    }
    return _with_adapters(_with_ref(rung, ref), target, serving)


def _external(ref: TierRef) -> dict[str, Any]:
    ext = ref.external
    assert ext is not None
    rung: dict[str, Any] = {
        "name": ref.name,
        "kind": "external",
        "url": ext.url.rstrip("/"),
        "model": ext.model,
        "inputUSDPerToken": ext.input_usd_per_million_tokens / 1e6,
        "outputUSDPerToken": ext.output_usd_per_million_tokens / 1e6,
        "timeoutSeconds": ext.timeout_seconds,
    }
    if ext.api_key_secret_ref is not None:
        rung["apiKeyFile"] = secret_file_path(ext.api_key_secret_ref.name, ext.api_key_secret_ref.key)
    return _with_ref(rung, ref)


def _on_adapter(rung: dict[str, Any], serving: dict[str, str], adapter: str | None) -> dict[str, Any]:
    """A rung serving one of `tier`'s adapters: its model is the adapter's name, and its
    adapter source (part of the cache key, beside the base checkpoint the sidecar learns
    live) names the adapter's serving source."""
    if adapter is None:
        return rung
    rung["model"] = adapter
    rung["adapterSource"] = serving[adapter]
    return rung


def _with_adapters(rung: dict[str, Any], tier: ModelTier, serving: dict[str, str]) -> dict[str, Any]:
    """A tier's serving adapters are model names that select its rung (aliases) and are
    sent to its engine unchanged (adapters, with the serving source for the cache key)."""
    if serving:
        rung["adapters"] = dict(serving)
        centers = {a.name: a.cost.cost_center for a in tier.spec.adapters if a.cost.cost_center and a.name in serving}
        if centers:
            rung["adapterCostCenters"] = centers
        rung["aliases"] = list(dict.fromkeys([*rung.get("aliases", []), *serving]))
    return rung


def _with_ref(rung: dict[str, Any], ref: TierRef | None) -> dict[str, Any]:
    if ref is not None:
        if ref.aliases:
            rung["aliases"] = list(ref.aliases)
        if ref.max_queue_depth is not None:
            rung["maxQueueDepth"] = ref.max_queue_depth
    return rung
