"""The eval-gated rollout state machine: (tier spec + status, observed Jobs and Deployment, now) -> plan."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from shoal.api.modeltier import EvaluationRecord, MetricResult, ModelTier
from shoal.api.naming import eval_job_name
from shoal.plan.rollout import EvalJobObservation, RolloutObservation, plan_rollout, verdict_from_job

NOW = datetime(2026, 11, 22, 7, 0, tzinfo=timezone.utc)
A = "s3://models/support/ckpt-0042"
B = "s3://models/support/ckpt-0043"
CC = "s3://models/support/ckpt-0044"
JOB_B = eval_job_name("support", B)
JOB_C = eval_job_name("support", CC)
EVALUATION = {
    "dataset": {"configMapRef": {"name": "support-eval", "key": "items.jsonl"}},
    "scorers": [{"type": "exactMatch"}],
    "thresholds": [{"metric": "exact_match", "min": 0.8}],
    "timeoutSeconds": 600,
}


def tier(checkpoint: str, *, evaluation: bool = True, first: str = "serve", **status: Any) -> ModelTier:
    rollout: dict[str, Any] = {"firstCheckpoint": first}
    if evaluation:
        rollout["evaluation"] = EVALUATION
    return ModelTier.model_validate({
        "metadata": {"name": "support", "namespace": "llm", "uid": "u-1", "generation": 4},
        "spec": {"model": {"name": "support", "source": "hf://acme/base", "checkpoint": checkpoint}, "rollout": rollout},
        "status": status,
    })


def running(checkpoint: str = B, job: str = JOB_B) -> dict[str, Any]:
    return {"checkpoint": checkpoint, "verdict": "Running", "jobName": job, "startTime": (NOW - timedelta(minutes=5)).isoformat()}


def recorded(verdict: str, checkpoint: str = B) -> dict[str, Any]:
    return {"checkpoint": checkpoint, "verdict": verdict, "jobName": JOB_B, "message": f"{verdict} for test."}


def job(state: str, *, checkpoint: str = B, name: str = JOB_B, exit_code: int | None = None, message: str | None = None,
        failed_reason: str | None = None, started_minutes_ago: float = 5) -> EvalJobObservation:
    return EvalJobObservation(
        name=name, checkpoint=checkpoint, state=state, exit_code=exit_code, termination_message=message,
        failed_reason=failed_reason, start_time=NOW - timedelta(minutes=started_minutes_ago),
        completion_time=None if state == "Running" else NOW - timedelta(minutes=1),
    )


PASSED_MESSAGE = json.dumps({
    "checkpoint": B, "verdict": "Passed", "items": 200, "datasetDigest": "sha256:abc",
    "metrics": [{"name": "exact_match", "value": 0.9, "lower": 0.85, "upper": 0.94}],
    "message": "Passed every threshold.",
})
FAILED_MESSAGE = PASSED_MESSAGE.replace('"Passed"', '"Failed"').replace("Passed every threshold.", "exact_match too low.")

# (name, tier, observation, step, deploy, create_job_for, delete_jobs, serving, candidate, verdict, Evaluated (status, reason))
CASES = [
    ("steady: the spec asks for what serves",
     tier(A, servingCheckpoint=A), RolloutObservation(deployment_checkpoint=A, deployment_complete=True),
     "Serving", A, None, (), A, None, None, ("True", "NotRequired")),
    ("a new checkpoint starts its evaluation while A keeps serving",
     tier(B, servingCheckpoint=A), RolloutObservation(deployment_checkpoint=A, deployment_complete=True),
     "Evaluating", A, B, (), A, B, "Running", ("Unknown", "Evaluating")),
    ("restart while evaluating: the same Job is kept, no second one",
     tier(B, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=running()),
     RolloutObservation(jobs=(job("Running"),), deployment_checkpoint=A, deployment_complete=True),
     "Evaluating", A, B, (), A, B, "Running", ("Unknown", "Evaluating")),
    ("the Job vanished while evaluating: it is created again",
     tier(B, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=running()),
     RolloutObservation(deployment_checkpoint=A, deployment_complete=True),
     "Evaluating", A, B, (), A, B, "Running", ("Unknown", "Evaluating")),
    ("exit 0: passed, the Deployment moves to B, serving is still A",
     tier(B, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=running()),
     RolloutObservation(jobs=(job("Succeeded", exit_code=0, message=PASSED_MESSAGE),), deployment_checkpoint=A, deployment_complete=True),
     "RollingOut", B, None, (), A, B, "Passed", ("True", "Passed")),
    ("rolling out B but not complete: serving stays A",
     tier(B, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=recorded("Passed")),
     RolloutObservation(jobs=(job("Succeeded", exit_code=0),), deployment_checkpoint=B, deployment_complete=False),
     "RollingOut", B, None, (), A, B, "Passed", ("True", "Passed")),
    ("the rollout to B completed: B serves, its Job is cleaned up",
     tier(B, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=recorded("Passed")),
     RolloutObservation(jobs=(job("Succeeded", exit_code=0),), deployment_checkpoint=B, deployment_complete=True),
     "Serving", B, None, (JOB_B,), B, None, "Passed", ("True", "Passed")),
    ("after promotion: steady at B, the verdict stays recorded",
     tier(B, servingCheckpoint=B, lastEvaluation=recorded("Passed")),
     RolloutObservation(deployment_checkpoint=B, deployment_complete=True),
     "Serving", B, None, (), B, None, "Passed", ("True", "Passed")),
    ("exit 1: failed, B blocked, A keeps serving",
     tier(B, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=running()),
     RolloutObservation(jobs=(job("Failed", exit_code=1, message=FAILED_MESSAGE, failed_reason="BackoffLimitExceeded"),),
                        deployment_checkpoint=A, deployment_complete=True),
     "Blocked", A, None, (), A, B, "Failed", ("False", "Failed")),
    ("restart while blocked: the recorded verdict is not recomputed and no Job is created",
     tier(B, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=recorded("Failed")),
     RolloutObservation(deployment_checkpoint=A, deployment_complete=True),
     "Blocked", A, None, (), A, B, "Failed", ("False", "Failed")),
    ("deadline exceeded: timed out, B blocked",
     tier(B, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=running()),
     RolloutObservation(jobs=(job("Failed", failed_reason="DeadlineExceeded"),), deployment_checkpoint=A, deployment_complete=True),
     "Blocked", A, None, (), A, B, "TimedOut", ("False", "TimedOut")),
    ("a Job still running long past the timeout: timed out",
     tier(B, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=running()),
     RolloutObservation(jobs=(job("Running", started_minutes_ago=13),), deployment_checkpoint=A, deployment_complete=True),
     "Blocked", A, None, (), A, B, "TimedOut", ("False", "TimedOut")),
    ("exit 2 with a JobError message: JobError, B blocked",
     tier(B, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=running()),
     RolloutObservation(jobs=(job("Failed", exit_code=2, message=json.dumps({"checkpoint": B, "verdict": "JobError", "message": "dataset: line 3: not JSON"})),),
                        deployment_checkpoint=A, deployment_complete=True),
     "Blocked", A, None, (), A, B, "JobError", ("False", "JobError")),
    ("a newer C supersedes B while evaluating: B's Job is deleted, C is evaluated",
     tier(CC, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=running()),
     RolloutObservation(jobs=(job("Running"),), deployment_checkpoint=A, deployment_complete=True),
     "Evaluating", A, CC, (JOB_B,), A, CC, "Running", ("Unknown", "Evaluating")),
    ("C supersedes a blocked B",
     tier(CC, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=recorded("Failed")),
     RolloutObservation(jobs=(job("Failed", exit_code=1),), deployment_checkpoint=A, deployment_complete=True),
     "Evaluating", A, CC, (JOB_B,), A, CC, "Running", ("Unknown", "Evaluating")),
    ("C supersedes B mid-rollout: the Deployment goes back to A until C passes",
     tier(CC, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=recorded("Passed")),
     RolloutObservation(jobs=(job("Succeeded", exit_code=0),), deployment_checkpoint=B, deployment_complete=False),
     "Evaluating", A, CC, (JOB_B,), A, CC, "Running", ("Unknown", "Evaluating")),
    ("reverting the spec to A withdraws the candidate B",
     tier(A, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=running()),
     RolloutObservation(jobs=(job("Running"),), deployment_checkpoint=A, deployment_complete=True),
     "Serving", A, None, (JOB_B,), A, None, "Running", ("True", "NotRequired")),
    ("no evaluation configured: B rolls out directly",
     tier(B, evaluation=False, servingCheckpoint=A),
     RolloutObservation(deployment_checkpoint=A, deployment_complete=True),
     "RollingOut", B, None, (), A, B, None, ("True", "NotRequired")),
    ("first checkpoint with firstCheckpoint serve: deployed without evaluation",
     tier(A), RolloutObservation(),
     "RollingOut", A, None, (), None, A, None, ("True", "NotRequired")),
    ("first checkpoint completes: it serves",
     tier(A), RolloutObservation(deployment_checkpoint=A, deployment_complete=True),
     "Serving", A, None, (), A, None, None, ("True", "NotRequired")),
    ("first checkpoint with firstCheckpoint evaluate: nothing deploys until it passes",
     tier(A, first="evaluate"), RolloutObservation(),
     "Evaluating", None, A, (), None, A, "Running", ("Unknown", "Evaluating")),
]


@pytest.mark.parametrize(
    ("t", "observed", "step", "deploy", "create", "delete", "serving", "candidate", "verdict", "evaluated"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_rollout_step(t, observed, step, deploy, create, delete, serving, candidate, verdict, evaluated):
    plan = plan_rollout(t, observed, NOW)
    assert plan.step == step
    assert plan.deploy_checkpoint == deploy
    assert plan.create_job_for == create
    assert plan.delete_jobs == delete
    assert (plan.serving_checkpoint, plan.candidate_checkpoint) == (serving, candidate)
    assert (plan.last_evaluation.verdict if plan.last_evaluation else None) == verdict
    assert (plan.evaluated.status, plan.evaluated.reason) == evaluated


def test_a_new_candidate_is_recorded_as_running_with_its_job_name_and_an_event():
    plan = plan_rollout(tier(B, servingCheckpoint=A), RolloutObservation(deployment_checkpoint=A, deployment_complete=True), NOW)
    assert plan.last_evaluation == EvaluationRecord(checkpoint=B, verdict="Running", job_name=JOB_B, start_time=NOW)
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "Evaluating")]
    assert plan.progressing is not None and (plan.progressing.status, plan.progressing.reason) == ("True", "Evaluating")
    assert plan.status_fields() == {
        "servingCheckpoint": A,
        "candidateCheckpoint": B,
        "lastEvaluation": {
            "checkpoint": B, "verdict": "Running", "jobName": JOB_B, "metrics": [], "thresholds": [],
            "startTime": "2026-11-22T07:00:00Z",
        },
    }


def test_a_failed_evaluation_keeps_the_scores_and_says_who_keeps_serving():
    t = tier(B, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=running())
    observed = RolloutObservation(jobs=(job("Failed", exit_code=1, message=FAILED_MESSAGE),), deployment_checkpoint=A, deployment_complete=True)
    plan = plan_rollout(t, observed, NOW)
    record = plan.last_evaluation
    assert record.metrics == [MetricResult(name="exact_match", value=0.9, lower=0.85, upper=0.94)]
    assert (record.job_name, record.items, record.dataset_digest) == (JOB_B, 200, "sha256:abc")
    assert plan.evaluated.message == (
        f"{B} is blocked: its evaluation ended Failed. exact_match too low. {A} keeps serving. "
        "Set spec.model.checkpoint to a new checkpoint (or back to the serving one) to continue."
    )
    assert plan.progressing is not None and (plan.progressing.status, plan.progressing.reason) == ("False", "Failed")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "Failed")]
    assert plan.events[0].message == f"Evaluation of {B}: Failed. exact_match 0.900 [0.850, 0.940]. exact_match too low."


def test_promotion_emits_an_event_once_the_rollout_completes():
    t = tier(B, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=recorded("Passed"))
    plan = plan_rollout(t, RolloutObservation(deployment_checkpoint=B, deployment_complete=True), NOW)
    assert [(e.reason, e.message) for e in plan.events] == [("Promoted", f"{B} now serves traffic (was {A}).")]


def test_superseding_emits_an_event_naming_both_checkpoints():
    t = tier(CC, servingCheckpoint=A, candidateCheckpoint=B, lastEvaluation=running())
    plan = plan_rollout(t, RolloutObservation(jobs=(job("Running"),)), NOW)
    assert [e.reason for e in plan.events] == ["Superseded", "Evaluating"]
    assert plan.events[0].message == f"Candidate {B} was replaced by {CC}; its evaluation is cancelled."
    assert plan.last_evaluation.job_name == JOB_C


@pytest.mark.parametrize(
    ("state", "exit_code", "message", "failed_reason", "verdict"),
    [
        ("Succeeded", None, None, None, "Passed"),
        ("Succeeded", 0, "not json", None, "Passed"),
        ("Failed", 1, None, "BackoffLimitExceeded", "Failed"),
        ("Failed", 2, json.dumps({"checkpoint": B, "verdict": "TimedOut"}), "BackoffLimitExceeded", "TimedOut"),
        ("Failed", 2, None, "BackoffLimitExceeded", "JobError"),
        ("Failed", 137, None, "BackoffLimitExceeded", "JobError"),
        ("Failed", None, None, "DeadlineExceeded", "TimedOut"),
        # The exit code is the contract: a message claiming Passed on exit 1 is still Failed.
        ("Failed", 1, PASSED_MESSAGE, "BackoffLimitExceeded", "Failed"),
    ],
)
def test_verdict_from_job(state, exit_code, message, failed_reason, verdict):
    observed = job(state, exit_code=exit_code, message=message, failed_reason=failed_reason)
    record = verdict_from_job(observed, 600, NOW)
    assert record is not None
    assert record.verdict == verdict
    assert record.job_name == JOB_B
    assert record.finish_time == NOW - timedelta(minutes=1)


def test_a_running_job_within_its_timeout_has_no_verdict():
    assert verdict_from_job(job("Running", started_minutes_ago=11), 600, NOW) is None
