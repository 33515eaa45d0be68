"""A base checkpoint change with eval-gated adapters serving: the checkpoint is promoted only
when its own evaluation and each serving adapter's evaluation on it pass (plan/adapters.py)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from shoal.api.modeltier import ModelTier
from shoal.api.naming import adapter_eval_job_name, eval_job_name
from shoal.plan.tier import TierObservation, TierPlan, plan_tier

NOW = datetime(2026, 11, 22, 7, 0, tzinfo=timezone.utc)
A, B, CC = "s3://models/support/ckpt-a", "s3://models/support/ckpt-b", "s3://models/support/ckpt-c"
V1, V2 = "hf://acme/refunds-v1", "hf://acme/refunds-v2"
TRIAGE = "hf://acme/triage-v1"
EVALUATION = {
    "dataset": {"uri": "https://data.example/items.jsonl"},
    "scorers": [{"type": "exactMatch"}],
    "thresholds": [{"metric": "exact_match", "min": 0.8}],
    "timeoutSeconds": 600,
}
JOB_B = eval_job_name("support", B)
REFUNDS_ON_B = adapter_eval_job_name("support", "refunds", V1, B, base_change=True)
FAILED_ON_B = json.dumps({"checkpoint": V1, "verdict": "Failed", "items": 50,
                          "metrics": [{"name": "exact_match", "value": 0.4, "lower": 0.3, "upper": 0.5}],
                          "message": "exact_match 0.40 against a threshold of 0.80."})


def tier(checkpoint: str = B, *, refunds: str = V1, adapters_rule: str = "evaluate", gated_checkpoint: bool = True, **status: Any) -> ModelTier:
    """Tier support: base A serves, refunds (with its own evaluation) serves V1 on A, and
    (without a checkpoint evaluation) triage serves, with no evaluation at all."""
    adapter_status = [
        {"name": "refunds", "servingSource": V1, "servingBase": A,
         "lastEvaluation": {"checkpoint": V1, "verdict": "Passed", "baseCheckpoint": A}},
        {"name": "triage", "servingSource": TRIAGE},
    ][: 1 if gated_checkpoint else 2]
    status = {"servingCheckpoint": A, "adapters": adapter_status, **status}
    return ModelTier.model_validate({
        "metadata": {"name": "support", "namespace": "llm", "uid": "u-1", "generation": 7},
        "spec": {
            "model": {"name": "support", "source": "hf://acme/base", "checkpoint": checkpoint},
            "rollout": {**({"evaluation": EVALUATION} if gated_checkpoint else {}), "adapters": adapters_rule},
            "adapters": [{"name": "refunds", "source": refunds, "rollout": {"evaluation": EVALUATION}},
                         {"name": "triage", "source": TRIAGE}][: 1 if gated_checkpoint else 2],
        },
        "status": status,
    })


def deployment(checkpoint: str = A, complete: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": "support", "generation": 3},
        "spec": {"replicas": 2, "template": {"metadata": {"annotations": {"shoal.dev/checkpoint": checkpoint}}}},
        "status": {"observedGeneration": 3, "replicas": 2, "readyReplicas": 2, "availableReplicas": 2,
                   "updatedReplicas": 2 if complete else 1, "conditions": [{"type": "Available", "status": "True"}]},
    }


def job(name: str, *, checkpoint: str | None = None, adapter: str | None = None, source: str | None = None, base: str | None = None,
        exit_code: int | None = None, message: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An evaluation Job as the view keeps it: running (exit_code None) or ended with `exit_code`."""
    annotations = {"shoal.dev/checkpoint": checkpoint} if adapter is None else {
        "shoal.dev/adapter": adapter, "shoal.dev/adapter-source": source, "shoal.dev/base-checkpoint": base}
    status: dict[str, Any] = {"startTime": "2026-11-22T06:55:00Z"}
    pods: list[dict[str, Any]] = []
    if exit_code is not None:
        status["conditions"] = [{"type": "Complete" if exit_code == 0 else "Failed", "status": "True"}]
        status["completionTime"] = "2026-11-22T06:59:00Z"
        terminated = {"exitCode": exit_code, **({"message": message} if message else {})}
        pods = [{"metadata": {"name": f"{name}-x"}, "status": {"containerStatuses": [{"name": "eval", "state": {"terminated": terminated}}]}}]
    return {"metadata": {"name": name, "annotations": annotations}, "status": status}, pods


def ckpt_job(exit_code: int | None = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return job(JOB_B, checkpoint=B, exit_code=exit_code)


def refunds_on_b(exit_code: int | None = 0, message: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return job(REFUNDS_ON_B, adapter="refunds", source=V1, base=B, exit_code=exit_code, message=message)


def plan(t: ModelTier, *jobs: tuple[dict[str, Any], list[dict[str, Any]]], dep: dict[str, Any] | None = None) -> TierPlan:
    return plan_tier(t, TierObservation(deployment=dep or deployment(), eval_jobs=list(jobs)), NOW,
                     previous_status=t.status.to_wire() if hasattr(t.status, "to_wire") else None)


def cond(p: TierPlan, type_: str) -> tuple[str, str, str]:
    c = next(c for c in p.status["conditions"] if c["type"] == type_)
    return c["status"], c["reason"], c["message"]


def refunds(p: TierPlan) -> dict[str, Any]:
    return next(a for a in p.status["adapters"] if a["name"] == "refunds")


def test_a_new_checkpoint_is_evaluated_with_each_serving_gated_adapter_on_it_and_ungated_adapters_are_ignored():
    p = plan(tier(gated_checkpoint=False))
    assert p.create_job_for is None and p.checkpoint == A
    ((request),) = p.adapters.create_jobs
    assert (request.adapter, request.source, request.base_checkpoint, request.serving_source, request.base_change) == ("refunds", V1, B, None, True)
    assert refunds(p)["baseEvaluation"] == {"checkpoint": V1, "verdict": "Running", "jobName": REFUNDS_ON_B, "metrics": [], "thresholds": [],
                                            "startTime": "2026-11-22T07:00:00Z", "baseCheckpoint": B}
    assert "baseEvaluation" not in next(a for a in p.status["adapters"] if a["name"] == "triage")
    assert "AdapterEvaluatingOnBase" in [e.reason for e in p.events]
    # Without a checkpoint evaluation the adapter's verdict alone lets it through.
    passed = plan(tier(gated_checkpoint=False, adapters=p.status["adapters"]), refunds_on_b(0))
    assert passed.checkpoint == B


def test_the_checkpoint_and_the_adapter_passing_on_it_promote_the_checkpoint_and_move_the_adapters_base():
    evaluating = tier(candidateCheckpoint=B, lastEvaluation={"checkpoint": B, "verdict": "Running", "jobName": JOB_B})
    p = plan(evaluating, ckpt_job(0), refunds_on_b(0))
    assert p.checkpoint == B and p.adapters.create_jobs == ()
    assert refunds(p)["baseEvaluation"]["verdict"] == "Passed"
    assert refunds(p)["servingBase"] == A  # B does not serve yet
    assert REFUNDS_ON_B not in p.adapters.delete_jobs

    rolled = tier(candidateCheckpoint=B, lastEvaluation={"checkpoint": B, "verdict": "Passed", "jobName": JOB_B},
                  adapters=p.status["adapters"])
    done = plan(rolled, ckpt_job(0), refunds_on_b(0), dep=deployment(B))
    assert done.status["servingCheckpoint"] == B
    assert (refunds(done)["servingSource"], refunds(done)["servingBase"]) == (V1, B)
    assert "Promoted" in [e.reason for e in done.events]

    settled = tier(servingCheckpoint=B, adapters=done.status["adapters"])
    after = plan(settled, refunds_on_b(0), dep=deployment(B))
    assert after.adapters.delete_jobs == (REFUNDS_ON_B,)
    assert (refunds(after)["servingBase"], "baseEvaluation" in refunds(after)) == (B, False)


def test_a_passing_checkpoint_whose_serving_adapter_fails_on_it_is_blocked_naming_the_adapter_and_the_old_one_serves():
    evaluating = tier(candidateCheckpoint=B, lastEvaluation={"checkpoint": B, "verdict": "Running", "jobName": JOB_B})
    p = plan(evaluating, ckpt_job(0), refunds_on_b(1, FAILED_ON_B))
    assert p.checkpoint == A and p.create_job_for is None
    assert p.status["servingCheckpoint"] == A and p.status["candidateCheckpoint"] == B
    assert p.status["lastEvaluation"]["verdict"] == "Passed"
    status, reason, message = cond(p, "Evaluated")
    assert (status, reason) == ("False", "AdapterFailed")
    assert message.startswith(f"{B} is blocked: adapter refunds ({V1}) serves on {A}, and its evaluation on {B} ended Failed. "
                              f"exact_match 0.40 against a threshold of 0.80. {A} keeps serving with its adapters unchanged.")
    assert cond(p, "Progressing")[:2] == ("False", "AdapterFailed")
    assert cond(p, "Ready")[:2] == ("False", "AdapterFailed")
    assert (refunds(p)["servingSource"], refunds(p)["servingBase"], refunds(p)["baseEvaluation"]["verdict"]) == (V1, A, "Failed")
    assert p.adapters.serving() == {"refunds": V1}
    (event,) = [e for e in p.events if e.reason == "AdapterFailed" and e.message.startswith("Adapter refunds")]
    assert (event.type, event.message) == ("Warning", f"Adapter refunds: {V1} did not pass on {B} (evaluation ended Failed); {B} does not serve. "
                                                      "exact_match 0.400 [0.300, 0.500]. exact_match 0.40 against a threshold of 0.80.")
    # The verdict is recorded: the next pass reads it from the status, with or without the Job.
    again = plan(tier(candidateCheckpoint=B, lastEvaluation=p.status["lastEvaluation"], adapters=p.status["adapters"]), ckpt_job(0))
    assert cond(again, "Evaluated")[:2] == ("False", "AdapterFailed") and again.adapters.create_jobs == ()


def test_a_passing_checkpoint_waits_while_a_serving_adapter_is_evaluated_on_it():
    p = plan(tier(candidateCheckpoint=B), ckpt_job(0), refunds_on_b(None))
    assert p.checkpoint == A
    assert cond(p, "Progressing")[:2] == ("True", "EvaluatingAdapters")
    assert cond(p, "Evaluated") == ("Unknown", "EvaluatingAdapters", f"Evaluating adapter refunds on {B} before it serves traffic. {A} keeps serving.")
    assert p.adapters.create_jobs[0].base_change  # created by name: the running one is kept
    assert p.adapters.delete_jobs == ()


def test_a_newer_checkpoint_supersedes_the_candidate_and_every_job_of_it_goes():
    blocked = plan(tier(candidateCheckpoint=B), ckpt_job(0), refunds_on_b(1, FAILED_ON_B))
    p = plan(tier(CC, candidateCheckpoint=B, lastEvaluation=blocked.status["lastEvaluation"], adapters=blocked.status["adapters"]),
             ckpt_job(0), refunds_on_b(1, FAILED_ON_B))
    assert p.delete_jobs == (JOB_B,) and p.adapters.delete_jobs == (REFUNDS_ON_B,)
    assert p.create_job_for == CC
    assert [(r.source, r.base_checkpoint) for r in p.adapters.create_jobs] == [(V1, CC)]
    assert refunds(p)["baseEvaluation"]["baseCheckpoint"] == CC


def test_with_adapters_ignored_the_checkpoint_rolls_out_on_its_own_verdict_and_the_adapters_keep_their_tested_base():
    p = plan(tier(adapters_rule="ignore", candidateCheckpoint=B), ckpt_job(0))
    assert p.checkpoint == B and p.adapters.create_jobs == ()
    done = plan(tier(adapters_rule="ignore", candidateCheckpoint=B, lastEvaluation=p.status["lastEvaluation"]), ckpt_job(0), dep=deployment(B))
    assert done.status["servingCheckpoint"] == B and refunds(done)["servingBase"] == A


def test_a_candidate_adapter_waits_for_a_rolling_out_checkpoint_and_is_then_evaluated_on_it():
    passed = {"checkpoint": B, "verdict": "Passed", "jobName": JOB_B}
    on_b = {"checkpoint": V1, "verdict": "Passed", "jobName": REFUNDS_ON_B, "baseCheckpoint": B}
    adapters = [{"name": "refunds", "servingSource": V1, "servingBase": A, "candidateSource": V2, "baseEvaluation": on_b}]
    on_a = adapter_eval_job_name("support", "refunds", V2, A)
    p = plan(tier(refunds=V2, candidateCheckpoint=B, lastEvaluation=passed, adapters=adapters),
             refunds_on_b(0), job(on_a, adapter="refunds", source=V2, base=A), dep=deployment(B, complete=False))
    assert p.checkpoint == B
    assert cond(p, "AdaptersReady")[1] == "WaitingForBaseModel"
    assert p.adapters.create_jobs == () and p.adapters.delete_jobs == (on_a,)
    assert p.adapters.serving()["refunds"] == V1

    serving_b = tier(refunds=V2, servingCheckpoint=B, adapters=[{**adapters[0], "servingBase": B}])
    after = plan(serving_b, dep=deployment(B))
    ((request),) = after.adapters.create_jobs
    assert (request.source, request.base_checkpoint, request.serving_source, request.base_change) == (V2, B, V1, False)
