"""Queue depth of a tier's ready pods, read from their router sidecars' /metrics.

The autoscaler's default metrics source needs no extra dependency: each ready pod's
sidecar exposes the gauges `shoal_engine_requests_waiting` and
`shoal_engine_requests_running` (its engine's queue), and the operator scrapes them
directly, concurrently, with short timeouts. A pod that does not answer in time, answers
with an error, or lacks either gauge is reported as missing (all fields None), which makes
plan.autoscale hold the tier's size rather than guess.

The optional Prometheus source runs `autoscaling.prometheus.query` and spreads the tier
total over the ready pods, so the decision sees the same shape of input either way.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from shoal.plan.autoscale import PodLoad
from shoal.plan.drift import PodCounts
from shoal.plan.shares import SidecarShares

WAITING = "shoal_engine_requests_waiting"
RUNNING = "shoal_engine_requests_running"

# A scrape that takes longer than this is treated as missing: the decision runs every few
# seconds and must not wait on a stuck pod.
DEFAULT_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class PodTarget:
    """A ready pod to scrape: its name, its IP (status.podIP) and the sidecar's port."""

    name: str
    ip: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}/metrics"


async def scrape_pods(
    client: httpx.AsyncClient,
    pods: Sequence[PodTarget],
    *,
    clock: Callable[[], float],
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> tuple[PodLoad, ...]:
    """Read every pod's queue depth concurrently, in the order given.

    clock: seconds on the clock the decision uses (`now`); each sample is stamped when its
    answer arrived. Never raises for a pod's failure: that pod's sample is missing.
    """
    return tuple(await asyncio.gather(*(_scrape(client, pod, clock, timeout_seconds) for pod in pods)))


async def _scrape(client: httpx.AsyncClient, pod: PodTarget, clock: Callable[[], float], timeout_seconds: float) -> PodLoad:
    try:
        response = await client.get(pod.url, timeout=timeout_seconds)
        response.raise_for_status()
        waiting, running = parse_queue_depth(response.text)
    except (httpx.HTTPError, ValueError):
        # Which failure it was does not change the decision (hold the size); the pod is
        # named in the ScalingActive message.
        return PodLoad(pod.name, None, None, None)
    if waiting is None or running is None:
        return PodLoad(pod.name, None, None, None)
    return PodLoad(pod.name, waiting, running, clock())


def parse_queue_depth(text: str) -> tuple[float | None, float | None]:
    """(waiting, running) from Prometheus text exposition; a gauge that is absent, or not a
    finite number, is None. Samples of a gauge with labels are summed."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in (WAITING, RUNNING):
            for sample in family.samples:
                if sample.name == family.name:
                    found[family.name] = found.get(family.name, 0.0) + float(sample.value)
    values = [found.get(WAITING), found.get(RUNNING)]
    return tuple(v if v is not None and math.isfinite(v) and v >= 0 else None for v in values)  # type: ignore[return-value]


SPILLOVERS = "shoal_spillovers"


def parse_spillovers(text: str, tiers: frozenset[str]) -> float | None:
    """Sum of shoal_spillovers_total over the label values `tiers` (0 when none was
    counted yet); None when the text is not Prometheus exposition."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == SPILLOVERS:
            for sample in family.samples:
                if sample.name == SPILLOVERS + "_total" and sample.labels.get("tier") in tiers:
                    total += float(sample.value)
    return total


async def scrape_spillovers(
    client: httpx.AsyncClient,
    pods: Sequence[PodTarget],
    tiers: frozenset[str],
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> dict[str, float | None]:
    """Per pod (of the other tiers of a policy): how many requests its router sent past
    the rungs `tiers` (this tier's names in the policy). None where the read failed."""

    async def one(pod: PodTarget) -> tuple[str, float | None]:
        try:
            response = await client.get(pod.url, timeout=timeout_seconds)
            response.raise_for_status()
            return pod.name, parse_spillovers(response.text, tiers)
        except (httpx.HTTPError, ValueError):
            return pod.name, None

    return dict(await asyncio.gather(*(one(p) for p in pods)))


async def query_prometheus(
    client: httpx.AsyncClient,
    url: str,
    query: str,
    *,
    timeout_seconds: float = 2.0,
) -> float | None:
    """The single value of an instant query (the tier's total in-flight requests), or None
    when Prometheus cannot be reached, errs, or returns no or several series."""
    try:
        response = await client.get(url.rstrip("/") + "/api/v1/query", params={"query": query}, timeout=timeout_seconds)
        response.raise_for_status()
        body = response.json()
        result = body["data"]["result"]
        if body.get("status") != "success" or len(result) != 1:
            return None
        value = float(result[0]["value"][1])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def spread_total(total: float | None, ready_pods: Sequence[str], observed_at: float) -> tuple[PodLoad, ...]:
    """A tier total (from Prometheus) as per-pod samples: shared evenly as running, so the
    decision sees the right total and the right number of ready pods. None: all missing."""
    if total is None:
        return tuple(PodLoad(name, None, None, None) for name in ready_pods)
    share = total / len(ready_pods) if ready_pods else 0.0
    return tuple(PodLoad(name, 0.0, share, observed_at) for name in ready_pods)


SHADOW_SAMPLES = "shoal_shadow_samples"


def parse_shadow_counts(text: str, tiers: frozenset[str]) -> PodCounts:
    """One sidecar's graded shadow samples of the rungs `tiers` (a ModelTier's names in its
    policy): (agreed, disagreed), cumulative. Reference errors and ungradable samples are
    not agreement data and are left out. Raises ValueError when the text is not exposition."""
    agreed = disagreed = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != SHADOW_SAMPLES:
            continue
        for sample in family.samples:
            if sample.name != SHADOW_SAMPLES + "_total" or sample.labels.get("tier") not in tiers:
                continue
            if sample.labels.get("outcome") == "agree":
                agreed += float(sample.value)
            elif sample.labels.get("outcome") == "disagree":
                disagreed += float(sample.value)
    return PodCounts(agreed, disagreed)


async def scrape_shadow_counts(
    client: httpx.AsyncClient,
    pods: Sequence[PodTarget],
    tiers: frozenset[str],
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> dict[str, PodCounts]:
    """Per pod (of every tier of the policy: the sidecar that routed a request counts its
    sample, whichever tier it runs in), its shadow counts for the rungs `tiers`. A pod
    whose read failed is left out, so its counts are neither lost nor counted twice: the
    next successful read brings the increment since the last one."""

    async def one(pod: PodTarget) -> tuple[str, PodCounts | None]:
        try:
            response = await client.get(pod.url, timeout=timeout_seconds)
            response.raise_for_status()
            return pod.name, parse_shadow_counts(response.text, tiers)
        except (httpx.HTTPError, ValueError):
            return pod.name, None

    return {name: counts for name, counts in await asyncio.gather(*(one(p) for p in pods)) if counts is not None}


SHARE = "shoal_classifier_share_ratio"
THRESHOLD = "shoal_classifier_threshold"


def parse_held_shares(text: str) -> SidecarShares:
    """One sidecar's held-share gauges (router/share.py) by tier; empty when it holds none.
    Raises ValueError when the text is not exposition."""
    observed: dict[str, float] = {}
    threshold: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (SHARE, THRESHOLD):
            continue
        for sample in family.samples:
            tier = sample.labels.get("tier")
            if sample.name == family.name and tier is not None:
                (observed if family.name == SHARE else threshold)[tier] = float(sample.value)
    return SidecarShares(observed, threshold)


async def scrape_held_shares(
    client: httpx.AsyncClient,
    pods: Sequence[PodTarget],
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> dict[str, SidecarShares]:
    """Per pod, its held-share gauges; a pod whose read failed is left out."""

    async def one(pod: PodTarget) -> tuple[str, SidecarShares | None]:
        try:
            response = await client.get(pod.url, timeout=timeout_seconds)
            response.raise_for_status()
            return pod.name, parse_held_shares(response.text)
        except (httpx.HTTPError, ValueError):
            return pod.name, None

    return {name: shares for name, shares in await asyncio.gather(*(one(p) for p in pods)) if shares is not None}
