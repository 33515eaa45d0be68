"""The fleet simulator: engine timing, GPU accounting, scaling through the real decision code."""

from __future__ import annotations

import pytest

from shoal.api.modeltier import AutoscalingSpec, ReplicasSpec
from shoal.sim import report, trace
from shoal.sim.engine import EngineModel
from shoal.sim.fleet import TierConfig, simulate
from shoal.sim.policies import HPAUtilizationPolicy, KEDAInFlightPolicy, KEDAWaitingPolicy, PodView, ShoalPolicy, StaticPolicy, TierView
from shoal.sim.trace import Arrival

MODEL = EngineModel(
    max_num_seqs=64,
    prefill_tokens_per_second=10000.0,
    prefill_slowdown_batch=48.0,
    decode_step_base_seconds=0.012,
    decode_step_per_seq_seconds=0.0004,
    cold_start_min_seconds=60.0,
    cold_start_max_seconds=60.0,
)


def evenly(rate: float, start: float, stop: float, prompt: int = 500, output: int = 100) -> list[Arrival]:
    n = int(round((stop - start) * rate))
    return [Arrival(start + k / rate, prompt, output) for k in range(n)]


def test_a_lone_request_takes_prefill_then_one_decode_step_per_token():
    outcome = simulate([Arrival(10.0, 1000, 10)], [TierConfig("small", MODEL)], [StaticPolicy(1)], seed=1, end=60.0)
    (request,) = outcome.requests
    assert request.first_token - request.arrival == pytest.approx(0.1)  # 1000 tokens at 10000 tokens/s
    # Nine more tokens, alone in the batch: 0.012 + 0.0004 * 1 seconds each.
    assert request.done - request.first_token == pytest.approx(9 * 0.0124)


def test_requests_beyond_the_batch_capacity_wait_for_a_free_slot():
    tiny = EngineModel(max_num_seqs=1, prefill_tokens_per_second=1000.0, decode_step_base_seconds=0.1, decode_step_per_seq_seconds=0.0)
    arrivals = [Arrival(0.0, 100, 11), Arrival(0.0, 100, 11)]
    outcome = simulate(arrivals, [TierConfig("small", tiny)], [StaticPolicy(1)], seed=1, end=10.0)
    first, second = outcome.requests
    assert first.first_token == pytest.approx(0.1)
    assert first.done == pytest.approx(1.1)  # ten decode steps of 0.1 s
    assert second.prefill_start == pytest.approx(1.1)  # the only slot frees when the first finishes
    assert second.first_token == pytest.approx(1.2)


def test_a_static_fleet_for_an_hour_uses_replicas_times_gpus_gpu_hours():
    tier = TierConfig("small", MODEL, gpus_per_replica=2, gpu_hour_usd=1.5, initial_replicas=3)
    outcome = simulate(evenly(5.0, 0.0, 3600.0), [tier], [StaticPolicy(3)], seed=1, end=3600.0)
    summary = report.summarize(outcome, slo_ttft_p95_seconds=2.0)
    assert summary.gpu_hours == 6.0
    assert summary.cost_usd == 9.0
    assert summary.scale_events == 0
    assert summary.slo_attainment == 1.0
    assert summary.requests == 18000


def shoal_tier(**overrides) -> tuple[TierConfig, ShoalPolicy]:
    autoscaling = AutoscalingSpec(**{"target_queue_depth": 16, "scale_down_window_seconds": 300, "metrics_period_seconds": 5, **overrides})
    return TierConfig("small", MODEL, initial_replicas=1), ShoalPolicy(autoscaling, ReplicasSpec(min=1, max=20))


def test_a_burst_raises_replicas_within_one_metrics_period_and_panics():
    tier, policy = shoal_tier()
    arrivals = evenly(2.0, 0.0, 600.0) + evenly(30.0, 600.0, 900.0)
    outcome = simulate(arrivals, [tier], [policy], seed=1, end=900.0)
    first_up = next(e for e in outcome.scale_events if e.time >= 600.0)
    assert first_up.time <= 605.0
    assert first_up.reason == "Panic"
    assert first_up.from_replicas == 1
    assert first_up.to_replicas >= 3


def test_replicas_fall_back_only_after_the_scale_down_window():
    tier, policy = shoal_tier(scale_down_window_seconds=120)
    arrivals = evenly(20.0, 0.0, 900.0) + evenly(2.0, 900.0, 1800.0)
    outcome = simulate(arrivals, [tier], [policy], seed=1, end=1800.0)
    downs = [e for e in outcome.scale_events if e.to_replicas < e.from_replicas and e.time >= 900.0]
    assert downs, "the fleet never scaled down"
    assert downs[0].time >= 900.0 + 120.0
    assert downs[-1].to_replicas == 1
    assert all(e.from_replicas - e.to_replicas == 1 for e in downs)


def test_a_tier_at_zero_spills_to_the_next_tier_and_wakes_up():
    autoscaling = AutoscalingSpec(target_queue_depth=16, metrics_period_seconds=5, scale_to_zero_idle_seconds=60)
    small = TierConfig("small", MODEL, initial_replicas=0, spill_queue_depth=4)
    large = TierConfig("large", MODEL, initial_replicas=1)
    policies = [ShoalPolicy(autoscaling, ReplicasSpec(min=0, max=5)), StaticPolicy(1)]
    outcome = simulate(evenly(1.0, 30.0, 300.0), [small, large], policies, seed=1, end=300.0)
    wake = outcome.scale_events[0]
    assert (wake.tier, wake.time, wake.from_replicas, wake.to_replicas, wake.reason) == ("small", 30.0, 0, 1, "WakeUp")
    early = [r for r in outcome.requests if r.arrival < 90.0]  # the pod is ready 60 s after the wake-up
    assert all(r.tier == 1 and r.spilled for r in early)
    late = [r for r in outcome.requests if r.arrival > 100.0]
    assert all(r.tier == 0 and not r.spilled for r in late)


def test_an_idle_tier_scales_to_zero_after_the_idle_period():
    autoscaling = AutoscalingSpec(target_queue_depth=16, metrics_period_seconds=5, scale_to_zero_idle_seconds=60, scale_down_window_seconds=30)
    tier = TierConfig("small", MODEL, initial_replicas=1)
    outcome = simulate(evenly(1.0, 0.0, 100.0), [tier], [ShoalPolicy(autoscaling, ReplicasSpec(min=0, max=5))], seed=1, end=400.0)
    to_zero = [e for e in outcome.scale_events if e.to_replicas == 0]
    assert [(e.reason, e.from_replicas) for e in to_zero] == [("ScaleToZero", 1)]
    # The last request arrived at 99 s and finished within two seconds; 60 s idle, on a 5 s period.
    assert 160.0 <= to_zero[0].time <= 170.0


def test_the_same_seed_gives_the_same_run_and_another_seed_does_not():
    shape = trace.TraceShape(mean_rate=8.0, bursts_per_hour=3.0)

    def run(seed: int) -> report.Summary:
        tier, policy = shoal_tier()
        arrivals = trace.diurnal(1800.0, seed=seed, shape=shape)
        return report.summarize(simulate(arrivals, [tier], [policy], seed=seed, end=1800.0), 2.0)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_keda_style_waiting_threshold_asks_for_ceil_of_waiting_over_five():
    policy = KEDAWaitingPolicy(ReplicasSpec(min=1, max=20))
    view = TierView(current_replicas=2, ready_pods=(PodView(12, 64, 1.0), PodView(11, 64, 1.0)), spilled_requests=0)
    assert policy.desired(0.0, view) == 5  # 23 waiting / 5 = 4.6 -> 5


def test_keda_style_scale_up_is_limited_like_the_hpa_default_behaviour():
    policy = KEDAWaitingPolicy(ReplicasSpec(min=1, max=20))
    view = TierView(current_replicas=1, ready_pods=(PodView(100, 64, 1.0),), spilled_requests=0)
    assert policy.desired(0.0, view) == 5  # wants 20; at most max(+100%, +4 pods) per sync period


def test_keda_inflight_removes_at_most_the_spec_step_after_its_window():
    autoscaling = AutoscalingSpec(target_queue_depth=10, scale_down_window_seconds=60, scale_down_step_replicas=2)
    policy = KEDAInFlightPolicy(autoscaling, ReplicasSpec(min=1, max=20))
    busy = TierView(8, tuple(PodView(0, 10, 1.0) for _ in range(8)), 0)
    quiet = TierView(8, tuple(PodView(0, 1, 1.0) for _ in range(8)), 0)
    assert policy.desired(0.0, busy) == 8
    assert policy.desired(30.0, quiet) == 8  # 8 was recommended within the last 60 s
    assert policy.desired(75.0, quiet) == 6  # wants 1; two replicas per step


def test_hpa_on_gpu_utilization_sees_a_busy_gpu_as_full_whatever_the_batch():
    policy = HPAUtilizationPolicy(ReplicasSpec(min=1, max=20))
    light = TierView(4, tuple(PodView(0, 2, 1.0) for _ in range(4)), 0)
    assert policy.desired(0.0, light) == 6  # 100% busy against a 70% target: ceil(4 * 1.0 / 0.7)


def test_per_token_time_grows_with_the_batch():
    # Two requests decoding together: each step takes 0.012 + 0.0004 * 2 seconds.
    fast = EngineModel(max_num_seqs=8, prefill_tokens_per_second=1e9)
    outcome = simulate([Arrival(0.0, 1, 11), Arrival(0.0, 1, 11)], [TierConfig("small", fast)], [StaticPolicy(1)], seed=1, end=10.0)
    first, second = outcome.requests
    assert first.done - first.first_token == pytest.approx(10 * 0.0128, abs=1e-6)
    assert second.done - second.first_token == pytest.approx(10 * 0.0128, abs=1e-6)


def test_requests_spill_to_the_next_tier_while_the_first_has_a_queue_over_its_limit():
    # One slow replica on the first tier: prefill takes 1 s, so a burst of 10 builds a queue.
    slow = EngineModel(max_num_seqs=64, prefill_tokens_per_second=100.0)
    small = TierConfig("small", slow, initial_replicas=1, spill_queue_depth=2)
    large = TierConfig("large", MODEL, initial_replicas=1)
    arrivals = [Arrival(0.01 * k, 100, 5) for k in range(10)]
    outcome = simulate(arrivals, [small, large], [StaticPolicy(1), StaticPolicy(1)], seed=1, end=5.0)
    tiers = [r.tier for r in outcome.requests]
    # The first starts prefill at once; the next three wait (the third makes 3 > 2 waiting);
    # from then on the small tier is saturated and the rest go one tier up.
    assert tiers == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert [r.spilled for r in outcome.requests] == [False] * 4 + [True] * 6


def test_with_every_scrape_failing_shoal_never_shrinks_the_fleet():
    autoscaling = AutoscalingSpec(target_queue_depth=16, scale_down_window_seconds=60, metrics_period_seconds=5)
    tier = TierConfig("small", MODEL, initial_replicas=4, metrics_dropout=1.0)
    outcome = simulate(evenly(1.0, 0.0, 1800.0), [tier], [ShoalPolicy(autoscaling, ReplicasSpec(min=1, max=8))], seed=1, end=1800.0)
    assert outcome.scale_events == []


def test_a_partial_metrics_outage_shrinks_a_keda_style_fleet_but_not_shoal():
    # The HPA leaves out pods without metrics, so a partial outage reads as low load.
    autoscaling = AutoscalingSpec(target_queue_depth=16, scale_down_window_seconds=60)
    tier = TierConfig("small", MODEL, initial_replicas=4, metrics_dropout=0.75)
    outcome = simulate(evenly(20.0, 0.0, 1800.0), [tier], [KEDAInFlightPolicy(autoscaling, ReplicasSpec(min=1, max=8))], seed=1, end=1800.0)
    guarded = TierConfig("small", MODEL, initial_replicas=4, metrics_dropout=0.75)
    held = simulate(evenly(20.0, 0.0, 1800.0), [guarded], [ShoalPolicy(autoscaling, ReplicasSpec(min=1, max=8))], seed=1, end=1800.0)
    assert min(e.to_replicas for e in outcome.scale_events) < 4
    assert all(e.to_replicas >= e.from_replicas for e in held.scale_events)
