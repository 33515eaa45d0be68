"""`shoal eval` against real vLLM: the base model passes the easy-questions bar; a LoRA
adapter that answers everything "ALPHA." fails it and regresses against the base model
(the serving version) item by item, as an adapter candidate is judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from shoal.api.modeltier import EvaluationRecord
from shoal.api.outcomes import split_message

from .conftest import engine_models

DATASET = Path(__file__).resolve().parents[1] / "evaluate" / "data" / "easy-questions.jsonl"
ITEMS = 39


def spec_file(tmp_path: Path, **overrides) -> Path:
    spec = {
        "dataset": {"configMapRef": {"name": "easy-questions", "key": "items.jsonl"}},
        "scorers": [{"type": "contains"}],
        "thresholds": [{"metric": "contains", "min": 0.75}],
        "concurrency": 4,
        "maxTokens": 32,
        "timeoutSeconds": 900,
        **overrides,
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def shoal_eval(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    termination = tmp_path / "termination-log"
    process = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "eval", "--dataset", str(DATASET), "--termination-log", str(termination), *args],
        capture_output=True, text=True, timeout=900,
    )
    return process, json.loads(termination.read_text())


def test_shoal_eval_passes_the_base_model_served_by_vllm(tmp_path, vllm_engine):
    process, message = shoal_eval(
        tmp_path, "--spec", str(spec_file(tmp_path)), "--endpoint", vllm_engine.base_url, "--model", "smollm2",
        "--checkpoint", "pvc://test-models/smollm2-135m-instruct",
    )
    assert process.returncode == 0, process.stdout + process.stderr
    record = EvaluationRecord.model_validate_json(split_message(json.dumps(message))[0])
    assert (record.verdict, record.items, record.checkpoint) == ("Passed", ITEMS, "pvc://test-models/smollm2-135m-instruct")
    contains = next(m for m in record.metrics if m.name == "contains")
    assert contains.lower >= 0.75


def test_shoal_eval_blocks_an_adapter_that_regresses_against_the_base_model(tmp_path, vllm_engine):
    path = f"{vllm_engine.assets}/adapters/alpha"
    loaded = httpx.post(f"{vllm_engine.base_url}/load_lora_adapter", json={"lora_name": "eval-candidate", "lora_path": path}, timeout=120)
    assert loaded.status_code == 200, loaded.text
    try:
        process, message = shoal_eval(
            tmp_path, "--spec", str(spec_file(tmp_path, baseline="serving")),
            "--endpoint", vllm_engine.base_url, "--model", "eval-candidate",
            "--baseline-endpoint", vllm_engine.base_url, "--baseline-model", "smollm2",
            "--checkpoint", "pvc://test-models/adapters/alpha",
        )
    finally:
        httpx.post(f"{vllm_engine.base_url}/unload_lora_adapter", json={"lora_name": "eval-candidate"}, timeout=60)
    assert process.returncode == 1, process.stdout + process.stderr
    record = EvaluationRecord.model_validate_json(split_message(json.dumps(message))[0])
    assert record.verdict == "Failed"
    contains = next(m for m in record.metrics if m.name == "contains")
    assert contains.value == 0.0
    assert contains.baseline >= 0.75
    assert contains.delta_upper < -0.5
    assert "eval-candidate" not in engine_models(vllm_engine)
