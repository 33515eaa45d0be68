"""`shoal eval` end to end against real HTTP servers on loopback (the fake engine).

The program runs as a subprocess (`shoal eval`, as `python -m shoal.cli eval`), so these
tests check what a Job would see: the exit code, stdout and the termination message file.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.api.modeltier import EvaluationRecord
from shoal.api.outcomes import ItemOutcomes, split_message
from shoal.testing.fake_engine import start_fake_engine

PARIS_ITEMS = "\n".join(
    json.dumps({"id": f"q{i}", "prompt": f"Question {i}: what is the capital of France?", "reference": "Paris"})
    for i in range(40)
)


def write_spec(tmp_path: Path, **overrides) -> Path:
    spec = {
        "dataset": {"configMapRef": {"name": "eval-data", "key": "items.jsonl"}},
        "scorers": [{"type": "exactMatch"}],
        "thresholds": [{"metric": "exact_match", "min": 0.8}],
        "concurrency": 4,
        "timeoutSeconds": 120,
    }
    spec.update(overrides)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def shoal_eval(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, dict | None]:
    termination = tmp_path / "termination-log"
    process = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "eval", "--termination-log", str(termination), *args],
        capture_output=True, text=True, timeout=timeout,
    )
    message = json.loads(termination.read_text()) if termination.exists() else None
    return process, message


@pytest.fixture
def dataset_file(tmp_path: Path) -> Path:
    path = tmp_path / "items.jsonl"
    path.write_text(PARIS_ITEMS)
    return path


def test_a_right_answering_endpoint_passes_with_exit_0_and_a_passed_verdict(tmp_path, dataset_file):
    with start_fake_engine(model="ckpt", reply="Paris.") as engine:
        process, message = shoal_eval(
            tmp_path, "--spec", str(write_spec(tmp_path)), "--dataset", str(dataset_file),
            "--endpoint", engine.base_url, "--model", "ckpt", "--checkpoint", "s3://models/ckpt-0043",
        )
    assert process.returncode == 0, process.stderr
    assert message["verdict"] == "Passed"
    assert message["checkpoint"] == "s3://models/ckpt-0043"
    assert message["items"] == 40
    assert message["datasetDigest"].startswith("sha256:")
    exact = next(m for m in message["metrics"] if m["name"] == "exact_match")
    # 40/40 right: Wilson 95% lower bound 0.9124.
    assert exact == {"name": "exact_match", "value": 1.0, "lower": 0.9124, "upper": 1.0}
    assert [m["name"] for m in message["metrics"]] == ["exact_match", "latency_p50_seconds", "latency_p95_seconds"]
    assert message["thresholds"] == [{"metric": "exact_match", "min": 0.8}]
    # The operator reads it back with the API model, once the per-item outcomes are set aside.
    record, outcomes = split_message(json.dumps(message))
    assert EvaluationRecord.model_validate_json(record).verdict == "Passed"
    assert outcomes is not None and outcomes.candidate() == [True] * 40 and outcomes.baseline() is None
    assert "exact_match          1.000  [0.912, 1.000]" in process.stdout
    assert "verdict: Passed" in process.stdout


def test_a_wrong_answering_endpoint_fails_with_exit_1_and_says_which_bound(tmp_path, dataset_file):
    with start_fake_engine(model="ckpt", reply="Lyon") as engine:
        process, message = shoal_eval(
            tmp_path, "--spec", str(write_spec(tmp_path)), "--dataset", str(dataset_file),
            "--endpoint", engine.base_url, "--model", "ckpt",
        )
    assert process.returncode == 1, process.stderr
    assert message["verdict"] == "Failed"
    assert message["message"] == "exact_match 0.000 has a 95% lower bound of 0.000, below the minimum 0.8."
    assert "verdict: Failed" in process.stdout


def test_a_regression_against_the_serving_endpoint_fails_even_above_the_threshold(tmp_path):
    # 200 items; the serving checkpoint answers all of them, the candidate misses the 15%
    # asked about Spain: 0.85 clears the 0.8 bar, but it is a 15-point regression.
    lines = [json.dumps({"id": f"fr{i}", "prompt": "capital of France?", "reference": ["Paris", "Madrid"]}) for i in range(170)]
    lines += [json.dumps({"id": f"es{i}", "prompt": "capital of Spain?", "reference": "Madrid"}) for i in range(30)]
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(lines))
    spec = write_spec(tmp_path, baseline="serving", thresholds=[{"metric": "exact_match", "min": 0.75}])
    with start_fake_engine(model="new", reply="Paris") as candidate, start_fake_engine(model="old", reply="Madrid") as serving:
        process, message = shoal_eval(
            tmp_path, "--spec", str(spec), "--dataset", str(data),
            "--endpoint", candidate.base_url, "--model", "new",
            "--baseline-endpoint", serving.base_url, "--baseline-model", "old",
        )
    assert process.returncode == 1, process.stderr
    exact = message["metrics"][0]
    assert (exact["value"], exact["baseline"]) == (0.85, 1.0)
    assert exact["deltaUpper"] < -0.02
    assert message["message"].startswith("exact_match regressed against the serving checkpoint: difference -0.150")
    assert "difference 95% interval" in process.stdout


def test_the_verdict_carries_both_checkpoints_per_item_outcomes_in_dataset_order(tmp_path):
    # France and Spain items interleaved: the candidate (always "Paris") passes only the
    # French ones, the serving checkpoint (always "Madrid") only the Spanish ones.
    lines = [
        json.dumps({"id": f"q{i}", "prompt": "capital of Spain?" if i % 3 == 0 else "capital of France?",
                    "reference": "Madrid" if i % 3 == 0 else "Paris"})
        for i in range(60)
    ]
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(lines))
    spec = write_spec(tmp_path, baseline="serving", thresholds=[{"metric": "exact_match", "min": 0.1}], maxRegression=1.0)
    with start_fake_engine(model="new", reply="Paris") as candidate, start_fake_engine(model="old", reply="Madrid") as serving:
        process, message = shoal_eval(
            tmp_path, "--spec", str(spec), "--dataset", str(data),
            "--endpoint", candidate.base_url, "--model", "new",
            "--baseline-endpoint", serving.base_url, "--baseline-model", "old",
        )
    assert process.returncode in (0, 1), process.stderr
    outcomes = ItemOutcomes.model_validate(message["outcomes"])
    assert outcomes.items == 60
    assert outcomes.candidate() == [i % 3 != 0 for i in range(60)]
    assert outcomes.baseline() == [i % 3 == 0 for i in range(60)]
    # Bitmaps only: no prompt, reference or answer text travels with them.
    assert "capital" not in json.dumps(message) and "Paris" not in json.dumps(message["outcomes"])


def test_an_unreachable_endpoint_is_an_error_with_exit_2(tmp_path, dataset_file):
    process, message = shoal_eval(
        tmp_path, "--spec", str(write_spec(tmp_path)), "--dataset", str(dataset_file),
        "--endpoint", "http://127.0.0.1:9/v1", "--model", "ckpt",
    )
    assert process.returncode == 2
    assert message["verdict"] == "JobError"
    assert message["message"].startswith("http://127.0.0.1:9/v1/models did not answer")


def test_an_endpoint_failing_most_requests_is_an_error_not_a_failed_candidate(tmp_path, dataset_file):
    with start_fake_engine(model="ckpt", reply="Paris", fail_status=400) as engine:
        process, message = shoal_eval(
            tmp_path, "--spec", str(write_spec(tmp_path)), "--dataset", str(dataset_file),
            "--endpoint", engine.base_url, "--model", "ckpt",
        )
    assert process.returncode == 2
    assert message["verdict"] == "JobError"
    assert message["message"].startswith("100% of the candidate's requests failed")


def test_a_threshold_on_an_unknown_metric_is_an_error(tmp_path, dataset_file):
    spec = write_spec(tmp_path, thresholds=[{"metric": "accuracy", "min": 0.5}])
    with start_fake_engine(model="ckpt", reply="Paris") as engine:
        process, message = shoal_eval(
            tmp_path, "--spec", str(spec), "--dataset", str(dataset_file), "--endpoint", engine.base_url, "--model", "ckpt",
        )
    assert process.returncode == 2
    assert message["message"] == (
        "threshold on 'accuracy', which was not measured "
        "(measured: exact_match, latency_p50_seconds, latency_p95_seconds)"
    )


def test_an_invalid_spec_is_an_error_that_names_the_field(tmp_path, dataset_file):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"dataset": {"uri": "https://example.invalid/x.jsonl"}, "scorers": [{"type": "bleu"}]}))
    process, message = shoal_eval(tmp_path, "--spec", str(spec), "--endpoint", "http://127.0.0.1:9/v1", "--model", "m")
    assert process.returncode == 2
    assert message["verdict"] == "JobError"
    assert "scorers.0.type" in message["message"]


def test_the_spec_can_come_from_the_environment(tmp_path, dataset_file):
    spec = write_spec(tmp_path).read_text()
    termination = tmp_path / "termination-log"
    with start_fake_engine(model="ckpt", reply="Paris") as engine:
        process = subprocess.run(
            [sys.executable, "-m", "shoal.cli", "eval", "--dataset", str(dataset_file),
             "--endpoint", engine.base_url, "--model", "ckpt"],
            capture_output=True, text=True, timeout=120,
            env={**__import__("os").environ, "SHOAL_EVAL_SPEC": spec, "SHOAL_TERMINATION_LOG": str(termination)},
        )
    assert process.returncode == 0, process.stderr
    assert json.loads(termination.read_text())["verdict"] == "Passed"


def test_serve_checkpoint_starts_the_engine_in_the_pod_and_evaluates_it(tmp_path, dataset_file):
    # The same launcher that runs `vllm serve` in the Job, with the fake engine standing in.
    command = json.dumps([sys.executable, "-m", "shoal.testing.fake_engine", "--port", "{port}", "--model", "{model}", "--reply", "Paris"])
    log = tmp_path / "engine.log"
    process, message = shoal_eval(
        tmp_path, "--spec", str(write_spec(tmp_path)), "--dataset", str(dataset_file),
        "--serve-checkpoint", "hf://acme/capitals@v2", "--model", "capitals",
        "--engine-command", command, "--engine-log", str(log),
    )
    assert process.returncode == 0, process.stderr
    assert message["checkpoint"] == "hf://acme/capitals@v2"
    assert message["verdict"] == "Passed"
    assert "--model capitals --reply Paris" in log.read_text()


def test_an_engine_that_exits_at_start_is_an_error_with_its_log_tail(tmp_path, dataset_file):
    command = json.dumps([sys.executable, "-c", "import sys; print('CUDA out of memory'); sys.exit(3)"])
    process, message = shoal_eval(
        tmp_path, "--spec", str(write_spec(tmp_path)), "--dataset", str(dataset_file),
        "--serve-checkpoint", "s3://models/ckpt-9", "--model", "m", "--engine-command", command,
    )
    assert process.returncode == 2
    assert message["verdict"] == "JobError"
    assert message["message"].startswith("the candidate engine failed: the engine exited with code 3 before it was ready; log ")
    assert "CUDA out of memory" in process.stderr


def test_an_evaluation_past_its_timeout_reports_timed_out_with_exit_2(tmp_path, dataset_file):
    with start_fake_engine(model="ckpt", reply="Paris", latency_ms=5000) as engine:
        process, message = shoal_eval(
            tmp_path, "--spec", str(write_spec(tmp_path)), "--dataset", str(dataset_file),
            "--endpoint", engine.base_url, "--model", "ckpt", "--timeout-seconds", "1",
        )
    assert process.returncode == 2
    assert message["verdict"] == "TimedOut"
    assert message["message"] == "the evaluation did not finish within its timeout (1 s)"


def test_sequential_mode_stops_at_the_first_look_on_a_clear_regression(tmp_path):
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"q{i}", "prompt": "capital of France?", "reference": "Paris"}) for i in range(200)))
    spec = write_spec(tmp_path, baseline="serving", thresholds=[])
    with start_fake_engine(model="new", reply="Lyon") as candidate, start_fake_engine(model="old", reply="Paris") as serving:
        process, message = shoal_eval(
            tmp_path, "--spec", str(spec), "--dataset", str(data), "--sequential",
            "--endpoint", candidate.base_url, "--model", "new",
            "--baseline-endpoint", serving.base_url, "--baseline-model", "old",
        )
        answered = (candidate.stats()["requests"], serving.stats()["requests"])
    assert process.returncode == 1, process.stderr
    assert message["items"] == 50
    assert message["message"].endswith(
        "Sequential: decided at look 1 of 4 after 50 of 200 items (paired interval at 99.9%)."
    )
    assert message["message"].startswith("exact_match regressed against the serving checkpoint: difference -1.000, 99.9% interval")
    # Only the first look's items were sent to either endpoint.
    assert answered == (50, 50)
    assert "difference 99.9% interval" in process.stdout


def test_sequential_mode_with_equal_answers_uses_every_item_and_passes(tmp_path, dataset_file):
    spec = write_spec(tmp_path, baseline="serving", thresholds=[])
    with start_fake_engine(model="new", reply="Paris") as candidate, start_fake_engine(model="old", reply="Paris") as serving:
        process, message = shoal_eval(
            tmp_path, "--spec", str(spec), "--dataset", str(dataset_file), "--sequential",
            "--endpoint", candidate.base_url, "--model", "new",
            "--baseline-endpoint", serving.base_url, "--baseline-model", "old",
        )
    assert process.returncode == 0, process.stderr
    assert message["items"] == 40
    assert message["message"].endswith("Sequential: decided at look 4 of 4 after 40 of 40 items (paired interval at 95.8%).")


def test_sequential_mode_needs_the_serving_baseline(tmp_path, dataset_file):
    process, message = shoal_eval(
        tmp_path, "--spec", str(write_spec(tmp_path)), "--dataset", str(dataset_file), "--sequential",
        "--endpoint", "http://127.0.0.1:9/v1", "--model", "m",
    )
    assert process.returncode == 2
    assert message["message"] == "--sequential compares with the serving checkpoint: it needs spec.baseline serving"


def test_baseline_requests_are_pinned_to_the_serving_tiers_own_engine_and_the_spec_picks_the_rule(tmp_path, dataset_file):
    from shoal.evaluate.commands import add_arguments, load_settings
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    spec = write_spec(tmp_path, baseline="serving", regressionRule="nonInferiority")
    args = parser.parse_args([
        "--spec", str(spec), "--dataset", str(dataset_file), "--endpoint", "http://127.0.0.1:1/v1", "--model", "m",
        "--baseline-endpoint", "http://small.llm.svc/v1", "--baseline-model", "m",
    ])
    settings = load_settings(args, {})
    assert settings.baseline.headers() == {"x-shoal-hop": "1"}
    assert settings.candidate.headers() == {}
    assert settings.regression_rule == "nonInferiority"
    override = parser.parse_args([*map(str, ["--spec", spec, "--dataset", dataset_file, "--endpoint", "http://127.0.0.1:1/v1", "--model", "m",
                                               "--baseline-endpoint", "http://x/v1", "--baseline-model", "m", "--regression-rule", "provenRegression"])])
    assert load_settings(override, {}).regression_rule == "provenRegression"


def test_candidate_model_evaluates_an_adapter_on_the_started_engine_and_needs_one(tmp_path, dataset_file):
    from shoal.evaluate.commands import EvalError, add_arguments, engine_argv, load_settings
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    spec = write_spec(tmp_path)
    args = parser.parse_args([
        "--spec", str(spec), "--dataset", str(dataset_file), "--serve-checkpoint", "hf://acme/base", "--model", "base",
        "--candidate-model", "refunds", "--engine-arg=--enable-lora", "--engine-arg=--lora-modules", "--engine-arg=refunds=/a/v2",
    ])
    settings = load_settings(args, {})
    # The engine serves the base under its name; the adapter is what gets requested.
    assert (settings.served_model_name, settings.candidate_model) == ("base", "refunds")
    argv = engine_argv(settings, 9000)
    assert argv[argv.index("--served-model-name") + 1] == "base"
    assert argv[-3:] == ["--enable-lora", "--lora-modules", "refunds=/a/v2"]
    with pytest.raises(EvalError, match="--candidate-model names a model of the engine started by --serve-checkpoint"):
        load_settings(parser.parse_args(["--spec", str(spec), "--dataset", str(dataset_file), "--endpoint", "http://x/v1",
                                         "--model", "m", "--candidate-model", "refunds"]), {})
