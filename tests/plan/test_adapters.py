"""The eval-gated adapter promotion: (tier spec + status.adapters, observed adapter Jobs, base, now) -> plan."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from shoal.api.modeltier import ModelTier
from shoal.api.naming import ADAPTER_ANNOTATION, ADAPTER_SOURCE_ANNOTATION, adapter_eval_job_name
from shoal.plan.adapters import plan_adapters
from shoal.plan.rollout import EvalJobObservation, eval_job_observation

NOW = datetime(2026, 11, 22, 7, 0, tzinfo=timezone.utc)
BASE = "hf://acme/base"
V1, V2, V3 = "pvc://loras/refunds/v1", "pvc://loras/refunds/v2", "pvc://loras/refunds/v3"
JOB_V2 = adapter_eval_job_name("support", "refunds", V2, BASE)
JOB_V3 = adapter_eval_job_name("support", "refunds", V3, BASE)
EVALUATION = {
    "dataset": {"configMapRef": {"name": "refunds-eval", "key": "items.jsonl"}},
    "scorers": [{"type": "exactMatch"}],
    "thresholds": [{"metric": "exact_match", "min": 0.8}],
    "timeoutSeconds": 600,
}
PASSED = json.dumps({
    "checkpoint": V2, "verdict": "Passed", "items": 200,
    "metrics": [{"name": "exact_match", "value": 0.9, "lower": 0.85, "upper": 0.94}], "message": "Passed every threshold.",
})
FAILED = PASSED.replace('"Passed"', '"Failed"').replace("Passed every threshold.", "exact_match too low.")


def tier(source: str = V2, *, own: bool = True, tier_evaluation: bool = False, adapter_status: dict[str, Any] | None = None,
         more: list[dict[str, Any]] | None = None) -> ModelTier:
    adapter: dict[str, Any] = {"name": "refunds", "source": source}
    if own:
        adapter["rollout"] = {"evaluation": EVALUATION}
    spec: dict[str, Any] = {"model": {"name": "support", "source": BASE}, "adapters": [adapter, *(more or [])]}
    if tier_evaluation:
        spec["rollout"] = {"evaluation": EVALUATION}
    status = {"adapters": [{"name": "refunds", **adapter_status}]} if adapter_status is not None else {}
    return ModelTier.model_validate({"metadata": {"name": "support", "namespace": "llm", "uid": "u-1", "generation": 4}, "spec": spec, "status": status})


def job(state: str, *, source: str = V2, name: str = JOB_V2, adapter: str = "refunds", exit_code: int | None = None,
        message: str | None = None, failed_reason: str | None = None) -> EvalJobObservation:
    return EvalJobObservation(
        name=name, checkpoint=source, adapter=adapter, state=state, exit_code=exit_code, termination_message=message,
        failed_reason=failed_reason, start_time=NOW - timedelta(minutes=5),
        completion_time=None if state == "Running" else NOW - timedelta(minutes=1),
    )


def running(source: str = V2, name: str = JOB_V2) -> dict[str, Any]:
    return {"checkpoint": source, "verdict": "Running", "jobName": name, "startTime": (NOW - timedelta(minutes=5)).isoformat(), "baseCheckpoint": BASE}


def recorded(verdict: str, source: str = V2) -> dict[str, Any]:
    return {"checkpoint": source, "verdict": verdict, "jobName": JOB_V2, "message": f"{verdict} for test."}


# (name, tier, jobs, step, serving, candidate, Job that must exist (source, serving baseline) or None, delete, verdict,
#  Ready, Evaluated, event reasons)
CASES = [
    ("steady: the spec names the serving source",
     tier(V1, adapter_status={"servingSource": V1}), (),
     "Serving", V1, None, None, (), None, ("True", "Serving"), ("True", "NotRequired"), []),
    ("a new source starts its evaluation while V1 keeps serving",
     tier(V2, adapter_status={"servingSource": V1}), (),
     "Evaluating", V1, V2, (V2, V1), (), "Running", ("False", "Evaluating"), ("Unknown", "Evaluating"), ["AdapterEvaluating"]),
    ("a brand-new adapter with an evaluation serves nothing until it passes",
     tier(V2), (),
     "Evaluating", None, V2, (V2, None), (), "Running", ("False", "Evaluating"), ("Unknown", "Evaluating"), ["AdapterEvaluating"]),
    ("the tier's evaluation gates an adapter without its own",
     tier(V2, own=False, tier_evaluation=True, adapter_status={"servingSource": V1}), (),
     "Evaluating", V1, V2, (V2, V1), (), "Running", ("False", "Evaluating"), ("Unknown", "Evaluating"), ["AdapterEvaluating"]),
    ("without any evaluation a new source serves at once",
     tier(V2, own=False, adapter_status={"servingSource": V1}), (),
     "Serving", V2, None, None, (), None, ("True", "Serving"), ("True", "NotRequired"), ["AdapterPromoted"]),
    ("restart while evaluating: the same Job must exist (the controller creates it by name only if missing), no second event",
     tier(V2, adapter_status={"servingSource": V1, "candidateSource": V2, "lastEvaluation": running()}), (job("Running"),),
     "Evaluating", V1, V2, (V2, V1), (), "Running", ("False", "Evaluating"), ("Unknown", "Evaluating"), []),
    ("the Job vanished while evaluating: it is created again",
     tier(V2, adapter_status={"servingSource": V1, "candidateSource": V2, "lastEvaluation": running()}), (),
     "Evaluating", V1, V2, (V2, V1), (), "Running", ("False", "Evaluating"), ("Unknown", "Evaluating"), []),
    ("exit 0: the source serves in the same pass; its Job stays until the status says so",
     tier(V2, adapter_status={"servingSource": V1, "candidateSource": V2, "lastEvaluation": running()}),
     (job("Succeeded", exit_code=0, message=PASSED),),
     "Serving", V2, None, None, (), "Passed", ("True", "Serving"), ("True", "Passed"), ["AdapterPromoted"]),
    ("the pass after a promotion deletes the Job and changes nothing else",
     tier(V2, adapter_status={"servingSource": V2, "lastEvaluation": recorded("Passed")}), (job("Succeeded", exit_code=0, message=PASSED),),
     "Serving", V2, None, None, (JOB_V2,), "Passed", ("True", "Serving"), ("True", "Passed"), []),
    ("exit 1: blocked, V1 keeps serving, the Job stays for inspection",
     tier(V2, adapter_status={"servingSource": V1, "candidateSource": V2, "lastEvaluation": running()}),
     (job("Failed", exit_code=1, message=FAILED),),
     "Blocked", V1, V2, None, (), "Failed", ("False", "Failed"), ("False", "Failed"), ["AdapterBlocked"]),
    ("a Job ended by its deadline is TimedOut",
     tier(V2, adapter_status={"servingSource": V1, "candidateSource": V2, "lastEvaluation": running()}),
     (job("Failed", failed_reason="DeadlineExceeded"),),
     "Blocked", V1, V2, None, (), "TimedOut", ("False", "TimedOut"), ("False", "TimedOut"), ["AdapterBlocked"]),
    ("a crash without a verdict is JobError",
     tier(V2, adapter_status={"servingSource": V1, "candidateSource": V2, "lastEvaluation": running()}),
     (job("Failed", exit_code=137),),
     "Blocked", V1, V2, None, (), "JobError", ("False", "JobError"), ("False", "JobError"), ["AdapterBlocked"]),
    ("restart while blocked: the verdict is kept, not recomputed, no second event",
     tier(V2, adapter_status={"servingSource": V1, "candidateSource": V2, "lastEvaluation": recorded("Failed")}), (),
     "Blocked", V1, V2, None, (), "Failed", ("False", "Failed"), ("False", "Failed"), []),
    ("a newer source supersedes the candidate: its Job goes, the new one starts",
     tier(V3, adapter_status={"servingSource": V1, "candidateSource": V2, "lastEvaluation": running()}), (job("Running"),),
     "Evaluating", V1, V3, (V3, V1), (JOB_V2,), "Running", ("False", "Evaluating"), ("Unknown", "Evaluating"),
     ["AdapterSuperseded", "AdapterEvaluating"]),
    ("reverting to the serving source withdraws the candidate and its Job",
     tier(V1, adapter_status={"servingSource": V1, "candidateSource": V2, "lastEvaluation": recorded("Failed")}),
     (job("Failed", exit_code=1, message=FAILED),),
     "Serving", V1, None, None, (JOB_V2,), "Failed", ("True", "Serving"), ("True", "NotRequired"), ["AdapterSuperseded"]),
]


@pytest.mark.parametrize(
    ("name", "the_tier", "jobs", "step", "serving", "candidate", "create", "delete", "verdict", "ready", "evaluated", "events"),
    CASES, ids=[c[0] for c in CASES],
)
def test_adapter_promotion_state_machine(name, the_tier, jobs, step, serving, candidate, create, delete, verdict, ready, evaluated, events):
    plan = plan_adapters(the_tier, jobs, BASE, NOW)
    (decided,) = plan.adapters
    assert decided.step == step
    assert (decided.serving_source, decided.candidate_source) == (serving, candidate)
    assert [(r.source, r.serving_source) for r in plan.create_jobs] == ([create] if create else [])
    assert all(r.base_checkpoint == BASE and r.adapter == "refunds" for r in plan.create_jobs)
    assert plan.delete_jobs == delete
    assert (decided.last_evaluation.verdict if decided.last_evaluation else None) == verdict
    assert (decided.ready.status, decided.ready.reason) == ready
    assert (decided.evaluated.status, decided.evaluated.reason) == evaluated
    assert [e.reason for e in plan.events] == events
    assert plan.serving() == ({"refunds": serving} if serving else {})


def test_a_blocked_adapter_says_why_what_keeps_serving_and_what_to_do():
    plan = plan_adapters(tier(V2, adapter_status={"servingSource": V1, "candidateSource": V2, "lastEvaluation": running()}),
                         (job("Failed", exit_code=1, message=FAILED),), BASE, NOW)
    (decided,) = plan.adapters
    assert decided.ready.message == (
        f"Adapter refunds: {V2} is blocked: its evaluation ended Failed. exact_match too low. {V1} keeps serving. "
        "Set the source of adapter refunds to a new version (or back to the serving one) to continue."
    )
    assert plan.events[0].type == "Warning"
    assert plan.events[0].message == (
        f"Adapter refunds: {V2} is blocked, its evaluation ended Failed. exact_match 0.900 [0.850, 0.940]. exact_match too low."
    )
    tier_level = plan.condition()
    assert tier_level is not None
    assert (tier_level.type, tier_level.status, tier_level.reason) == ("AdaptersReady", "False", "Failed")
    assert tier_level.message == decided.ready.message


def test_the_promotion_event_names_the_old_and_new_source_and_the_scores():
    plan = plan_adapters(tier(V2, adapter_status={"servingSource": V1, "candidateSource": V2, "lastEvaluation": running()}),
                         (job("Succeeded", exit_code=0, message=PASSED),), BASE, NOW)
    assert [(e.type, e.reason, e.message) for e in plan.events] == [
        ("Normal", "AdapterPromoted", f"Adapter refunds now serves {V2} (was {V1}). Its evaluation passed. exact_match 0.900 [0.850, 0.940].")
    ]
    assert plan.adapters[0].last_evaluation is not None
    assert plan.adapters[0].last_evaluation.metrics[0].value == 0.9


def test_without_a_base_checkpoint_the_candidate_waits_and_no_job_is_created():
    plan = plan_adapters(tier(V2, adapter_status={"servingSource": V1}), (), None, NOW)
    (decided,) = plan.adapters
    assert (decided.step, decided.serving_source, decided.candidate_source) == ("Waiting", V1, V2)
    assert (decided.ready.status, decided.ready.reason) == ("False", "WaitingForBaseModel")
    assert plan.create_jobs == ()
    assert plan.serving() == {"refunds": V1}


def test_jobs_of_an_adapter_no_longer_listed_are_deleted_and_other_adapters_are_untouched():
    triage = {"name": "triage", "source": "hf://acme/triage"}
    the_tier = tier(V1, adapter_status={"servingSource": V1}, more=[triage])
    plan = plan_adapters(the_tier, (job("Running", adapter="gone", name="support-lora-gone-12345678"),), BASE, NOW)
    assert plan.delete_jobs == ("support-lora-gone-12345678",)
    # triage has no evaluation: it serves its spec source at once.
    assert plan.serving() == {"refunds": V1, "triage": "hf://acme/triage"}
    assert plan.condition() is not None and plan.condition().status == "True"


def test_status_adapters_keep_transition_times_and_leave_unset_fields_out():
    the_tier = tier(V2, adapter_status={"servingSource": V1, "candidateSource": V2, "lastEvaluation": running()})
    plan = plan_adapters(the_tier, (job("Running"),), BASE, NOW)
    earlier = "2026-11-22T06:00:00Z"
    previous = [{"name": "refunds", "conditions": [
        {"type": "Ready", "status": "False", "reason": "Evaluating", "message": "old", "lastTransitionTime": earlier},
    ]}]
    (entry,) = plan.status_adapters(previous, 4, NOW)
    assert entry["servingSource"] == V1 and entry["candidateSource"] == V2
    assert entry["lastEvaluation"]["verdict"] == "Running"
    ready, evaluated = entry["conditions"]
    assert (ready["type"], ready["lastTransitionTime"], ready["observedGeneration"]) == ("Ready", earlier, 4)
    assert (evaluated["type"], evaluated["lastTransitionTime"]) == ("Evaluated", "2026-11-22T07:00:00Z")
    promoted = plan_adapters(tier(V1, adapter_status={"servingSource": V1}), (), BASE, NOW)
    assert "candidateSource" not in promoted.status_adapters(None, 4, NOW)[0]


def test_an_adapter_job_is_read_as_an_adapter_observation_named_by_its_source():
    body = {
        "metadata": {"name": JOB_V2, "annotations": {ADAPTER_ANNOTATION: "refunds", ADAPTER_SOURCE_ANNOTATION: V2}},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    }
    observed = eval_job_observation(body, [])
    assert (observed.adapter, observed.checkpoint, observed.state) == ("refunds", V2, "Succeeded")


def test_adapter_job_names_are_dns_labels_that_differ_per_adapter_and_source():
    long = adapter_eval_job_name("a" * 40, "Refunds.Team_EU:v2" * 4, V2, BASE)
    assert len(long) <= 63 and long.startswith("a" * 40 + "-lora-")
    assert adapter_eval_job_name("support", "Refunds.EU", V2, BASE).startswith("support-lora-refunds-eu-")
    assert adapter_eval_job_name("support", "refunds", V2, BASE) != adapter_eval_job_name("support", "refunds", V3, BASE)
    assert adapter_eval_job_name("support", "a.b", V2, BASE) != adapter_eval_job_name("support", "a_b", V2, BASE)


def test_an_evaluation_message_without_a_full_stop_ends_as_a_sentence_before_what_follows():
    from shoal.api.modeltier import EvaluationRecord
    from shoal.plan.adapters import _evaluated
    from shoal.plan.conditions import as_sentence

    assert as_sentence("Name or service not known") == "Name or service not known."
    assert as_sentence("exact_match 0.2 is below 0.8. ") == "exact_match 0.2 is below 0.8."
    assert as_sentence("") == ""
    record = EvaluationRecord(checkpoint="hf://acme/refunds-v2", verdict="JobError", message="dataset: cannot fetch it: Name or service not known")
    cond = _evaluated("refunds", record, "hf://acme/refunds-v2", None)
    assert "Name or service not known. refunds serves nothing until a source passes." in cond.message


def test_a_passed_verdict_names_the_serving_source_it_was_compared_with_and_none_for_a_first_source():
    paired = {**EVALUATION, "baseline": "serving"}

    def verdict(serving: str | None, evaluation: dict[str, Any]) -> dict[str, Any]:
        status = {"name": "refunds", "candidateSource": V2, "lastEvaluation": running(), **({"servingSource": serving} if serving else {})}
        the_tier = ModelTier.model_validate({
            "metadata": {"name": "support", "namespace": "llm", "uid": "u-1", "generation": 4},
            "spec": {"model": {"name": "support", "source": BASE},
                     "adapters": [{"name": "refunds", "source": V2, "rollout": {"evaluation": evaluation}}]},
            "status": {"adapters": [status]},
        })
        plan = plan_adapters(the_tier, (job("Succeeded", exit_code=0, message=PASSED),), BASE, NOW)
        return plan.adapters[0].last_evaluation.to_wire()

    assert verdict(V1, paired)["baselineSource"] == V1
    assert "baselineSource" not in verdict(None, paired)  # its Job compared it with the base model
    assert "baselineSource" not in verdict(V1, EVALUATION)  # no baseline
