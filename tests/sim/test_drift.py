"""Drift scenarios in the simulator: the real detector on a simulated agreement stream."""

from __future__ import annotations

import json
import random

import pytest

from shoal.plan import drift as plan
from shoal.sim import drift
from shoal.sim.commands import main

from .test_commands import tier_file  # noqa: F401  (fixture)


def test_a_scenario_drops_the_agreement_of_its_share_of_traffic_at_its_time():
    scenario = drift.DriftScenario(baseline=0.85, drop=0.20, at_seconds=100.0, share=0.5)
    assert (scenario.agreement(99.0), scenario.agreement(100.0)) == (0.85, pytest.approx(0.75))


@pytest.mark.parametrize("kwargs", [{"baseline": 0.0}, {"drop": 0.9}, {"share": 0.0}])
def test_impossible_scenarios_are_refused(kwargs):
    with pytest.raises(ValueError):
        drift.DriftScenario(**kwargs)


def test_batches_at_a_constant_rate_carry_the_expected_number_of_samples_and_agreements():
    scenario = drift.DriftScenario(baseline=0.8)
    batches = list(drift.batches_at_rate(scenario, rate=10, sampling_rate=0.2, check_seconds=30,
                                         duration_seconds=3000, rng=random.Random(1)))
    assert len(batches) == 100
    assert batches[-1].time == 3000
    total = sum(b.agreed + b.disagreed for b in batches)
    agreed = sum(b.agreed for b in batches)
    # 100 checks x 60 expected samples; Poisson sd of the total is 77.
    assert 5700 < total < 6300
    assert 0.77 < agreed / total < 0.83


def test_batches_from_arrivals_group_samples_by_check_interval():
    scenario = drift.DriftScenario(baseline=1.0)
    batches = list(drift.batches_from_arrivals(scenario, [1.0, 2.0, 31.0, 95.0], sampling_rate=1.0,
                                               check_seconds=30.0, rng=random.Random(1)))
    assert [(b.time, b.agreed, b.disagreed) for b in batches] == [(30.0, 2, 0), (60.0, 1, 0), (90.0, 0, 0), (120.0, 1, 0)]


def test_a_twenty_point_drop_is_detected_after_the_change_and_never_before():
    scenario = drift.DriftScenario(baseline=0.85, drop=0.20, at_seconds=6 * 3600.0)
    batches = drift.batches_at_rate(scenario, rate=10, sampling_rate=0.05, check_seconds=30,
                                    duration_seconds=12 * 3600.0, rng=random.Random(7))
    run = drift.run_detector(batches, plan.DriftSettings(), change_at=scenario.at_seconds)
    assert run.false_alarms == 0
    assert run.baseline is not None and 0.82 < run.baseline < 0.87
    seconds, samples = run.detection()
    # The detector needs about 12 / KL(0.65 || 0.85) = 100 samples; at 0.5 samples/s, minutes.
    assert 30 < samples < 400
    assert 0 < seconds < 15 * 60


def test_without_a_change_there_is_no_detection_to_report():
    batches = drift.batches_at_rate(drift.DriftScenario(), rate=10, sampling_rate=0.2, check_seconds=30,
                                    duration_seconds=3600.0, rng=random.Random(3))
    run = drift.run_detector(batches, plan.DriftSettings())
    assert (run.detection(), run.false_alarms) == (None, 0)
    assert run.final is not None and run.final.phase == "Watching"


def test_shoal_sim_reports_when_a_drop_on_the_first_tier_was_detected(tier_file, capsys):  # noqa: F811
    code = main(["-f", str(tier_file), "--trace", "constant", "--rate", "10", "--hours", "2", "--policy", "static:2",
                 "--shadow-rate", "0.2", "--drift", "20", "--drift-at", "60", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)["drift"]
    assert report["changeAtSeconds"] == 3600.0
    assert report["falseAlarms"] == 0
    assert 0 < report["detectedAfterSamples"] < 400
    assert 0 < report["detectedAfterSeconds"] < 600
    assert 0.80 < report["baseline"] < 0.88


def test_shoal_sim_refuses_a_shadow_rate_above_one_in_one_line(tier_file, capsys):  # noqa: F811
    code = main(["-f", str(tier_file), "--trace", "constant", "--rate", "1", "--hours", "0.1", "--shadow-rate", "1.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "shoal sim: --shadow-rate must lie in (0, 1], not 1.5"
