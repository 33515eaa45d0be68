"""Scaling policies the simulator can run: Shoal's own (the real plan.autoscale code) and
the baselines of the benchmark.

A policy is asked every `period_seconds` for the tier's desired replicas, given a
`TierView` of what an operator could observe at that moment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shoal.api.modeltier import AutoscalingSpec, ReplicasSpec
from shoal.plan import autoscale


@dataclass(frozen=True)
class PodView:
    waiting: int
    running: int
    busy_fraction: float  # share of the last period the GPU had work (what DCGM's utilization reports)
    missing: bool = False  # the scrape of this pod failed this period (TierConfig.metrics_dropout)


@dataclass(frozen=True)
class TierView:
    current_replicas: int
    ready_pods: tuple[PodView, ...]
    spilled_requests: int  # since the previous call


class ShoalPolicy:
    """plan.autoscale.decide_scale, called exactly as the controller calls it."""

    name = "shoal"

    def __init__(self, autoscaling: AutoscalingSpec, replicas: ReplicasSpec) -> None:
        self.autoscaling = autoscaling
        self.replicas = replicas
        self.period_seconds = float(autoscaling.metrics_period_seconds)
        self.history = autoscale.History()
        self.last_reason = ""

    def desired(self, now: float, view: TierView) -> int:
        pods = tuple(
            autoscale.PodLoad(f"pod-{i}", None, None, None) if p.missing
            else autoscale.PodLoad(f"pod-{i}", float(p.waiting), float(p.running), now)
            for i, p in enumerate(view.ready_pods)
        )
        decision = autoscale.decide_scale(
            self.autoscaling, self.replicas,
            autoscale.Observed(view.current_replicas, pods, view.spilled_requests),
            self.history, now=now,
        )
        self.history = decision.history
        self.last_reason = decision.reason
        return decision.desired_replicas


class StaticPolicy:
    """A fixed number of replicas."""

    def __init__(self, replicas: int, name: str = "static") -> None:
        self.name = name
        self.replicas = replicas
        self.period_seconds = 60.0

    def desired(self, now: float, view: TierView) -> int:
        return self.replicas


@dataclass
class _HPA:
    """The Kubernetes HorizontalPodAutoscaler's algorithm with its default behaviour:
    10% tolerance, 300 s scale-down stabilization, scale-up limited to max(+100%, +4 pods)
    per 15 s sync period."""

    min_replicas: int
    max_replicas: int
    tolerance: float = 0.1
    down_window_seconds: float = 300.0
    down_step_replicas: int | None = None  # a Pods scale-down policy; None: the default 100%
    recommendations: list[tuple[float, int]] = field(default_factory=list)

    def step(self, now: float, current: int, ratio: float | None, raw: int) -> int:
        """`ratio` is current metric / target (None: no metric, keep the size)."""
        if ratio is None:
            return current
        wanted = current if current > 0 and abs(ratio - 1.0) <= self.tolerance else raw
        wanted = max(self.min_replicas, min(self.max_replicas, wanted))
        self.recommendations = [(t, n) for t, n in self.recommendations if t > now - self.down_window_seconds]
        self.recommendations.append((now, wanted))
        if wanted < current:
            stabilized = max(wanted, max(n for _, n in self.recommendations))
            if self.down_step_replicas is not None:
                stabilized = max(stabilized, current - self.down_step_replicas)
            return stabilized
        if wanted > current:
            return min(wanted, max(2 * current, current + 4))
        return current


class HPAUtilizationPolicy:
    """HPA on GPU utilization (average busy share of the ready pods), target 70%."""

    def __init__(self, replicas: ReplicasSpec, target_utilization: float = 0.7) -> None:
        self.name = "hpa-gpu-util"
        self.target = target_utilization
        self.period_seconds = 15.0
        self.hpa = _HPA(replicas.min, replicas.max)

    def desired(self, now: float, view: TierView) -> int:
        view = _without_missing(view)
        if not view.ready_pods:
            return self.hpa.step(now, view.current_replicas, None, view.current_replicas)
        total = sum(p.busy_fraction for p in view.ready_pods)
        # HPA's formula: ceil(current * average / target); pods not ready count as 0.
        average = total / max(view.current_replicas, len(view.ready_pods))
        raw = math.ceil(max(view.current_replicas, len(view.ready_pods)) * average / self.target - 1e-9)
        return self.hpa.step(now, view.current_replicas, average / self.target, raw)


class KEDAWaitingPolicy:
    """A KEDA ScaledObject on the engines' waiting requests (vllm:num_requests_waiting),
    AverageValue threshold 5: desired = ceil(total waiting / 5), through the HPA."""

    def __init__(self, replicas: ReplicasSpec, threshold: float = 5.0) -> None:
        self.name = "keda-waiting"
        self.threshold = threshold
        self.period_seconds = 15.0
        self.hpa = _HPA(max(1, replicas.min), replicas.max)

    def desired(self, now: float, view: TierView) -> int:
        view = _without_missing(view)
        if not view.ready_pods:
            return self.hpa.step(now, view.current_replicas, None, view.current_replicas)
        waiting = sum(p.waiting for p in view.ready_pods)
        raw = math.ceil(waiting / self.threshold - 1e-9)
        ratio = waiting / (self.threshold * max(1, view.current_replicas))
        return self.hpa.step(now, view.current_replicas, ratio, raw)


class KEDAInFlightPolicy:
    """What render.keda asks of KEDA: the HPA on the tier's total in-flight requests
    (waiting + running) with threshold targetQueueDepth, the spec's scale-down window and
    step, and the HPA's 15 s sync period."""

    def __init__(self, autoscaling: AutoscalingSpec, replicas: ReplicasSpec) -> None:
        self.name = "keda-inflight"
        self.threshold = autoscaling.target_queue_depth
        self.period_seconds = 15.0
        self.hpa = _HPA(max(1, replicas.min), replicas.max, tolerance=autoscaling.tolerance,
                        down_window_seconds=autoscaling.scale_down_window_seconds,
                        down_step_replicas=autoscaling.scale_down_step_replicas)

    def desired(self, now: float, view: TierView) -> int:
        view = _without_missing(view)
        if not view.ready_pods:
            return self.hpa.step(now, view.current_replicas, None, view.current_replicas)
        total = sum(p.waiting + p.running for p in view.ready_pods)
        raw = math.ceil(total / self.threshold - 1e-9)
        ratio = total / (self.threshold * max(1, view.current_replicas))
        return self.hpa.step(now, view.current_replicas, ratio, raw)


def _without_missing(view: TierView) -> TierView:
    """The baselines leave out pods whose metrics are missing (as the HPA does for a pod
    without metrics), which is what lets them shrink on a metrics outage."""
    if not any(p.missing for p in view.ready_pods):
        return view
    return TierView(view.current_replicas, tuple(p for p in view.ready_pods if not p.missing), view.spilled_requests)
