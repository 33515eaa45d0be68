import json
import sys

import pytest

from shoal.api.modeltier import EvaluationRecord, MetricResult, ThresholdSpec
from shoal.api.outcomes import MAX_ITEMS, ItemOutcomes, split_message
from shoal.evaluate import engine, report


@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [
        (
            "hf://acme/support-7b@ckpt-0043",
            ["vllm", "serve", "acme/support-7b", "--revision", "ckpt-0043", "--served-model-name", "support",
             "--host", "127.0.0.1", "--port", "8000", "--max-model-len", "4096"],
        ),
        (
            "s3://models/support/ckpt-0043",
            ["vllm", "serve", "s3://models/support/ckpt-0043", "--load-format", "runai_streamer", "--served-model-name",
             "support", "--host", "127.0.0.1", "--port", "8000", "--max-model-len", "4096"],
        ),
        (
            "pvc://weights/support/ckpt-0043",
            ["vllm", "serve", "/mnt/models/weights/support/ckpt-0043", "--served-model-name", "support",
             "--host", "127.0.0.1", "--port", "8000", "--max-model-len", "4096"],
        ),
    ],
)
def test_vllm_command_for_each_kind_of_checkpoint_uri(checkpoint, expected):
    argv = engine.vllm_command(checkpoint, served_model_name="support", port=8000, extra_args=["--max-model-len", "4096"])
    assert argv == expected


def test_an_unknown_checkpoint_scheme_is_refused():
    with pytest.raises(ValueError, match="not a checkpoint URI"):
        engine.vllm_command("ftp://x/y", served_model_name="m", port=8000)


def test_an_engine_that_never_becomes_ready_fails_at_the_deadline_with_its_log(tmp_path):
    log = tmp_path / "engine.log"
    argv = [sys.executable, "-c", "import time; print('loading weights', flush=True); time.sleep(60)"]
    process = engine.EngineProcess(argv, base_url="http://127.0.0.1:9/v1", ready_timeout_seconds=1.0, log_path=log)
    with pytest.raises(engine.EngineFailed, match=r"not ready within 1 s \(last seen: ConnectError\)") as caught:
        with process:
            pass
    assert "loading weights" in str(caught.value)
    # The process group was stopped on the way out (SIGTERM: exit code -15).
    assert process.process is not None and process.process.returncode == -15


def record(**overrides):
    base = dict(
        checkpoint="s3://models/ckpt-0043",
        verdict="Failed",
        dataset_digest="sha256:" + "0" * 64,
        items=200,
        metrics=[MetricResult(name="exact_match", value=0.123456789, lower=0.1, upper=0.15, baseline=0.2, delta_lower=-0.1, delta_upper=-0.05)],
        thresholds=[ThresholdSpec(metric="exact_match", min=0.5)],
        message="exact_match is too low.",
    )
    base.update(overrides)
    return EvaluationRecord(**base)


def test_termination_message_is_compact_camel_case_json_the_api_model_reads_back():
    text = report.termination_message(record())
    assert json.loads(text) == {
        "checkpoint": "s3://models/ckpt-0043",
        "verdict": "Failed",
        "datasetDigest": "sha256:" + "0" * 64,
        "items": 200,
        "metrics": [{"name": "exact_match", "value": 0.1235, "lower": 0.1, "upper": 0.15, "baseline": 0.2, "deltaLower": -0.1, "deltaUpper": -0.05}],
        "thresholds": [{"metric": "exact_match", "min": 0.5}],
        "message": "exact_match is too low.",
    }
    assert " " not in text.replace("exact_match is too low.", "")
    assert EvaluationRecord.model_validate_json(text).verdict == "Failed"


def test_an_oversized_termination_message_is_cut_to_4096_bytes_and_still_parses():
    metrics = [MetricResult(name=f"metric_{i}", value=0.5, lower=0.4, upper=0.6) for i in range(16)]
    big = record(metrics=metrics, thresholds=[ThresholdSpec(metric=f"metric_{i}", min=0.5) for i in range(16)], message="x" * 5000)
    text = report.termination_message(big)
    assert len(text.encode()) <= 4096
    parsed = EvaluationRecord.model_validate_json(text)
    assert len(parsed.metrics) == 16
    assert parsed.thresholds == []
    assert parsed.message.endswith("...")


def test_the_report_table_shows_each_interval_and_the_paired_difference():
    table = report.render_table(record().metrics, record().thresholds, 0.95)
    assert table.splitlines()[0].split("  ")[0:1] == ["metric"]
    assert "95% interval" in table
    assert "[0.100, 0.150]" in table
    assert "[-0.100, -0.050]" in table
    assert "min 0.5" in table


def test_outcomes_of_the_largest_described_dataset_with_a_baseline_fit_beside_a_typical_record():
    # 5,000 items: only the first 2,048 are described; with a baseline that is four
    # bitmaps of 256 bytes, and the message stays under 4096 bytes with the record whole.
    candidate = [i % 3 != 0 for i in range(5000)]
    baseline = [None if i % 7 == 0 else i % 2 == 0 for i in range(5000)]
    outcomes = ItemOutcomes.encode(candidate, baseline)
    text = report.termination_message(record(message="x" * 300), outcomes=outcomes)
    assert len(text.encode()) <= 4096
    record_json, read = split_message(text)
    assert EvaluationRecord.model_validate_json(record_json) == EvaluationRecord.model_validate_json(report.termination_message(record(message="x" * 300)))
    assert read is not None and read.items == MAX_ITEMS == 2048
    assert read.candidate() == candidate[:2048]
    assert read.baseline() == baseline[:2048]


def test_outcomes_are_left_out_before_anything_of_the_record_is_cut():
    outcomes = ItemOutcomes.encode([True] * 2048, [False] * 2048)
    long_message = "y" * 2800
    text = report.termination_message(record(message=long_message), outcomes=outcomes)
    assert "outcomes" not in json.loads(text)
    assert json.loads(text)["message"] == long_message


def test_a_job_whose_message_carries_outcomes_gives_the_same_status_record_as_one_without():
    from datetime import datetime, timezone

    from shoal.plan.rollout import EvalJobObservation, verdict_from_job

    now = datetime(2026, 11, 29, tzinfo=timezone.utc)
    plain = report.termination_message(record(verdict="Passed"))
    with_outcomes = report.termination_message(record(verdict="Passed"), outcomes=ItemOutcomes.encode([True, False, None]))
    assert "outcomes" in json.loads(with_outcomes)
    verdicts = [
        verdict_from_job(EvalJobObservation(name="small-eval-1", checkpoint="s3://models/ckpt-0043", state="Succeeded", exit_code=0, termination_message=m), 600, now)
        for m in (plain, with_outcomes)
    ]
    assert verdicts[0] == verdicts[1]
    assert verdicts[1].metrics[0].name == "exact_match"
    assert "outcomes" not in json.dumps(verdicts[1].to_wire())
