"""kopf handlers: thin, each one line of intent over `Reconcilers`.

Status is rebuilt from observations and written only when it changed; children are
applied only when they differ from the cluster. At steady state nothing is written.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import kopf
from prometheus_client import CollectorRegistry

from shoal.api.naming import MANAGED_BY, TIER_LABEL
from shoal.kube.client import Kube, load_connection
from shoal.kube.errors import Conflict, Forbidden, Invalid, KubeError, Unavailable

from .autoscaler import Autoscaler
from .reconcilers import InvalidSpec, Reconcilers

MODELTIER = ("shoal.dev", "v1alpha1", "modeltiers")
ROUTEPOLICY = ("shoal.dev", "v1alpha1", "routepolicies")
OWNED = {"app.kubernetes.io/managed-by": MANAGED_BY, TIER_LABEL: kopf.PRESENT}

log = logging.getLogger("shoal.controller")

# Set by `shoal run` before kopf starts; handlers read it from kopf's memo.
REGISTRY = CollectorRegistry()
DEBOUNCE_SECONDS = 0.5
AUTOSCALE_TICK_SECONDS = 1.0
REFS_RECHECK_SECONDS = 15.0


class Debouncer:
    """Coalesces bursts of child events into one refresh per object."""

    def __init__(self, fn: Any, delay: float) -> None:
        self._fn = fn
        self._delay = delay
        self._pending: dict[tuple[str, str], asyncio.Task[None]] = {}

    def request(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key not in self._pending:
            self._pending[key] = asyncio.create_task(self._run(key))

    async def _run(self, key: tuple[str, str]) -> None:
        await asyncio.sleep(self._delay)
        self._pending.pop(key, None)
        try:
            await self._fn(*key)
        except (InvalidSpec, Invalid) as exc:
            log.info("refresh of %s/%s: %s", key[0], key[1], exc)
        except KubeError as exc:
            log.warning("refresh of %s/%s failed, retrying: %s", key[0], key[1], exc)
            await asyncio.sleep(5)
            self.request(*key)


def _translate(exc: Exception) -> Exception:
    """Map our errors to kopf's retry semantics."""
    if isinstance(exc, InvalidSpec):
        return kopf.PermanentError(str(exc))
    if isinstance(exc, Conflict):
        return kopf.TemporaryError(f"conflict, re-reading: {exc}", delay=1)
    if isinstance(exc, Forbidden):
        return kopf.TemporaryError(f"forbidden (check the chart's RBAC): {exc}", delay=60)
    if isinstance(exc, Unavailable):
        return kopf.TemporaryError(f"API server unavailable: {exc}", delay=10)
    return kopf.TemporaryError(str(exc), delay=15)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Progress and diff-base in annotations of our own prefix; the CRD status schema is
    # structural and would prune kopf's status fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="shoal.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="shoal.dev", key="last-handled-configuration"
    )
    # Shoal records its own Events on condition transitions; kopf's per-handler chatter
    # would be a write on every pass.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    kube = Kube(load_connection(), registry=REGISTRY)
    # Scrapes of the sidecars' /metrics: short timeouts, never the API server's client.
    memo.metrics_http = httpx.AsyncClient(timeout=httpx.Timeout(2.0, connect=1.0))
    memo.reconcilers = Reconcilers(
        kube,
        autoscaler=Autoscaler(kube, memo.metrics_http),
        on_peer_changed=lambda ns, policy: memo.policy_refresh.request(ns, policy),
    )
    memo.tier_refresh = Debouncer(memo.reconcilers.tier, DEBOUNCE_SECONDS)
    memo.policy_refresh = Debouncer(lambda ns, n: _policy(memo, ns, n), DEBOUNCE_SECONDS)


async def _policy(memo: kopf.Memo, namespace: str, name: str) -> None:
    await memo.reconcilers.policy(namespace, name, on_tiers=memo.tier_refresh.request)


@kopf.on.resume(*MODELTIER)
@kopf.on.create(*MODELTIER)
@kopf.on.update(*MODELTIER, field="spec")
async def reconcile_tier(name: str, namespace: str, spec: Any, memo: kopf.Memo, **_: Any) -> None:
    try:
        await memo.reconcilers.tier(namespace, name)
    except (InvalidSpec, KubeError) as exc:
        raise _translate(exc) from exc
    # Policies listing this tier re-resolve (a ModelTier they missed may now exist).
    policy = ((spec or {}).get("router") or {}).get("routePolicy")
    if policy:
        memo.policy_refresh.request(namespace, policy)


@kopf.timer(*MODELTIER, interval=AUTOSCALE_TICK_SECONDS, initial_delay=AUTOSCALE_TICK_SECONDS)
async def autoscale_tier(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """Ticks every second; a pass runs when the tier's metricsPeriodSeconds has come round."""
    try:
        await memo.reconcilers.autoscale(namespace, name)
    except KubeError as exc:
        log.warning("autoscaling %s/%s: %s", namespace, name, exc)


def _unresolved(status: Any) -> bool:
    return any(
        c.get("type") == "ResolvedRefs" and c.get("status") == "False" for c in (status or {}).get("conditions", []) or []
    )


@kopf.timer(*MODELTIER, interval=REFS_RECHECK_SECONDS, idle=REFS_RECHECK_SECONDS)
async def recheck_tier_refs(name: str, namespace: str, status: Any, memo: kopf.Memo, **_: Any) -> None:
    """A referenced Secret, ConfigMap or RoutePolicy may appear later: look again.

    Only tiers whose references did not resolve are re-read; the others cost nothing.
    """
    if _unresolved(status):
        memo.tier_refresh.request(namespace, name)


@kopf.timer(*ROUTEPOLICY, interval=REFS_RECHECK_SECONDS, idle=REFS_RECHECK_SECONDS)
async def recheck_policy_refs(name: str, namespace: str, status: Any, memo: kopf.Memo, **_: Any) -> None:
    if _unresolved(status):
        memo.policy_refresh.request(namespace, name)


@kopf.on.cleanup()
async def close_clients(memo: kopf.Memo, **_: Any) -> None:
    await memo.metrics_http.aclose()


@kopf.on.delete(*MODELTIER, optional=True)
async def tier_deleted(name: str, namespace: str, spec: Any, memo: kopf.Memo, **_: Any) -> None:
    """Children go with the tier (owner references); its policy re-resolves. No finalizer."""
    memo.reconcilers.forget(namespace, name)
    policy = ((spec or {}).get("router") or {}).get("routePolicy")
    if policy:
        memo.policy_refresh.request(namespace, policy)


@kopf.on.resume(*ROUTEPOLICY)
@kopf.on.create(*ROUTEPOLICY)
@kopf.on.update(*ROUTEPOLICY, field="spec")
async def reconcile_policy(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        await _policy(memo, namespace, name)
    except (InvalidSpec, KubeError) as exc:
        raise _translate(exc) from exc


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
@kopf.on.event("", "v1", "pods", labels=OWNED)
@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
async def child_changed(labels: dict[str, str], namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """A Deployment, Pod or evaluation Job of a tier changed: reconcile that tier.

    Reads, and writes only what differs: a new status, the promotion an evaluation's
    verdict allows, a child put back.
    """
    memo.tier_refresh.request(namespace, labels[TIER_LABEL])
