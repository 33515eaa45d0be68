"""kopf wiring: indexes that fill the view, events that queue reconciles, one loop.

kopf keeps one list-and-watch per kind. Its indexes (`@kopf.index`) hold what the
reconciles read (kube/view.py), and kopf runs no other handler until every index has
been filled from its initial list, so no reconcile ever sees half a world. Watch events
only queue keys (controller/triggers.py); the work queue (controller/queue.py) runs each
queued object's pass once at a time with one retry rule. One operator-wide loop drives
the autoscaler and re-checks unresolved references; there is no per-object timer and no
kopf progress annotation on the objects, so nothing is written at steady state.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import kopf

from shoal.api.naming import MANAGED_BY, TIER_LABEL
from shoal.kube.client import Kube, load_connection
from shoal.kube.view import View, pack, slim_config_map, slim_pod, without_managed_fields

from .autoscaler import Autoscaler
from .clock import SystemClock
from .drift import DriftWatch
from .shares import ShareWatch
from .queue import WorkQueue
from .reconcilers import Reconcilers
from .settings import OperatorSettings
from .triggers import Triggers

MODELTIER = ("shoal.dev", "v1alpha1", "modeltiers")
ROUTEPOLICY = ("shoal.dev", "v1alpha1", "routepolicies")
DEPLOYMENTS = ("apps", "v1", "deployments")
PODS = ("", "v1", "pods")
JOBS = ("batch", "v1", "jobs")
SERVICES = ("", "v1", "services")
PDBS = ("policy", "v1", "poddisruptionbudgets")
CONFIGMAPS = ("", "v1", "configmaps")
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
OWNED = {"app.kubernetes.io/managed-by": MANAGED_BY, TIER_LABEL: kopf.PRESENT}

# The operator-wide loop: how often it looks for tiers whose metrics period has come
# round, and how often it re-checks references that did not resolve (a Secret is not
# watched, so its creation is noticed by looking again).
TICK_SECONDS = 1.0
RECHECK_SECONDS = 15.0
AUTOSCALE_CONCURRENCY = 32

log = logging.getLogger("shoal.controller")


def _plain(body: Any) -> dict[str, Any]:
    """kopf's body as a plain dict (its nested values already are), without the
    server-side apply bookkeeping (metadata.managedFields, often a third of an object),
    which no reconcile reads."""
    return without_managed_fields(dict(body))


def _key(body: Any) -> tuple[str, str]:
    return (body["metadata"].get("namespace") or "", body["metadata"]["name"])


# --- the view: kopf indexes --------------------------------------------------------------
# Every handler here is a coroutine: kopf runs plain functions in a thread pool, which at a
# thousand tiers cost more CPU than the handlers themselves. Children, pods and Jobs are
# kept packed (kube/view.py: a fifth of the memory of the dicts).


class NoDiffBase(kopf.DiffBaseStorage):
    """No "last handled" state: Shoal has no change handlers (only indexes and watch
    events), so kopf's default diff base, a deep copy of every watched body on every
    event, would be work for nothing. It also writes nothing to the objects."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> Any:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None



@kopf.index(*MODELTIER)
async def tiers(body: Any, **_: Any) -> dict[Any, Any]:
    return {_key(body): _plain(body)}


@kopf.index(*MODELTIER)
async def tier_names(body: Any, **_: Any) -> dict[Any, Any]:
    return {_key(body)[0]: body["metadata"]["name"]}


@kopf.index(*ROUTEPOLICY)
async def policies(body: Any, **_: Any) -> dict[Any, Any]:
    return {_key(body): _plain(body)}


@kopf.index(*ROUTEPOLICY)
async def policy_names(body: Any, **_: Any) -> dict[Any, Any]:
    return {_key(body)[0]: body["metadata"]["name"]}


@kopf.index(*DEPLOYMENTS, labels=OWNED)
async def deployments(body: Any, **_: Any) -> dict[Any, Any]:
    return {_key(body): pack(_plain(body))}


@kopf.index(*SERVICES, labels=MANAGED)
async def services(body: Any, **_: Any) -> dict[Any, Any]:
    return {_key(body): pack(_plain(body))}


@kopf.index(*PDBS, labels=OWNED)
async def pdbs(body: Any, **_: Any) -> dict[Any, Any]:
    return {_key(body): pack(_plain(body))}


@kopf.index(*CONFIGMAPS)
async def config_maps(body: Any, **_: Any) -> dict[Any, Any]:
    return {_key(body): pack(slim_config_map(_plain(body)))}


@kopf.index(*PODS, labels={**OWNED, "app.kubernetes.io/component": "inference"})
async def tier_pods(body: Any, labels: Any, **_: Any) -> dict[Any, Any]:
    return {(_key(body)[0], labels[TIER_LABEL]): pack(slim_pod(_plain(body)))}


@kopf.index(*PODS, labels={**OWNED, "job-name": kopf.PRESENT})
async def job_pods(body: Any, labels: Any, **_: Any) -> dict[Any, Any]:
    return {(_key(body)[0], labels["job-name"]): pack(slim_pod(_plain(body)))}


@kopf.index(*JOBS, labels=OWNED)
async def eval_jobs(body: Any, labels: Any, **_: Any) -> dict[Any, Any]:
    return {(_key(body)[0], labels[TIER_LABEL]): pack(_plain(body))}


# --- startup and the operator-wide loop ---------------------------------------------------


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **indexes: Any) -> None:
    # Shoal records its own Events on condition transitions; kopf's per-handler chatter
    # would be a write on every pass.
    settings.posting.level = logging.WARNING
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    operator: OperatorSettings = memo.settings
    kube = Kube(load_connection(), registry=memo.registry)
    view = View(**{name: indexes[name] for name in (
        "tiers", "tier_names", "policies", "policy_names", "deployments", "services", "pdbs",
        "config_maps", "tier_pods", "job_pods", "eval_jobs")})
    clock = SystemClock()
    # Scrapes of the sidecars' /metrics: short timeouts, never the API server's client. No
    # idle connections are kept: with one pod per host, keeping them would only grow the
    # pool that every request scans (the cost that once pinned a core at 1,000 tiers);
    # at most AUTOSCALE_CONCURRENCY passes scrape at once, so nothing queues in the pool.
    memo.metrics_http = httpx.AsyncClient(
        timeout=httpx.Timeout(2.0, connect=1.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
    )
    queue: WorkQueue
    reconcilers = Reconcilers(
        kube, view, clock,
        requeue=lambda key: queue.add(key),
        autoscaler=Autoscaler(kube, view, memo.metrics_http, clock),
        drift=DriftWatch(kube, view, memo.metrics_http, clock, memo.registry),
        shares=ShareWatch(kube, view, memo.metrics_http, clock),
    )
    queue = WorkQueue(reconcilers.reconcile, workers=operator.workers)
    memo.view = view
    memo.queue = queue
    memo.reconcilers = reconcilers

    def forget(namespace: str, name: str) -> None:
        reconcilers.forget(namespace, name)
        queue.forget(("ModelTier", namespace, name))

    memo.triggers = Triggers(view, queue.add, forget)
    queue.start()
    memo.loop = asyncio.create_task(operator_loop(memo), name="shoal operator loop")


async def operator_loop(memo: Any) -> None:
    """Every second: autoscaling passes of the tiers that are due; every RECHECK_SECONDS:
    the unresolved references again."""
    view: View = memo.view
    reconcilers: Reconcilers = memo.reconcilers
    autoscaler = reconcilers.autoscaler
    assert autoscaler is not None
    running: dict[tuple[str, str], asyncio.Task[None]] = {}
    slots = asyncio.Semaphore(AUTOSCALE_CONCURRENCY)
    last_recheck = 0.0
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        for key, store in list(view.tiers.items()):
            body = next(iter(store), None)
            if body is None or key in running or not autoscaler.due(key[0], key[1], body):
                continue
            running[key] = asyncio.create_task(_autoscale(reconcilers, key, slots))
            running[key].add_done_callback(lambda _t, k=key: running.pop(k, None))
        if started - last_recheck >= RECHECK_SECONDS:
            last_recheck = started
            for namespace in list(view.tier_names) + list(view.policy_names):
                memo.triggers.unresolved_in(namespace)
            view.prune()
        await asyncio.sleep(max(0.0, TICK_SECONDS - (loop.time() - started)))


async def _autoscale(reconcilers: Reconcilers, key: tuple[str, str], slots: asyncio.Semaphore) -> None:
    try:
        async with slots:
            await reconcilers.autoscale(*key)
    except Exception as exc:  # noqa: BLE001 - the next period tries again; the loop must go on
        log.warning("autoscaling %s/%s: %s", key[0], key[1], exc)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    memo.loop.cancel()
    await memo.queue.stop()
    await memo.metrics_http.aclose()


# --- watch events: queue what they concern --------------------------------------------------


@kopf.on.event(*MODELTIER)
async def tier_event(type: str | None, body: Any, memo: kopf.Memo, **_: Any) -> None:
    memo.triggers.tier_event(type, _plain(body))


@kopf.on.event(*ROUTEPOLICY)
async def policy_event(type: str | None, body: Any, memo: kopf.Memo, **_: Any) -> None:
    memo.triggers.policy_event(type, _plain(body))


@kopf.on.event(*DEPLOYMENTS, labels=OWNED)
@kopf.on.event(*PODS, labels=OWNED)
@kopf.on.event(*JOBS, labels=OWNED)
@kopf.on.event(*SERVICES, labels=MANAGED)
@kopf.on.event(*PDBS, labels=OWNED)
async def child_event(body: Any, memo: kopf.Memo, **_: Any) -> None:
    memo.triggers.child_event(_plain(body))


@kopf.on.event(*CONFIGMAPS)
async def config_map_event(body: Any, memo: kopf.Memo, **_: Any) -> None:
    memo.triggers.config_map_event(_plain(body))
