"""The autoscaling decision, table-driven: observed load and history in, size and reason out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shoal.api.modeltier import AutoscalingSpec, PrometheusSource, ReplicasSpec
from shoal.plan import autoscale as a
from shoal.plan.autoscale import History, Observed, PodLoad, decide_scale

NOW = 1_000_000.0


def spec(**overrides) -> AutoscalingSpec:
    fields = dict(
        target_queue_depth=10,
        tolerance=0.1,
        panic_threshold=2.0,
        scale_up_window_seconds=0,
        scale_down_window_seconds=300,
        scale_down_step_replicas=1,
        scale_to_zero_idle_seconds=900,
        metrics_period_seconds=5,
    )
    fields.update(overrides)
    return AutoscalingSpec(**fields)


def pods(*loads: tuple[float, float], at: float = NOW) -> tuple[PodLoad, ...]:
    return tuple(PodLoad(f"p{i}", waiting=w, running=r, observed_at=at) for i, (w, r) in enumerate(loads))


BOUNDS = ReplicasSpec(min=1, max=10)
ZERO_OK = ReplicasSpec(min=0, max=10)
# A history whose idle clock and windows are long settled: nothing recent holds the size.
SETTLED = History(scale_down_candidates=((NOW - 3600, 1),), last_request_time=NOW - 10, last_scale_time=NOW - 3600)


CASES = [
    # id, autoscaling, replicas, observed, history, expected (desired, reason, scaling_active, condition reason)
    ("load_above_target_scales_up_to_ceil_of_load_over_target",
     spec(), BOUNDS, Observed(2, pods((5, 10), (0, 15))), SETTLED, (3, a.SCALE_UP, True, "MetricsFresh")),
    ("load_within_tolerance_keeps_the_size",
     spec(), BOUNDS, Observed(2, pods((0, 10), (0, 11))), SETTLED, (2, a.WITHIN_TOLERANCE, True, "MetricsFresh")),
    ("load_just_outside_tolerance_scales_up",
     spec(), BOUNDS, Observed(2, pods((0, 11), (0, 12))), SETTLED, (3, a.SCALE_UP, True, "MetricsFresh")),
    ("burst_over_panic_threshold_jumps_straight_to_the_recommendation",
     spec(scale_up_window_seconds=60), BOUNDS, Observed(1, pods((40, 20))), SETTLED, (6, a.PANIC, True, "MetricsFresh")),
    ("recommendation_above_max_is_clamped_at_max",
     spec(), BOUNDS, Observed(4, pods((100, 20), (60, 20), (60, 20), (60, 20))), SETTLED, (10, a.AT_MAX, True, "MetricsFresh")),
    ("low_load_during_the_scale_down_window_holds_the_size",
     spec(), BOUNDS, Observed(4, pods((0, 5), (0, 5), (0, 5), (0, 5))),
     replace(SETTLED, scale_down_candidates=((NOW - 100, 4),)), (4, a.STABILIZING_DOWN, True, "MetricsFresh")),
    ("low_load_after_the_scale_down_window_removes_one_step",
     spec(), BOUNDS, Observed(4, pods((0, 5), (0, 5), (0, 5), (0, 5))),
     replace(SETTLED, scale_down_candidates=((NOW - 301, 4),)), (3, a.SCALE_DOWN, True, "MetricsFresh")),
    ("scale_down_step_bounds_how_many_replicas_leave_at_once",
     spec(scale_down_step_replicas=3), BOUNDS, Observed(8, pods(*[(0, 1)] * 8)), SETTLED, (5, a.SCALE_DOWN, True, "MetricsFresh")),
    ("zero_load_with_min_one_stays_at_min",
     spec(), BOUNDS, Observed(1, pods((0, 0))), SETTLED, (1, a.AT_MIN, True, "MetricsFresh")),
    ("zero_load_with_min_zero_waits_for_the_idle_period",
     spec(), ZERO_OK, Observed(1, pods((0, 0))), replace(SETTLED, last_request_time=NOW - 899), (1, a.AWAITING_IDLE, True, "MetricsFresh")),
    ("zero_load_for_the_idle_period_scales_to_zero",
     spec(), ZERO_OK, Observed(1, pods((0, 0))), replace(SETTLED, last_request_time=NOW - 900), (0, a.SCALE_TO_ZERO, True, "MetricsFresh")),
    ("a_spilled_request_keeps_an_idle_tier_awake",
     spec(), ZERO_OK, Observed(1, pods((0, 0)), spilled_requests=1), replace(SETTLED, last_request_time=NOW - 5000), (1, a.AWAITING_IDLE, True, "MetricsFresh")),
    ("a_spilled_request_wakes_a_tier_at_zero",
     spec(), ZERO_OK, Observed(0, (), spilled_requests=3), SETTLED, (1, a.WAKE_UP, True, "MetricsFresh")),
    ("wake_up_starts_at_least_min_replicas",
     spec(), ReplicasSpec(min=0, max=10), Observed(0, (), spilled_requests=1), SETTLED, (1, a.WAKE_UP, True, "MetricsFresh")),
    ("a_tier_at_zero_without_requests_stays_asleep",
     spec(), ZERO_OK, Observed(0, ()), SETTLED, (0, a.ASLEEP, True, "MetricsFresh")),
    ("a_tier_at_zero_with_min_two_starts_two",
     spec(), ReplicasSpec(min=2, max=10), Observed(0, ()), SETTLED, (2, a.AT_MIN, True, "MetricsFresh")),
    ("a_missing_pod_sample_holds_the_size_even_at_zero_load",
     spec(), BOUNDS, Observed(3, pods((0, 0), (0, 0)) + (PodLoad("p9", None, None, None),)), SETTLED, (3, a.METRICS_MISSING, False, "MetricsMissing")),
    ("a_stale_pod_sample_holds_the_size_even_under_heavy_load",
     spec(), BOUNDS, Observed(3, pods((50, 50), (50, 50), (50, 50), at=NOW - 16)), SETTLED, (3, a.METRICS_MISSING, False, "MetricsMissing")),
    ("a_sample_two_periods_old_is_still_fresh",
     spec(), BOUNDS, Observed(3, pods((0, 10), (0, 10), (0, 10), at=NOW - 15)), SETTLED, (3, a.WITHIN_TOLERANCE, True, "MetricsFresh")),
    ("replicas_without_a_ready_pod_hold_the_size",
     spec(), BOUNDS, Observed(4, ()), SETTLED, (4, a.NO_READY_PODS, False, "MetricsMissing")),
    ("a_panic_window_forbids_scale_down",
     spec(scale_down_window_seconds=0), BOUNDS, Observed(6, pods(*[(0, 1)] * 6)), replace(SETTLED, panic_until=NOW + 30), (6, a.PANIC, True, "MetricsFresh")),
    ("an_expired_panic_window_allows_scale_down",
     spec(scale_down_window_seconds=0), BOUNDS, Observed(6, pods(*[(0, 1)] * 6)), replace(SETTLED, panic_until=NOW), (5, a.SCALE_DOWN, True, "MetricsFresh")),
    ("a_higher_recommendation_inside_the_scale_up_window_waits",
     spec(scale_up_window_seconds=30), BOUNDS, Observed(2, pods((0, 14), (0, 14))),
     replace(SETTLED, scale_up_candidates=((NOW - 10, 2),)), (2, a.STABILIZING_UP, True, "MetricsFresh")),
    ("a_higher_recommendation_held_for_the_scale_up_window_scales_up",
     spec(scale_up_window_seconds=30), BOUNDS, Observed(2, pods((0, 14), (0, 14))),
     replace(SETTLED, scale_up_candidates=((NOW - 31, 2), (NOW - 10, 3))), (3, a.SCALE_UP, True, "MetricsFresh")),
    ("replicas_desired_is_a_floor_an_idle_tier_does_not_go_below",
     spec(), ReplicasSpec(min=1, max=10, desired=3), Observed(3, pods((0, 0), (0, 0), (0, 0))),
     replace(SETTLED, scale_down_candidates=((NOW - 301, 3),)), (3, a.AT_MIN, True, "MetricsFresh")),
    ("replicas_desired_does_not_cap_a_busy_tier",
     spec(), ReplicasSpec(min=1, max=10, desired=2), Observed(2, pods((20, 10), (20, 10))), SETTLED, (6, a.PANIC, True, "MetricsFresh")),
    ("a_tier_at_zero_wakes_to_replicas_desired",
     spec(), ReplicasSpec(min=0, max=10, desired=2), Observed(0, ()), SETTLED, (2, a.AT_MIN, True, "MetricsFresh")),
    ("engine_none_keeps_replicas_desired",
     spec(engine="none"), ReplicasSpec(min=1, max=10, desired=4), Observed(2, pods((0, 0), (0, 0))), SETTLED, (4, a.DISABLED, False, "AutoscalingDisabled")),
    ("engine_keda_leaves_the_size_alone",
     spec(engine="keda", prometheus=PrometheusSource(url="http://prometheus:9090", query="sum(q)")), BOUNDS, Observed(7, ()), SETTLED, (7, a.DELEGATED, False, "DelegatedToKEDA")),
]


@pytest.mark.parametrize("autoscaling,bounds,observed,history,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decision_table(autoscaling, bounds, observed, history, expected):
    decision = decide_scale(autoscaling, bounds, observed, history, now=NOW)
    assert (decision.desired_replicas, decision.reason, decision.scaling_active, decision.condition_reason) == expected


def test_missing_metrics_never_scale_down_over_many_periods():
    history = SETTLED
    sizes = []
    for step in range(200):
        now = NOW + 5 * step
        observed = Observed(5, (PodLoad("p0", None, None, None),) + pods(*[(0, 0)] * 4, at=now))
        decision = decide_scale(spec(), BOUNDS, observed, history, now=now)
        history = decision.history
        sizes.append(decision.desired_replicas)
    assert set(sizes) == {5}


def test_scale_down_follows_the_highest_recommendation_of_the_window():
    history = SETTLED
    trail = []
    # 300 s of load that wants 4, then load that wants 1: nothing moves for 300 s, then one step per period.
    for step in range(130):
        now = NOW + 5 * step
        load = 40 if step < 60 else 5
        current = trail[-1] if trail else 4
        per_pod = load / current
        decision = decide_scale(spec(), BOUNDS, Observed(current, pods(*[(0, per_pod)] * current, at=now)), history, now=now)
        history = decision.history
        trail.append(decision.desired_replicas)
    first_drop = trail.index(3)
    assert trail[:first_drop] == [4] * first_drop
    assert first_drop == 120  # the last recommendation of 4 was at step 59 (t+295 s); 300 s later is step 119 + 1
    assert trail[120:] == [3, 2, 1, 1, 1, 1, 1, 1, 1, 1]


def test_panic_suspends_scale_down_for_a_whole_window_after_the_burst():
    history = SETTLED
    burst = decide_scale(spec(), BOUNDS, Observed(1, pods((30, 20))), history, now=NOW)
    assert (burst.desired_replicas, burst.reason, burst.history.panic_until) == (5, a.PANIC, NOW + 300)
    calm = decide_scale(spec(scale_down_window_seconds=0), BOUNDS, Observed(5, pods(*[(0, 1)] * 5, at=NOW + 299)), burst.history, now=NOW + 299)
    assert (calm.desired_replicas, calm.reason) == (5, a.PANIC)


def test_the_window_history_stays_small_over_a_long_run():
    history = SETTLED
    for step in range(2000):
        now = NOW + 5 * step
        load = 10 * (1 + (step * 7919) % 9)  # an irregular load between 10 and 90
        current = 5
        decision = decide_scale(spec(), ReplicasSpec(min=5, max=5), Observed(current, pods(*[(0, load / 5)] * 5, at=now)), history, now=now)
        history = decision.history
    assert len(history.scale_down_candidates) <= 61
    assert len(history.scale_up_candidates) == 1


def test_decisions_are_deterministic():
    observed = Observed(2, pods((5, 10), (0, 15)))
    first = decide_scale(spec(), BOUNDS, observed, SETTLED, now=NOW)
    second = decide_scale(spec(), BOUNDS, observed, SETTLED, now=NOW)
    assert first == second


def test_scaling_changes_record_the_scale_time_and_holds_do_not():
    up = decide_scale(spec(), BOUNDS, Observed(2, pods((5, 10), (0, 15))), SETTLED, now=NOW)
    hold = decide_scale(spec(), BOUNDS, Observed(2, pods((0, 10), (0, 10))), SETTLED, now=NOW)
    assert up.history.last_scale_time == NOW
    assert hold.history.last_scale_time == NOW - 3600


def test_the_message_names_the_missing_pods():
    observed = Observed(2, (PodLoad("engine-a", None, None, None), PodLoad("engine-b", 1, 1, NOW - 100)))
    decision = decide_scale(spec(), BOUNDS, observed, SETTLED, now=NOW)
    assert decision.message == "Queue depth of engine-a, engine-b is missing or older than 15s; holding 2 replica(s)."


def test_starting_replicas_count_as_capacity_until_they_are_ready():
    # 4 requested, 1 ready carrying 60: the 3 starting replicas will carry it (60 <= 2 x 4 x 10).
    waiting = decide_scale(spec(), BOUNDS, Observed(4, pods((30, 30))), SETTLED, now=NOW)
    assert (waiting.desired_replicas, waiting.reason, waiting.recommended) == (4, a.AWAITING_CAPACITY, 6)
    # 90 exceeds 2 x 4 x 10 = 80: even the requested replicas will not be enough.
    more = decide_scale(spec(), BOUNDS, Observed(4, pods((60, 30))), SETTLED, now=NOW)
    assert (more.desired_replicas, more.reason) == (9, a.PANIC)


def test_an_empty_history_waits_a_whole_window_before_scaling_down():
    quiet = Observed(4, pods(*[(0, 1)] * 4))
    first = decide_scale(spec(), BOUNDS, quiet, History(), now=NOW)
    assert (first.desired_replicas, first.reason) == (4, a.STABILIZING_DOWN)
    later = decide_scale(spec(), BOUNDS, Observed(4, pods(*[(0, 1)] * 4, at=NOW + 301)), first.history, now=NOW + 301)
    assert (later.desired_replicas, later.reason) == (3, a.SCALE_DOWN)


def test_after_a_metrics_outage_scale_down_waits_a_whole_window_of_fresh_samples():
    outage = decide_scale(spec(), BOUNDS, Observed(4, (PodLoad("p0", None, None, None),)), SETTLED, now=NOW)
    back = decide_scale(spec(), BOUNDS, Observed(4, pods(*[(0, 1)] * 4, at=NOW + 5)), outage.history, now=NOW + 5)
    assert (back.desired_replicas, back.reason) == (4, a.STABILIZING_DOWN)
    settled = decide_scale(spec(), BOUNDS, Observed(4, pods(*[(0, 1)] * 4, at=NOW + 301)), back.history, now=NOW + 301)
    assert (settled.desired_replicas, settled.reason) == (3, a.SCALE_DOWN)


def test_recommendations_above_max_are_remembered_as_max():
    decision = decide_scale(spec(), BOUNDS, Observed(10, pods(*[(500, 100)] * 10)), SETTLED, now=NOW)
    assert (decision.desired_replicas, decision.reason, decision.recommended) == (10, a.AT_MAX, 600)
    assert decision.history.scale_down_candidates == ((NOW, 10),)
