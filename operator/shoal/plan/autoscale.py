"""The autoscaling decision: queue depth in, desired replicas and a reason out.

`decide_scale()` is pure. The controller (every `autoscaling.metricsPeriodSeconds`) and the
simulator (`shoal sim`) call it with what they observed, the tier's autoscaling and
replica bounds, the time, and the small `History` the previous call returned. The history
is plain data so the controller can keep it in the ModelTier status and survive a restart
of the operator.

The policy, in the order the checks are made:

1. At zero replicas with no pod to read, the tier wakes up (to max(1, replicas.min)) as
   soon as a request for it is seen: the router spilled a request meant for it to another
   tier (`Observed.spilled_requests`). Until then it stays asleep.
2. If any ready pod's sample is missing or older than the staleness bound, or no pod is
   ready although replicas exist, the size is HELD and ScalingActive is False
   (MetricsMissing). Missing data never causes a scale-down.
3. Otherwise the recommendation is ceil(total load / targetQueueDepth), where total load
   is waiting + running requests summed over ready pods. A load within `tolerance` of the
   current capacity recommends the current size, so the tier does not flap.
4. Panic: load above panicThreshold x the capacity of the ready pods scales up to the
   recommendation at once (ignoring the scale-up window) and forbids any scale-down
   until a whole scale-down window has passed since the last panicking sample.
   While replicas are still starting, they count as capacity: no more are added unless
   the load exceeds panicThreshold x all requested replicas (AwaitingCapacity).
5. Scale-up goes to the lowest recommendation of the scale-up window (0 s: at once).
6. Scale-down goes to the highest recommendation of the scale-down window, and removes
   at most scaleDownStepReplicas per decision. An empty history, and every period with
   missing metrics, count as recommending the current size: a restarted operator or a
   metrics outage is followed by a whole window before any scale-down.
7. With replicas.min 0, the last replica is removed only after scaleToZeroIdleSeconds
   without any load or request.
8. The result is clamped to [floor, replicas.max], where the floor is replicas.min, raised
   to replicas.desired when that is set. replicas.desired is what the CRD's scale
   subresource (`kubectl scale modeltier`) writes: with the autoscaler in charge it is a
   floor the autoscaler honours, so a manual scale and the autoscaler never undo each
   other (scaling up above it on load is still allowed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from shoal.api.conditions import (
    REASON_AUTOSCALING_DISABLED,
    REASON_DELEGATED_TO_KEDA,
    REASON_METRICS_FRESH,
    REASON_METRICS_MISSING,
)
from shoal.api.modeltier import AutoscalingSpec, ReplicasSpec

# --- decision reasons (AutoscalerStatus.reason) ------------------------------------------
# One CamelCase word each; the set is closed so dashboards and alerts can rely on it.
SCALE_UP = "ScaleUp"  # Load per replica is above the target band: replicas are added.
PANIC = "Panic"  # A sharp burst: scaled up at once, and scale-down is suspended for a window.
SCALE_DOWN = "ScaleDown"  # Load stayed below the band for the whole scale-down window.
WITHIN_TOLERANCE = "WithinTolerance"  # Load is inside the tolerance band: the size is kept.
STABILIZING_UP = "StabilizingUp"  # A larger size is wanted but not for the whole scale-up window yet.
STABILIZING_DOWN = "StabilizingDown"  # A smaller size is wanted but not for the whole scale-down window yet.
AWAITING_CAPACITY = "AwaitingCapacity"  # Replicas already starting will carry the load: none added until they are ready.
AWAITING_IDLE = "AwaitingIdle"  # No load, but not for scaleToZeroIdleSeconds yet: one replica stays.
SCALE_TO_ZERO = "ScaleToZero"  # Idle for scaleToZeroIdleSeconds: the last replica is removed.
ASLEEP = "Asleep"  # At zero replicas and no request seen: the router sends traffic on.
WAKE_UP = "WakeUp"  # A request arrived for a tier at zero: it starts again.
METRICS_MISSING = "MetricsMissing"  # A ready pod's queue depth is missing or stale: the size is held.
NO_READY_PODS = "NoReadyPods"  # Replicas exist but none is ready to report load: the size is held.
AT_MAX = "AtMax"  # More replicas are wanted than replicas.max allows.
AT_MIN = "AtMin"  # Fewer replicas are wanted than the floor (replicas.min, or replicas.desired when higher) allows.
DISABLED = REASON_AUTOSCALING_DISABLED  # autoscaling.engine is none: replicas.desired (or min) is kept.
DELEGATED = REASON_DELEGATED_TO_KEDA  # autoscaling.engine is keda: the current size is left to KEDA.

# A sample is stale when older than this many metrics periods. Two missed scrapes are
# tolerated (a slow pod, a GC pause); a third means the reading cannot be trusted.
STALE_AFTER_PERIODS = 3


@dataclass(frozen=True)
class PodLoad:
    """One ready pod's queue depth, as last read from its router sidecar.

    `waiting` and `running` are the gauges shoal_engine_requests_waiting and
    shoal_engine_requests_running. `observed_at` is when they were read (seconds on the
    same clock as `now`); None, or either gauge None, means the read failed.
    """

    pod: str
    waiting: float | None
    running: float | None
    observed_at: float | None

    def is_fresh(self, now: float, stale_after_seconds: float) -> bool:
        return (
            self.waiting is not None
            and self.running is not None
            and self.observed_at is not None
            and now - self.observed_at <= stale_after_seconds
        )


@dataclass(frozen=True)
class Observed:
    """What the caller saw this period.

    current_replicas: the Deployment's spec.replicas (what was last asked for, ready or not).
    pods: one entry per READY pod of the tier; pods still starting are not listed.
    spilled_requests: requests meant for this tier that the routers sent to another tier
        since the previous decision, because this tier had no ready pod or its queue was
        over the spill limit (the delta of the routers' spill counter for this tier). It is
        the proof that clients want a tier that has no pod to report load, and so the
        wake-up signal of a tier at zero.
    """

    current_replicas: int
    pods: tuple[PodLoad, ...] = ()
    spilled_requests: int = 0


@dataclass(frozen=True)
class History:
    """What the next decision needs to remember; persist it between calls.

    scale_up_candidates / scale_down_candidates are (time, replicas) recommendations of the
    scale-up and scale-down windows, reduced to the ones that can still become the window's
    minimum (resp. maximum): a monotonic queue, so it stays a handful of entries however
    long the window. Times are seconds on the caller's clock.
    """

    scale_up_candidates: tuple[tuple[float, int], ...] = ()
    scale_down_candidates: tuple[tuple[float, int], ...] = ()
    panic_until: float | None = None
    last_request_time: float | None = None
    last_scale_time: float | None = None


@dataclass(frozen=True, kw_only=True)
class ScaleDecision:
    """The outcome of one decision.

    desired_replicas: what the Deployment's scale should be now.
    reason / message: AutoscalerStatus.reason (one of the constants above) and a sentence.
    scaling_active / condition_reason: the ScalingActive condition (True with MetricsFresh,
        False with MetricsMissing, AutoscalingDisabled or DelegatedToKEDA).
    recommended: ceil(load / target) before windows and bounds (None without fresh metrics).
    queue_depth / waiting: totals over the ready pods read (None when none could be read).
    history: pass it to the next call.
    """

    desired_replicas: int
    reason: str
    message: str
    scaling_active: bool
    condition_reason: str
    recommended: int | None
    queue_depth: float | None
    waiting: float | None
    history: History = field(default_factory=History)

    def changes(self, current_replicas: int) -> bool:
        return self.desired_replicas != current_replicas


def decide_scale(
    autoscaling: AutoscalingSpec,
    replicas: ReplicasSpec,
    observed: Observed,
    history: History,
    *,
    now: float,
    stale_after_seconds: float | None = None,
) -> ScaleDecision:
    """Decide the tier's size. Pure and deterministic: same inputs, same ScaleDecision.

    `now` is seconds on any clock that only moves forward, the same clock as
    PodLoad.observed_at and the times in `history`. `stale_after_seconds` defaults to
    STALE_AFTER_PERIODS metrics periods.
    """
    current = observed.current_replicas
    lo, hi = replicas.floor, replicas.max

    if autoscaling.engine == "none":
        desired = replicas.desired if replicas.desired is not None else lo
        return _decision(
            desired=desired,
            reason=DISABLED,
            message="autoscaling.engine is none; replicas are fixed by the spec.",
            active=False,
            condition_reason=REASON_AUTOSCALING_DISABLED,
            history=history,
            current=current,
            now=now,
        )
    if autoscaling.engine == "keda":
        return _decision(
            desired=current,
            reason=DELEGATED,
            message="autoscaling.engine is keda; a KEDA ScaledObject scales this tier.",
            active=False,
            condition_reason=REASON_DELEGATED_TO_KEDA,
            history=history,
            current=current,
            now=now,
        )

    demand_seen = observed.spilled_requests > 0

    # 1. Asleep: no pod can report load; only a spilled request says clients want the tier.
    if current == 0 and not observed.pods:
        if demand_seen:
            history = replace(history, last_request_time=now)
            desired = _clamp(max(1, lo), lo, hi)
            return _decision(
                desired=desired,
                reason=WAKE_UP,
                message=f"{observed.spilled_requests} request(s) arrived while the tier was at zero; starting {desired} replica(s).",
                history=history,
                current=current,
                now=now,
            )
        if lo > 0:
            return _decision(
                desired=lo,
                reason=AT_MIN,
                message=f"{_floor_words(replicas)}.",
                history=history,
                current=current,
                now=now,
            )
        return _decision(
            desired=0,
            reason=ASLEEP,
            message="The tier is at zero and no request arrived; the router sends its traffic on.",
            history=history,
            current=current,
            now=now,
        )

    # 2. Missing or stale metrics hold the size. A spilled request still counts as a
    # request, so a later scale to zero waits for it. The held size counts as a
    # recommendation, so when metrics return the tier still waits a whole scale-down
    # window before shrinking on them.
    if demand_seen:
        history = replace(history, last_request_time=now)
    held = _clamp(current, lo, hi)
    held_history = replace(history, scale_down_candidates=_push(
        history.scale_down_candidates, now, held, autoscaling.scale_down_window_seconds, keep_min=False))

    def hold(reason: str, message: str) -> ScaleDecision:
        """Keep the size: the load cannot be read, and an unread load never shrinks a tier."""
        return _decision(desired=held, reason=reason, message=message, active=False,
                         condition_reason=REASON_METRICS_MISSING, history=held_history,
                         current=current, now=now)

    if not observed.pods:
        return hold(NO_READY_PODS, f"{current} replica(s) requested but none is ready to report queue depth; holding the size.")
    stale_after = stale_after_seconds if stale_after_seconds is not None else STALE_AFTER_PERIODS * autoscaling.metrics_period_seconds
    missing = sorted(p.pod for p in observed.pods if not p.is_fresh(now, stale_after))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        return hold(METRICS_MISSING, f"Queue depth of {shown} is missing or older than {stale_after:g}s; holding {held} replica(s).")

    # 3. The recommendation from fresh load.
    waiting = sum(p.waiting or 0.0 for p in observed.pods)
    total = waiting + sum(p.running or 0.0 for p in observed.pods)
    ready = len(observed.pods)
    target = autoscaling.target_queue_depth
    if total > 0 or demand_seen or history.last_request_time is None:
        # An empty history (a new tier, a status that was lost) starts the idle clock now
        # rather than treating the tier as idle since forever.
        history = replace(history, last_request_time=now)
    recommended = math.ceil(total / target - 1e-9) if total > 0 else 0
    if current > 0 and abs(total / (current * target) - 1.0) <= autoscaling.tolerance:
        recommended = current
    # Windows hold recommendations clamped to replicas.max: wanting more than max is the
    # same as wanting max, and it bounds the stored history to max + 1 entries.
    windowed = min(recommended, hi)
    up = _push(history.scale_up_candidates, now, windowed, autoscaling.scale_up_window_seconds, keep_min=True)
    down_before = history.scale_down_candidates
    if not down_before and autoscaling.scale_down_window_seconds > 0:
        # No history at all (a new tier, an operator whose status was lost): treat the
        # current size as just recommended, so nothing shrinks before a whole window of
        # fresh samples has been seen.
        down_before = ((now, current),)
    down = _push(down_before, now, windowed, autoscaling.scale_down_window_seconds, keep_min=False)
    up_window_min, down_window_max = up[0][1], down[0][1]
    history = replace(history, scale_up_candidates=up, scale_down_candidates=down)
    load = f"Queue depth {total:g} on {ready} ready pod(s) (target {target:g} per replica) recommends {recommended}"

    # 4. Panic on a sharp burst; 5. scale up; 6. scale down.
    panicking = total > autoscaling.panic_threshold * ready * target
    if panicking:
        history = replace(history, panic_until=now + autoscaling.scale_down_window_seconds)
    in_panic = history.panic_until is not None and now < history.panic_until
    # While requested replicas are still starting (a GPU pod takes minutes), requests pile
    # up on the ready ones and their queue overstates the demand: scaling on it would run
    # to replicas.max on every burst. The starting replicas are counted as capacity, and
    # more are added only when the load exceeds panicThreshold x all requested replicas.
    awaiting = ready < current and total <= autoscaling.panic_threshold * current * target
    if recommended > current and awaiting:
        desired, reason = current, AWAITING_CAPACITY
        message = f"{load}; {current - ready} replica(s) are still starting and will carry it."
    elif panicking:
        desired, reason = max(current, recommended), PANIC
        message = f"{load}; load is over {autoscaling.panic_threshold:g}x the ready capacity, scaling up at once."
    elif recommended > current:
        if up_window_min > current:
            desired, reason, message = up_window_min, SCALE_UP, f"{load}."
        else:
            desired, reason = current, STABILIZING_UP
            message = f"{load}, not yet for the whole {autoscaling.scale_up_window_seconds}s scale-up window."
    elif recommended < current:
        if in_panic:
            desired, reason = current, PANIC
            message = f"{load}; scale-down is suspended after a burst until the panic window ends."
        elif down_window_max >= current:
            desired, reason = current, STABILIZING_DOWN
            message = f"{load}; {down_window_max} was recommended within the {autoscaling.scale_down_window_seconds}s scale-down window."
        else:
            desired = max(down_window_max, current - autoscaling.scale_down_step_replicas)
            reason, message = SCALE_DOWN, f"{load}; removing {current - desired} replica(s)."
    else:
        desired, reason, message = current, WITHIN_TOLERANCE, f"{load}."

    # 7. Scale to zero only after the idle period.
    if desired == 0 and current > 0 and lo == 0:
        idle_for = now - (history.last_request_time if history.last_request_time is not None else now)
        if idle_for < autoscaling.scale_to_zero_idle_seconds:
            desired, reason = 1, AWAITING_IDLE
            message = f"No load for {idle_for:g}s; the tier scales to zero after {autoscaling.scale_to_zero_idle_seconds}s without requests."
        else:
            reason = SCALE_TO_ZERO
            message = f"No request for {idle_for:g}s; scaling to zero (the router sends traffic on)."

    # 8. Bounds.
    if desired > hi:
        desired, reason, message = hi, AT_MAX, f"{load}; replicas.max is {hi}."
    elif desired < lo:
        desired, reason, message = lo, AT_MIN, f"{load}; {_floor_words(replicas)}."
    return _decision(
        desired=desired,
        reason=reason,
        message=message,
        recommended=recommended,
        total=total,
        waiting=waiting,
        history=history,
        current=current,
        now=now,
    )


def _decision(*, desired: int, reason: str, message: str, history: History, current: int, now: float,
              active: bool = True, condition_reason: str = REASON_METRICS_FRESH,
              recommended: int | None = None, total: float | None = None, waiting: float | None = None) -> ScaleDecision:
    if desired != current:
        history = replace(history, last_scale_time=now)
    return ScaleDecision(
        desired_replicas=desired, reason=reason, message=message, scaling_active=active,
        condition_reason=condition_reason, recommended=recommended, queue_depth=total, waiting=waiting,
        history=history,
    )


def _floor_words(replicas: ReplicasSpec) -> str:
    if replicas.desired is not None and replicas.desired > replicas.min:
        return f"replicas.desired (the scale subresource) is {replicas.desired}"
    return f"replicas.min is {replicas.min}"


def _clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, value))


def _push(candidates: tuple[tuple[float, int], ...], now: float, value: int, window: float, *, keep_min: bool) -> tuple[tuple[float, int], ...]:
    """Add (now, value) to a monotonic window queue; the first entry is the window's extreme.

    Entries older than the window leave at the front. At the back, entries that the new
    value makes irrelevant leave: for a minimum, those >= value; for a maximum, those <= value.
    """
    kept = [c for c in candidates if c[0] >= now - window]
    while kept and (kept[-1][1] >= value if keep_min else kept[-1][1] <= value):
        kept.pop()
    kept.append((now, value))
    return tuple(kept)
