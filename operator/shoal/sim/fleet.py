"""The discrete-event simulation of a fleet of tiers (a heapq event loop).

Events: arrivals (merged in from the sorted trace), prefill and decode completions of each
replica, pods becoming ready after their cold start, and each tier's scaling period, at
which the tier's policy (the real plan.autoscale code for `shoal`) sees per-pod queue
depth, exactly what the sidecars' /metrics would show, and sets the replica count.

Routing uses the real router decision: a request starts at the first tier and spills over
to the next while the first has no ready pod or its least-loaded pod has more waiting
requests than the tier's spill limit. Within a tier, a request goes to the ready pod with
the fewest requests in flight. The last tier never spills: with no ready pod there, requests
are held until one is ready (as an activator would), and count as its wake-up signal.

A scale-down removes pods that are still starting first, then the least-loaded ready pods,
which stop receiving requests and finish what they hold (GPU time counts until then).
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from shoal.router.decision import Prediction, TierState
from . import routing
from .engine import DECODE_DONE, PREFILL_DONE, EngineModel, Replica, Request
from .policies import PodView, TierView
from .trace import Arrival

POD_READY = 2
TICK = 3
SAMPLE = 4

# How often replica counts are recorded for the report's time series.
SAMPLE_SECONDS = 10.0


class ScalingPolicy(Protocol):
    name: str
    period_seconds: float

    def desired(self, now: float, view: TierView) -> int: ...


@dataclass(frozen=True)
class TierConfig:
    name: str
    engine: EngineModel = field(default_factory=EngineModel)
    gpus_per_replica: int = 1
    gpu_hour_usd: float = 0.0
    initial_replicas: int = 1
    # Spill to the next tier when the least-loaded pod has more waiting requests than this
    # (the RoutePolicy's maxQueueDepth). None: never spill on queue depth.
    spill_queue_depth: int | None = None
    # Share of per-pod metric reads that fail (a pod's sidecar does not answer in time):
    # the policy sees that pod's sample as missing for that period.
    metrics_dropout: float = 0.0


@dataclass(frozen=True)
class ScaleEvent:
    time: float
    tier: str
    from_replicas: int
    to_replicas: int
    reason: str


@dataclass
class PodRecord:
    tier: str
    created: float
    ready_at: float
    ended: float | None
    gpus: int


@dataclass
class Outcome:
    """Everything a report needs; `end` is the end of the trace window."""

    end: float
    tiers: list[TierConfig]
    policies: list[str]
    requests: list[Request]
    pods: list[PodRecord]
    scale_events: list[ScaleEvent]
    samples: list[tuple[float, tuple[int, ...], tuple[int, ...]]]  # time, replicas per tier, ready per tier


class _Tier:
    def __init__(self, index: int, config: TierConfig, policy: ScalingPolicy) -> None:
        self.index = index
        self.config = config
        self.policy = policy
        self.pods: list[Replica] = []  # starting and ready (the Deployment's replicas)
        self.ready: list[Replica] = []
        self.held: deque[Request] = deque()
        self.spilled = 0
        self.busy_mark: dict[int, float] = {}


def simulate(
    arrivals: Sequence[Arrival],
    tiers: Sequence[TierConfig],
    policies: Sequence[ScalingPolicy],
    *,
    seed: int,
    end: float | None = None,
    texts: Sequence[str] | None = None,
    classify: Callable[[str], Prediction] | None = None,
) -> Outcome:
    """Run the trace through the fleet. Deterministic for a given seed (cold starts are the
    only random draw). `end` defaults to the last arrival; the run continues past it until
    every request has finished, but GPU time is counted up to `end` only. With `texts`
    (one prompt per arrival) and `classify` (a routing model's predict), each request
    starts where the router's classifier would send it."""
    if len(tiers) != len(policies) or not tiers:
        raise ValueError("one scaling policy per tier, and at least one tier")
    rng = random.Random(seed)
    # A separate stream, so failed scrapes never change the cold starts a seed draws.
    dropout_rng = random.Random(seed + 1_000_003)
    end = end if end is not None else (arrivals[-1].time if arrivals else 0.0)
    state = [_Tier(i, c, p) for i, c, p in zip(range(len(tiers)), tiers, policies)]
    by_name = {t.config.name: t for t in state}
    ladder = routing.ladder_policy([t.name for t in tiers], [t.spill_queue_depth for t in tiers])
    heap: list[tuple[float, int, int, object, int]] = []
    counter = 0
    requests: list[Request] = []
    records: dict[int, PodRecord] = {}
    scale_events: list[ScaleEvent] = []
    samples: list[tuple[float, tuple[int, ...], tuple[int, ...]]] = []
    outstanding = 0
    next_pod = 0

    def schedule(time: float, kind: int, obj: object, version: int) -> None:
        nonlocal counter
        counter += 1
        heapq.heappush(heap, (time, counter, kind, obj, version))

    def finished(request: Request) -> None:
        nonlocal outstanding
        outstanding -= 1

    def add_pod(tier: _Tier, now: float, ready_now: bool) -> None:
        nonlocal next_pod
        model = tier.config.engine
        cold = 0.0 if ready_now else rng.uniform(model.cold_start_min_seconds, model.cold_start_max_seconds)
        pod = Replica(next_pod, tier.index, model, now, now + cold, schedule, finished)
        records[next_pod] = PodRecord(tier.config.name, now, now + cold, None, tier.config.gpus_per_replica)
        next_pod += 1
        tier.pods.append(pod)
        if ready_now:
            make_ready(tier, pod, now)
        else:
            schedule(now + cold, POD_READY, pod, 0)

    def make_ready(tier: _Tier, pod: Replica, now: float) -> None:
        pod.state = Replica.READY
        pod.settle(now)
        tier.ready.append(pod)
        tier.busy_mark[pod.pod_id] = pod.busy_seconds
        while tier.held:
            admit(tier, tier.held.popleft(), now)

    def end_pod(pod: Replica, now: float) -> None:
        pod.state = Replica.GONE
        records[pod.pod_id].ended = now

    def least_loaded(tier: _Tier) -> tuple[Replica | None, int]:
        """The ready pod with the fewest requests in flight (lowest id on ties), and the
        fewest waiting requests of any ready pod. One pass: this runs for every request."""
        best: Replica | None = None
        best_load = fewest_waiting = 0
        for pod in tier.ready:
            waiting = len(pod.queue)
            load = waiting + len(pod.decoding) + (pod.prefilling is not None)
            if best is None:
                best, best_load, fewest_waiting = pod, load, waiting
                continue
            if load < best_load or (load == best_load and pod.pod_id < best.pod_id):
                best, best_load = pod, load
            if waiting < fewest_waiting:
                fewest_waiting = waiting
        return best, fewest_waiting

    def admit(tier: _Tier, request: Request, now: float, pod: Replica | None = None) -> None:
        request.tier = tier.index
        if pod is None:
            pod, _ = least_loaded(tier)
        if pod is None:
            tier.held.append(request)
            tier.spilled += 1
            return
        pod.admit(request, now)

    def route(request: Request, now: float, text: str = "") -> None:
        states = {}
        chosen_pods = []
        for t in state:
            pod, fewest_waiting = least_loaded(t)
            chosen_pods.append(pod)
            if pod is not None:
                states[t.config.name] = TierState(waiting=float(fewest_waiting), scaled_to_zero=False)
            else:
                states[t.config.name] = TierState(waiting=None, scaled_to_zero=True)
        decision = routing.decide(ladder, request.prompt_tokens, states, text, classify)
        assert decision.tier is not None  # in-cluster tiers without budgets are never rejected
        chosen = by_name[decision.tier]
        # Only the tiers it was meant for but skipped count as spilled: a request the
        # classifier sent up did not spill.
        for skipped in decision.spilled_from:
            by_name[skipped].spilled += 1
        request.spilled = bool(decision.spilled_from)
        admit(chosen, request, now, chosen_pods[chosen.index])

    def scale(tier: _Tier, now: float) -> None:
        view = TierView(
            current_replicas=len(tier.pods),
            ready_pods=tuple(
                _pod_view(tier, p, now, tier.policy.period_seconds,
                          missing=tier.config.metrics_dropout > 0 and dropout_rng.random() < tier.config.metrics_dropout)
                for p in tier.ready
            ),
            spilled_requests=tier.spilled,
        )
        tier.spilled = 0
        desired = tier.policy.desired(now, view)
        current = len(tier.pods)
        if desired == current:
            return
        scale_events.append(ScaleEvent(now, tier.config.name, current, desired, getattr(tier.policy, "last_reason", "") or tier.policy.name))
        if desired > current:
            for _ in range(desired - current):
                add_pod(tier, now, ready_now=False)
            return
        remove = current - desired
        starting = sorted((p for p in tier.pods if p.state == Replica.STARTING), key=lambda p: -p.created)
        for pod in starting[:remove]:
            tier.pods.remove(pod)
            end_pod(pod, now)
        remove -= min(remove, len(starting))
        for pod in sorted(tier.ready, key=lambda p: (p.in_flight, p.pod_id))[:remove]:
            tier.pods.remove(pod)
            tier.ready.remove(pod)
            pod.state = Replica.DRAINING
            if pod.in_flight == 0:
                end_pod(pod, now)

    for tier in state:
        for _ in range(tier.config.initial_replicas):
            add_pod(tier, 0.0, ready_now=True)
        schedule(0.0, TICK, tier, 0)
    schedule(0.0, SAMPLE, None, 0)

    i, n = 0, len(arrivals)
    while True:
        next_event = heap[0][0] if heap else float("inf")
        if i < n and arrivals[i].time <= next_event:
            a = arrivals[i]
            i += 1
            request = Request(a.time, a.prompt_tokens, a.output_tokens)
            requests.append(request)
            outstanding += 1
            route(request, a.time, texts[i - 1] if texts is not None else "")
            continue
        if not heap:
            break
        now, _, kind, obj, version = heapq.heappop(heap)
        if kind == PREFILL_DONE or kind == DECODE_DONE:
            pod = obj  # type: ignore[assignment]
            assert isinstance(pod, Replica)
            if kind == PREFILL_DONE:
                pod.on_prefill_done(now)
            else:
                pod.on_decode_done(now, version)
            if pod.state == Replica.DRAINING and pod.in_flight == 0:
                end_pod(pod, now)
        elif kind == POD_READY:
            pod = obj  # type: ignore[assignment]
            assert isinstance(pod, Replica)
            if pod.state == Replica.STARTING:
                make_ready(state[pod.tier], pod, now)
        elif kind == TICK:
            tier = obj  # type: ignore[assignment]
            assert isinstance(tier, _Tier)
            scale(tier, now)
            if now < end or outstanding > 0 or i < n:
                schedule(now + tier.policy.period_seconds, TICK, tier, 0)
        elif kind == SAMPLE:
            samples.append((now, tuple(len(t.pods) for t in state), tuple(len(t.ready) for t in state)))
            if now < end or outstanding > 0 or i < n:
                schedule(now + SAMPLE_SECONDS, SAMPLE, None, 0)

    return Outcome(end, list(tiers), [p.name for p in policies], requests, list(records.values()), scale_events, samples)


def _pod_view(tier: _Tier, pod: Replica, now: float, period: float, missing: bool = False) -> PodView:
    pod.settle(now)
    busy = pod.busy_seconds - tier.busy_mark.get(pod.pod_id, 0.0)
    tier.busy_mark[pod.pod_id] = pod.busy_seconds
    return PodView(pod.waiting, pod.running, min(1.0, busy / period) if period > 0 else 0.0, missing)
