"""The pure parts of benchmarks/routing/lm_features.py: feature arithmetic, the stratified
order and the dense logistic trainer. The model-reading part runs in the benchmark."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[3] / "benchmarks" / "routing" / "lm_features.py"
spec = importlib.util.spec_from_file_location("lm_features", PATH)
L = importlib.util.module_from_spec(spec)
spec.loader.exec_module(L)


def test_log_softmax_rows_are_normalised_even_for_large_logits():
    out = L.log_softmax(np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]]))
    assert np.allclose(out, [[math.log(0.5), math.log(0.5)], [math.log(0.25), math.log(0.75)]])


def test_uncertainty_scores_each_token_by_the_row_before_it():
    # Vocabulary of 2; after token 0 the model says P(1) = 0.75, after token 1 P(0) = 0.5.
    logits = np.log(np.array([[0.25, 0.75], [0.5, 0.5], [0.9, 0.1]]))
    out = L.uncertainty_features(logits, [0, 1, 0])
    scored = [math.log(0.75), math.log(0.5)]
    assert out["tokens"] == 3.0
    assert out["logprob_mean"] == pytest.approx(sum(scored) / 2)
    assert out["logprob_min"] == pytest.approx(math.log(0.5))
    assert out["logprob_std"] == pytest.approx(np.std(scored))
    entropies = [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))]
    assert out["entropy_mean"] == pytest.approx(sum(entropies) / 3)


def test_one_token_prompt_has_zero_log_prob_statistics():
    out = L.uncertainty_features(np.zeros((1, 4)), [2])
    assert (out["logprob_mean"], out["logprob_min"], out["logprob_std"]) == (0.0, 0.0, 0.0)
    assert out["entropy_mean"] == pytest.approx(math.log(4))


def test_letter_features_renormalise_over_the_answer_letters():
    probs = np.array([0.4, 0.2, 0.1, 0.1, 0.2])  # letters are ids 0..3; id 4 is another token
    out = L.letter_features(np.log(probs), [0, 1, 2, 3])
    assert out["letter_mass"] == pytest.approx(0.8)
    assert [out[f"letter_p_{c}"] for c in "abcd"] == pytest.approx([0.5, 0.25, 0.125, 0.125])
    assert out["letter_max"] == pytest.approx(0.5)
    assert out["letter_entropy"] == pytest.approx(-(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 2 * 0.125 * math.log(0.125)))


def test_every_prefix_of_the_stratified_order_keeps_the_outcome_mix():
    rows = [{"weak_correct": i % 4 != 0, "strong_correct": True} for i in range(400)]  # 100 hard, 300 easy
    order = L.stratified_order(rows, seed=0)
    assert sorted(order) == list(range(400))
    for prefix in (4, 40, 200):
        hard = sum(not rows[i]["weak_correct"] for i in order[:prefix])
        assert hard == prefix // 4
    assert L.stratified_order(rows, seed=0) == order
    assert L.stratified_order(rows, seed=1) != order


def test_logistic_recovers_a_separating_direction_and_l2_shrinks_it():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 2))
    y = (rng.random(2000) < 1 / (1 + np.exp(-(2.0 * x[:, 0] - 1.0)))).astype(float)
    xb = np.hstack([x, np.ones((2000, 1))])
    w = L.fit_logistic(xb, y, l2=0.0)
    assert w[0] == pytest.approx(2.0, abs=0.25)
    assert w[1] == pytest.approx(0.0, abs=0.15)
    assert w[2] == pytest.approx(-1.0, abs=0.2)
    shrunk = L.fit_logistic(xb, y, l2=5000.0)
    assert abs(shrunk[0]) < abs(w[0]) / 2
    # The bias is not penalised: the shrunk model still predicts the base rate.
    assert L.predict_logistic(xb, shrunk).mean() == pytest.approx(y.mean(), abs=0.01)


def test_gain_score_ranks_prompts_only_the_strong_model_answers_first():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 3))
    hard = x[:, 0] > 0.5
    weak = ~hard
    strong = np.ones(600, dtype=bool)
    score = L.fit_gain(x, weak, strong)
    test = np.array([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    high, low = score(test)
    assert high > 0.5 and low < 0.1


def test_zscore_centres_and_scales_and_leaves_constant_scores_at_zero():
    assert L.zscore(np.array([1.0, 3.0])).tolist() == [-1.0, 1.0]
    assert L.zscore(np.array([2.0, 2.0])).tolist() == [0.0, 0.0]


def test_projection_keeps_the_direction_of_largest_spread():
    rng = np.random.default_rng(2)
    x = np.column_stack([rng.normal(scale=10.0, size=500), rng.normal(scale=0.1, size=500), np.full(500, 3.0)])
    project = L.Projection(x, components=1)
    assert abs(project.basis[:, 0] @ [1.0, 0.0, 0.0]) == pytest.approx(1.0, abs=1e-3)
    assert project(x.mean(axis=0, keepdims=True))[0, 0] == pytest.approx(0.0)
    assert project(x).std() == pytest.approx(x[:, 0].std(), rel=1e-3)


def test_section_is_appended_once_and_replaced_on_rerun():
    first = L.with_section("# Results\n\n| table |\n", "<!-- m -->", "## Extra\nold\n")
    assert first == "# Results\n\n| table |\n\n<!-- m -->\n## Extra\nold\n"
    assert L.with_section(first, "<!-- m -->", "## Extra\nnew") == "# Results\n\n| table |\n\n<!-- m -->\n## Extra\nnew\n"


def test_run_keeps_the_section_when_it_rewrites_the_table(tmp_path):
    run_spec = importlib.util.spec_from_file_location("routing_run", PATH.parent / "run.py")
    run = importlib.util.module_from_spec(run_spec)
    run_spec.loader.exec_module(run)
    path = tmp_path / "RESULTS.md"
    assert run.kept_section(path, L.MARKER) == ""
    path.write_text(L.with_section("# old table\n", L.MARKER, "## Extra\nrows"))
    assert run.kept_section(path, L.MARKER) == "\n" + L.MARKER + "\n## Extra\nrows\n"
    assert run.LM_SECTION == L.MARKER
