"""`shoal eval` against a real model: SmolLM2-135M-Instruct on CPU (llama-cpp-python).

A sound configuration (the GGUF's own chat template, temperature 0) must pass; degraded
candidates (a wrong chat template, temperature 2.0) must fail, both on the absolute
threshold and in the paired comparison with the sound configuration as the serving
checkpoint. The program runs as a subprocess, as in the Job. The model and server are
installed by scripts/install-test-deps.sh; without them these tests fail (they are not
skipped), naming the script.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.api.modeltier import EvaluationRecord
from shoal.api.outcomes import split_message
from shoal.testing.llama_server import llama_server, llama_server_command, require_llama_server

DATASET = Path(__file__).parent / "data" / "easy-questions.jsonl"
ITEMS = 39


@pytest.fixture(scope="module")
def sound():
    with llama_server(alias="sound") as server:
        yield server


@pytest.fixture(scope="module")
def wrong_template():
    # ChatML is SmolLM2's template; Llama 2's [INST] format is a broken prompt template.
    with llama_server(alias="broken", chat_format="llama-2") as server:
        yield server


def spec_file(tmp_path: Path, **overrides) -> Path:
    spec = {
        "dataset": {"configMapRef": {"name": "easy-questions", "key": "items.jsonl"}},
        "scorers": [{"type": "contains"}],
        "thresholds": [{"metric": "contains", "min": 0.75}],
        "concurrency": 2,
        "maxTokens": 64,
        "timeoutSeconds": 600,
    }
    spec.update(overrides)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def shoal_eval(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    termination = tmp_path / "termination-log"
    process = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "eval", "--dataset", str(DATASET), "--termination-log", str(termination), *args],
        capture_output=True, text=True, timeout=600,
    )
    return process, json.loads(termination.read_text())


def metric(message: dict, name: str) -> dict:
    return next(m for m in message["metrics"] if m["name"] == name)


def test_the_sound_configuration_passes_and_the_report_shows_the_intervals(tmp_path, sound):
    process, message = shoal_eval(
        tmp_path, "--spec", str(spec_file(tmp_path)), "--endpoint", sound.base_url, "--model", sound.model,
        "--checkpoint", "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert message["verdict"] == "Passed"
    assert message["items"] == ITEMS
    contains = metric(message, "contains")
    assert contains["value"] >= 0.9
    assert 0.75 <= contains["lower"] < contains["value"] <= contains["upper"] <= 1.0
    record_json, outcomes = split_message(json.dumps(message))
    assert EvaluationRecord.model_validate_json(record_json).checkpoint == "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
    # The per-item outcomes ride beside the record: one per dataset item, no baseline here.
    assert outcomes is not None and outcomes.items == ITEMS
    assert sum(bool(p) for p in outcomes.candidate()) == round(contains["value"] * ITEMS)
    table_row = next(line for line in process.stdout.splitlines() if line.startswith("contains "))
    assert f"[{contains['lower']:.3f}, {contains['upper']:.3f}]" in table_row
    assert "95% interval" in process.stdout
    assert "latency_p95_seconds" in process.stdout


def test_a_broken_chat_template_fails_the_threshold(tmp_path, wrong_template):
    process, message = shoal_eval(
        tmp_path, "--spec", str(spec_file(tmp_path)), "--endpoint", wrong_template.base_url, "--model", wrong_template.model,
    )
    assert process.returncode == 1, process.stdout + process.stderr
    assert message["verdict"] == "Failed"
    contains = metric(message, "contains")
    assert contains["upper"] < 0.75
    assert message["message"].startswith(f"contains {contains['value']:.3f} has a 95% lower bound of")
    assert "verdict: Failed" in process.stdout


def test_high_temperature_sampling_fails_the_threshold(tmp_path, sound):
    process, message = shoal_eval(
        tmp_path, "--spec", str(spec_file(tmp_path)), "--endpoint", sound.base_url, "--model", sound.model,
        "--temperature", "2.0", "--seed", "1",
    )
    assert process.returncode == 1, process.stdout + process.stderr
    assert message["verdict"] == "Failed"
    assert metric(message, "contains")["lower"] < 0.75


def test_a_broken_template_regresses_against_the_serving_configuration(tmp_path, sound, wrong_template):
    # No absolute threshold: only the paired comparison on the same 39 items can block it.
    spec = spec_file(tmp_path, thresholds=[], baseline="serving")
    process, message = shoal_eval(
        tmp_path, "--spec", str(spec), "--endpoint", wrong_template.base_url, "--model", wrong_template.model,
        "--baseline-endpoint", sound.base_url, "--baseline-model", sound.model,
    )
    assert process.returncode == 1, process.stdout + process.stderr
    contains = metric(message, "contains")
    assert contains["baseline"] >= 0.9
    assert contains["deltaUpper"] < -0.3
    assert message["message"].startswith("contains regressed against the serving checkpoint")


def test_an_identical_candidate_is_not_blocked_by_the_paired_comparison(tmp_path, sound):
    spec = spec_file(tmp_path, baseline="serving")
    process, message = shoal_eval(
        tmp_path, "--spec", str(spec), "--endpoint", sound.base_url, "--model", sound.model,
        "--baseline-endpoint", sound.base_url, "--baseline-model", sound.model,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    contains = metric(message, "contains")
    assert contains["value"] == contains["baseline"]
    assert contains["deltaLower"] < 0.0 < contains["deltaUpper"]


def test_serve_checkpoint_starts_the_real_model_in_the_pod_and_passes(tmp_path):
    # The Job's in-pod path: the launcher starts the engine, waits for it and stops it;
    # llama-cpp-python's server stands in for `vllm serve`.
    model = require_llama_server()
    command = llama_server_command(model=model, port=0, alias="{model}")
    command[command.index("--port") + 1] = "{port}"
    process, message = shoal_eval(
        tmp_path, "--spec", str(spec_file(tmp_path)), "--serve-checkpoint", "pvc://weights/smollm2-135m",
        "--model", "smollm2", "--engine-command", json.dumps(command), "--engine-ready-timeout-seconds", "180",
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert message["checkpoint"] == "pvc://weights/smollm2-135m"
    assert message["verdict"] == "Passed"
