"""The drift detector: counts of agreed/disagreed shadow samples in, a state and a condition out."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from shoal.evaluate import stats
from shoal.plan import drift

CONFIGURED = drift.DriftSettings(baseline=0.9, min_drop=0.1, threshold=12.0)


def test_a_configured_baseline_starts_watching_with_a_zero_statistic():
    state = drift.reset(CONFIGURED)
    assert (state.phase, state.baseline, state.statistic, state.drifting) == ("Watching", 0.9, 0.0, False)


def test_disagreements_accumulate_the_log_likelihood_ratio_until_the_threshold_fires():
    state = drift.observe(drift.reset(CONFIGURED), CONFIGURED, 0, 10)
    # Each disagreement weighs ln(0.2 / 0.1) nats towards the dropped rate.
    assert state.statistic == pytest.approx(10 * math.log(2.0))
    assert state.phase == "Watching"
    state = drift.observe(state, CONFIGURED, 0, 10)
    assert state.phase == "Drifting"
    assert state.drifting is True
    assert (state.samples, state.run_total, state.run_agreed) == (20, 20, 0)


def test_agreements_floor_the_cusum_at_zero_and_restart_the_recent_estimate():
    state = drift.observe(drift.reset(CONFIGURED), CONFIGURED, 0, 5)
    state = drift.observe(state, CONFIGURED, 100, 0)
    assert (state.statistic, state.run_total, state.samples) == (0.0, 0, 105)


def test_an_empty_batch_changes_nothing():
    state = drift.observe(drift.reset(CONFIGURED), CONFIGURED, 3, 4)
    assert drift.observe(state, CONFIGURED, 0, 0) is state


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="negative"):
        drift.observe(drift.reset(CONFIGURED), CONFIGURED, -1, 2)


def test_drifting_clears_once_agreement_is_back_at_the_baseline():
    state = drift.observe(drift.reset(CONFIGURED), CONFIGURED, 0, 20)
    assert state.phase == "Drifting"
    # Back up from 0.8 to 0.9: each agreement weighs ln(0.9 / 0.8) = 0.118 nats, 102 reach 12.
    state = drift.observe(state, CONFIGURED, 100, 0)
    assert state.phase == "Drifting"
    assert state.statistic == pytest.approx(100 * math.log(0.9 / 0.8))
    state = drift.observe(state, CONFIGURED, 3, 0)
    assert (state.phase, state.statistic, state.run_total) == ("Watching", 0.0, 0)


def test_without_a_baseline_the_warm_up_sets_it_one_standard_error_below_the_measured_rate():
    settings = drift.DriftSettings(warmup_samples=100)
    state = drift.observe(drift.reset(settings), settings, 60, 6)
    assert (state.phase, state.drifting, state.warmup_total) == ("Calibrating", None, 66)
    state = drift.observe(state, settings, 30, 4)
    assert state.phase == "Watching"
    # 90 of 100 agreed: 0.90 - sqrt(0.9 * 0.1 / 100) = 0.87.
    assert state.baseline == pytest.approx(0.87)
    assert (state.baseline_samples, state.samples, state.statistic) == (100, 0, 0.0)


def test_the_sprt_goes_below_zero_until_it_accepts_no_drift_and_restarts():
    settings = drift.DriftSettings(method="sprt", baseline=0.9, min_drop=0.1, threshold=12.0, sprt_accept=-2.3)
    state = drift.observe(drift.reset(settings), settings, 10, 0)
    assert state.statistic == pytest.approx(10 * math.log(0.8 / 0.9))  # -1.18, kept
    state = drift.observe(state, settings, 10, 0)  # -2.36 <= -2.3: accepted, a new test
    assert state.statistic == 0.0


def test_the_wilson_window_fires_when_its_upper_bound_is_below_baseline_minus_half_the_drop():
    settings = drift.DriftSettings(method="wilson", baseline=0.9, min_drop=0.1, threshold=2.5, window_samples=200)
    state = drift.observe(drift.reset(settings), settings, 150, 50)  # 0.75, upper bound 0.818 < 0.85
    assert state.phase == "Drifting"
    level = 2 * NormalDist().cdf(2.5) - 1
    assert state.statistic == pytest.approx(stats.wilson(150, 200, level).upper)
    assert state.statistic == pytest.approx(0.818, abs=0.001)
    state = drift.observe(state, settings, 199, 1)  # the old batch leaves the window
    assert state.window == ((199, 200),)  # (agreed, total)
    assert state.phase == "Watching"


def test_the_wilson_window_waits_until_it_is_full():
    settings = drift.DriftSettings(method="wilson", baseline=0.9, window_samples=200)
    state = drift.observe(drift.reset(settings), settings, 0, 150)
    assert (state.phase, state.window) == ("Watching", ((0, 150),))  # (agreed, total)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "ewma"}, "unknown drift method"),
        ({"min_drop": 0.0}, "min_drop"),
        ({"baseline": 1.5}, "baseline"),
        ({"warmup_samples": 0}, "positive"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        drift.DriftSettings(**kwargs)


def test_the_verdict_names_the_rate_the_baseline_and_the_sample_count():
    settings = drift.DriftSettings(warmup_samples=100)
    calibrating = drift.verdict(drift.observe(drift.reset(settings), settings, 40, 10), settings, sampling_rate=0.05)
    assert (calibrating.status, calibrating.reason) == ("Unknown", "Calibrating")
    assert calibrating.message.startswith("50 of 100 graded shadow samples at a sampling rate of 5% seen")

    # 25 x ln(0.8 / 0.9) + 25 x ln(0.2 / 0.1) = 14.4 nats >= 12.
    state = drift.observe(drift.reset(CONFIGURED), CONFIGURED, 25, 25)
    fired = drift.verdict(state, CONFIGURED)
    assert (fired.status, fired.reason) == ("True", "AgreementDropped")
    assert fired.message == (
        "agreement with the reference tier dropped: 50.0% over the last 50 samples against a baseline of "
        "90.0% (configured); cusum test fired after 50 samples"
    )
    quiet = drift.verdict(drift.observe(drift.reset(CONFIGURED), CONFIGURED, 100, 0), CONFIGURED)
    assert (quiet.status, quiet.reason) == ("False", "AgreementStable")
    assert "baseline of 90.0% (configured): 100 samples tested" in quiet.message


def test_increments_sum_pods_count_new_and_restarted_pods_whole_and_ignore_gone_ones():
    previous = {"a": drift.PodCounts(10, 2), "b": drift.PodCounts(50, 5), "gone": drift.PodCounts(7, 7)}
    current = {"a": drift.PodCounts(15, 3), "b": drift.PodCounts(4, 1), "new": drift.PodCounts(2, 0)}
    # a: +5/+1; b restarted (counter went down): 4/1; new: 2/0.
    assert drift.increments(previous, current) == (11, 2)


def test_the_threshold_grows_with_the_log_of_the_sampling_volume():
    assert drift.threshold_for(172_800) == pytest.approx(12.0)
    assert drift.threshold_for(8_640) == pytest.approx(12.0 + math.log(8_640 / 172_800))
    assert drift.threshold_for(172_800, false_alarms_per_30_days=0.1) == pytest.approx(12.0 + math.log(10))


def test_the_operator_step_counts_only_new_samples_and_restarts_on_a_new_checkpoint():
    settings = drift.DriftSettings(warmup_samples=100)
    memory = drift.step(None, settings, "ckpt-1", {"a": drift.PodCounts(40, 10)})
    assert (memory.state.phase, memory.state.warmup_total) == ("Calibrating", 50)
    memory = drift.step(memory, settings, "ckpt-1", {"a": drift.PodCounts(80, 20), "b": drift.PodCounts(5, 0)})
    assert (memory.state.phase, memory.state.baseline_samples) == ("Watching", 105)
    # A promotion: a new test, and the counters seen at that moment are the new zero.
    memory = drift.step(memory, settings, "ckpt-2", {"a": drift.PodCounts(90, 20), "b": drift.PodCounts(5, 0)})
    assert (memory.checkpoint, memory.state.phase, memory.state.warmup_total) == ("ckpt-2", "Calibrating", 0)
    memory = drift.step(memory, settings, "ckpt-2", {"a": drift.PodCounts(93, 21), "b": drift.PodCounts(5, 0)})
    assert memory.state.warmup_total == 4


def test_settings_for_a_rung_come_from_the_policys_shadow_spec():
    from shoal.api.shadow import ShadowSpec

    spec = ShadowSpec.model_validate({
        "tiers": [{"tier": "small", "reference": "large", "baselineAgreement": 0.9}],
        "detection": {"method": "sprt", "minDropPercent": 5, "warmupSamples": 500},
    })
    assert drift.settings_for(spec, "small") == drift.DriftSettings(method="sprt", min_drop=0.05, baseline=0.9, warmup_samples=500)


def test_a_pod_that_could_not_be_read_keeps_its_counters_so_its_samples_count_once():
    settings = drift.DriftSettings(warmup_samples=1000)
    memory = drift.step(None, settings, "c", {"a": drift.PodCounts(10, 0), "b": drift.PodCounts(20, 0)})
    memory = drift.step(memory, settings, "c", {"a": drift.PodCounts(11, 0)}, unreadable=frozenset({"b"}))
    assert memory.state.warmup_total == 31
    memory = drift.step(memory, settings, "c", {"a": drift.PodCounts(11, 0), "b": drift.PodCounts(25, 0)})
    assert memory.state.warmup_total == 36
