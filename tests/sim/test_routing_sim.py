"""`shoal sim` with a routing model: requests start where its classifier sends them, and the
run reports the quality kept alongside GPU-hours."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from shoal.router.classifier import train_difficulty
from shoal.sim.commands import main
from shoal.sim.quality import routed_quality

from tests.router.test_classifier_v2 import synthetic


def tier_yaml(name: str, gpu_hour: float) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: shoal.dev/v1alpha1
        kind: ModelTier
        metadata:
          name: {name}
        spec:
          model:
            name: {name}
            source: hf://org/{name}@main
          replicas:
            min: 1
            max: 4
          cost:
            gpuHourUSD: {gpu_hour}
        """
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("routed")
    (root / "small.yaml").write_text(tier_yaml("small", 1.0))
    (root / "large.yaml").write_text(tier_yaml("large", 4.0))
    examples = synthetic()
    (root / "outcomes.jsonl").write_text("".join(json.dumps({"prompt": e.prompt, "outcomes": e.outcomes}) + "\n" for e in examples))
    (root / "model.json").write_text(json.dumps(train_difficulty(examples, ["small", "large"], calibration_folds=0).to_json()))
    return {name: root / name for name in ("small.yaml", "large.yaml", "outcomes.jsonl", "model.json")}


def run(files, capsys, *extra: str) -> tuple[int, dict]:
    code = main(["-f", str(files["small.yaml"]), "-f", str(files["large.yaml"]), "--trace", "constant", "--rate", "2",
                 "--hours", "0.1", "--policy", "static:1", "--json", "--outcomes", str(files["outcomes.jsonl"]), *extra])
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else {})


def test_a_routing_model_sends_only_the_prompts_that_need_it_up_and_keeps_the_quality(files, capsys):
    code, summary = run(files, capsys, "--routing-model", str(files["model.json"]))
    assert code == 0
    routing = summary["routing"]
    # A third of the prompts are proofs only the large tier gets right: they go up; the sums
    # (small right) and the riddles (nobody right) stay small.
    assert routing["shares"]["large"] == pytest.approx(1 / 3, abs=0.05)
    assert routing["quality"] == pytest.approx(2 / 3, abs=0.05)
    assert routing["smallestTierOnly"] == pytest.approx(1 / 3, abs=0.05)
    assert routing["largestTierOnly"] == pytest.approx(0.3 + 1 / 3, abs=0.05)
    assert routing["gapRecovered"] > 1.0
    assert summary["gpu_hours_by_tier"]["large"] > 0


def test_without_a_model_every_request_starts_small(files, capsys):
    code, summary = run(files, capsys)
    assert code == 0
    assert summary["routing"]["shares"] == {"small": 1.0, "large": 0.0}
    assert summary["routing"]["quality"] == summary["routing"]["smallestTierOnly"]


def test_bad_routing_inputs_are_one_line_and_exit_2(files, capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    code = main(["-f", str(files["small.yaml"]), "--outcomes", str(bad)])
    assert code == 2
    assert capsys.readouterr().err == f'shoal sim: {bad}:1: expected {{"prompt", "outcomes": {{TIER: bool}}}} or {{"prompt", "weak_correct", "strong_correct"}}\n'
    wrong = tmp_path / "wrong.json"
    wrong.write_text("{}")
    code = main(["-f", str(files["small.yaml"]), "--routing-model", str(wrong), "--outcomes", str(files["outcomes.jsonl"])])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"shoal sim: cannot load the routing model {wrong}:")


def test_routed_quality_counts_each_request_on_the_tier_that_served_it():
    outcomes = [{"small": True, "large": True}, {"small": False, "large": True}, {"small": False}]
    quality = routed_quality(outcomes, ["small", "large", "large"], ["small", "large"])
    # The third has no large outcome: it counts as the small tier's (wrong).
    assert (quality.quality, quality.smallest_only, quality.largest_only) == (2 / 3, 1 / 3, 2 / 3)
    assert quality.shares == {"small": 1 / 3, "large": 2 / 3}
    assert quality.gap_recovered == 1.0
