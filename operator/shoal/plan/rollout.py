"""The eval-gated rollout of a new checkpoint, as a pure decision.

    serving A --(spec names B)--> evaluating B --(Job passes)--> rolling out B --(Deployment
    complete at B)--> serving B
                                   \\--(Job fails, times out, errors)--> B blocked, A serves

A newer checkpoint C supersedes B at any step: B's Job is deleted, C is evaluated, and
the Deployment goes back to (or stays at) the serving checkpoint until C has passed.
Reverting the spec to the serving checkpoint withdraws the candidate the same way.

"Passes" includes the tier's LoRA adapters (``AdapterGate``, decided in plan/adapters.py):
while A serves, B rolls out only when its own evaluation (if it has one) and each serving
eval-gated adapter's evaluation on B have passed. Until they have, B is Evaluating (reason
EvaluatingAdapters); if one did not pass, B is Blocked with reason AdapterFailed, the
message naming the adapter, and A keeps serving. ``spec.rollout.adapters: ignore`` gives
no gate.

Every pass is computed from the ModelTier (spec and status) and what was observed (the
evaluation Jobs, the Deployment), with the clock passed in, so an operator restarted at
any step reaches the same decision. The state that cannot be observed again lives in the
status and is written once: ``servingCheckpoint`` (what traffic is served by; it moves
only after the Deployment has completed its rollout to the new checkpoint),
``candidateCheckpoint`` and ``lastEvaluation`` (the verdict; never recomputed once recorded).

Verdicts come from the Job's evaluation container: exit code 0 is Passed, 1 is Failed,
2 is the termination message's verdict (JobError or TimedOut); a Job failed by its
``activeDeadlineSeconds`` is TimedOut, and one that ended any other way is JobError. The
termination message (an EvaluationRecord as JSON, see evaluate/report.py) supplies the
metrics, intervals and message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from shoal.api import conditions as C
from shoal.api.modeltier import EvaluationRecord, ModelTier
from shoal.api.naming import (
    ADAPTER_ANNOTATION,
    ADAPTER_SOURCE_ANNOTATION,
    BASE_CHECKPOINT_ANNOTATION,
    CHECKPOINT_ANNOTATION,
    EVAL_CONTAINER,
    eval_job_name,
)
from shoal.api.outcomes import split_message
from shoal.api.times import parse_rfc3339

from .conditions import Cond, EventSpec, as_sentence

Step = Literal["Serving", "Evaluating", "RollingOut", "Blocked"]
JobState = Literal["Running", "Succeeded", "Failed"]

# Event reasons beside the condition reasons (api/conditions.py) the events also use.
EVENT_SUPERSEDED = "Superseded"  # A newer checkpoint (or a revert) replaced the candidate.
EVENT_PROMOTED = "Promoted"  # The candidate finished rolling out and now serves traffic.

# A Job still running this long after its evaluation's timeout is treated as timed out,
# as a backstop for a Job whose activeDeadlineSeconds did not end it.
TIMEOUT_GRACE = timedelta(seconds=120)


@dataclass(frozen=True)
class EvalJobObservation:
    """One evaluation Job as observed (the controller reads these off the Job and its pod)."""

    name: str
    # The Job's shoal.dev/checkpoint annotation; for an adapter's Job, the candidate
    # adapter source (shoal.dev/adapter-source), so the verdict names what was evaluated.
    checkpoint: str
    state: JobState
    failed_reason: str | None = None  # the Job's Failed condition reason, e.g. DeadlineExceeded
    exit_code: int | None = None  # the evaluation container's terminated exit code
    termination_message: str | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    adapter: str | None = None  # the Job's shoal.dev/adapter annotation: None for a checkpoint's Job
    base: str | None = None  # an adapter Job's shoal.dev/base-checkpoint: the base its engine served


@dataclass(frozen=True)
class RolloutObservation:
    jobs: tuple[EvalJobObservation, ...] = ()  # every evaluation Job of the tier
    deployment_checkpoint: str | None = None  # checkpoint of the Deployment's pod template
    deployment_complete: bool = False  # that template is fully rolled out and available


@dataclass(frozen=True, kw_only=True)
class AdapterGate:
    """Where the serving adapters' evaluations on the candidate checkpoint stand
    (plan/adapters.py ``plan_base_change``). An empty gate (no adapter to evaluate, or
    ``spec.rollout.adapters: ignore``) lets the checkpoint through."""

    base: str  # the candidate checkpoint the adapters were evaluated on
    pending: tuple[str, ...] = ()  # adapters whose evaluation on it is running
    # The first adapter (in spec order) whose evaluation on it ended other than Passed:
    # (adapter, its serving source, the verdict).
    failed: tuple[str, str, EvaluationRecord] | None = None


@dataclass(frozen=True, kw_only=True)
class RolloutPlan:
    step: Step
    # The checkpoint the Deployment must run. None: nothing may serve yet (the first
    # checkpoint of a tier with firstCheckpoint: evaluate, before it has passed).
    deploy_checkpoint: str | None
    # The candidate whose evaluation Job must exist (create it if missing; by name).
    create_job_for: str | None
    delete_jobs: tuple[str, ...]
    serving_checkpoint: str | None
    candidate_checkpoint: str | None
    last_evaluation: EvaluationRecord | None
    evaluated: Cond
    # Overrides the Deployment-derived Progressing condition while evaluating or blocked;
    # None leaves it to the Deployment.
    progressing: Cond | None
    events: list[EventSpec] = field(default_factory=list)

    def status_fields(self) -> dict[str, Any]:
        """The status fields this plan owns, in wire form (None clears a field)."""
        return {
            "servingCheckpoint": self.serving_checkpoint,
            "candidateCheckpoint": self.candidate_checkpoint,
            "lastEvaluation": self.last_evaluation.to_wire() if self.last_evaluation else None,
        }


def eval_job_observation(job: dict[str, Any], pods: list[dict[str, Any]]) -> EvalJobObservation:
    """What an evaluation Job (and the pod it ran) says, read off the objects."""
    meta, status = job.get("metadata", {}), job.get("status", {})
    failed = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed" and c.get("status") == "True"), None)
    complete = any(c.get("type") == "Complete" and c.get("status") == "True" for c in status.get("conditions") or [])
    state: JobState = "Failed" if failed else "Succeeded" if complete or (status.get("succeeded") or 0) > 0 else "Running"
    exit_code = message = None
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if cs.get("name") == EVAL_CONTAINER and terminated:
                exit_code = terminated.get("exitCode")
                message = terminated.get("message") or None
    annotations = meta.get("annotations") or {}
    adapter = annotations.get(ADAPTER_ANNOTATION)
    return EvalJobObservation(
        name=meta.get("name", ""),
        checkpoint=annotations.get(ADAPTER_SOURCE_ANNOTATION, "") if adapter is not None else annotations.get(CHECKPOINT_ANNOTATION, ""),
        adapter=adapter,
        base=annotations.get(BASE_CHECKPOINT_ANNOTATION) if adapter is not None else None,
        state=state,
        failed_reason=failed.get("reason") if failed else None,
        exit_code=exit_code,
        termination_message=message,
        start_time=_parse_time(status.get("startTime")),
        completion_time=_parse_time(status.get("completionTime") or (failed or {}).get("lastTransitionTime")),
    )


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return parse_rfc3339(value)


def verdict_from_job(job: EvalJobObservation, timeout_seconds: int, now: datetime) -> EvaluationRecord | None:
    """The verdict a finished (or overdue) evaluation Job gives; None while it is still running."""
    base = {"checkpoint": job.checkpoint, "job_name": job.name, "start_time": job.start_time}
    if job.state == "Running":
        if job.start_time is not None and now - job.start_time > timedelta(seconds=timeout_seconds) + TIMEOUT_GRACE:
            return EvaluationRecord(
                **base, verdict="TimedOut", finish_time=now,
                message=f"The evaluation Job {job.name} ran past its {timeout_seconds} s timeout.",
            )
        return None
    finish = job.completion_time or now
    if job.state == "Failed" and job.failed_reason == "DeadlineExceeded":
        return EvaluationRecord(
            **base, verdict="TimedOut", finish_time=finish,
            message=f"The evaluation Job {job.name} did not finish within its {timeout_seconds} s timeout.",
        )
    reported: EvaluationRecord | None = None
    if job.termination_message:
        try:
            # The per-item outcomes beside the record (api/outcomes.py) are for the
            # classifier's learning only, never for the status.
            reported = EvaluationRecord.model_validate_json(split_message(job.termination_message)[0])
        except ValidationError:
            reported = None
    exit_code = 0 if job.state == "Succeeded" and job.exit_code is None else job.exit_code
    if exit_code == 0:
        verdict = "Passed"
    elif exit_code == 1:
        verdict = "Failed"
    elif exit_code == 2 and reported is not None and reported.verdict in ("JobError", "TimedOut"):
        verdict = reported.verdict
    else:
        verdict = "JobError"
    if reported is not None:
        # The program's own record carries the scores; the Job's identity and the exit
        # code's verdict are authoritative (the exit code is the documented contract).
        return reported.model_copy(
            update={**base, "verdict": verdict, "finish_time": reported.finish_time or finish,
                    "start_time": reported.start_time or job.start_time}
        )
    how = f"exit code {exit_code}" if exit_code is not None else (job.failed_reason or "no exit code")
    return EvaluationRecord(
        **base, verdict=verdict, finish_time=finish,
        message=f"The evaluation Job {job.name} ended without a verdict ({how}); see its pod's log.",
    )


def _evaluated(record: EvaluationRecord | None, desired: str, serving: str | None) -> Cond:
    keeps = f" {serving} keeps serving." if serving else " Nothing serves until a checkpoint passes."
    return evaluated_condition(record, desired, keeps, "Set spec.model.checkpoint to a new checkpoint (or back to the serving one) to continue.")


def evaluated_condition(record: EvaluationRecord | None, desired: str, keeps: str, to_continue: str) -> Cond:
    """The Evaluated condition of a candidate (a checkpoint, or an adapter's source) from its
    recorded verdict. ``keeps`` says what serves meanwhile; ``to_continue`` how to unblock it."""
    if record is None or record.checkpoint != desired:
        return Cond(C.EVALUATED, "True", C.REASON_NOT_REQUIRED, f"No evaluation is pending; {desired} is what the spec asks for.")
    detail = f" {as_sentence(record.message)}" if record.message else ""
    if record.verdict == "Running":
        return Cond(C.EVALUATED, "Unknown", C.REASON_EVALUATING, f"Evaluating {desired} in Job {record.job_name}." + keeps)
    if record.verdict == "Passed":
        return Cond(C.EVALUATED, "True", C.REASON_PASSED, f"{desired} passed its evaluation.{detail}")
    reason = {"Failed": C.REASON_FAILED, "TimedOut": C.REASON_TIMED_OUT}.get(record.verdict, C.REASON_JOB_ERROR)
    return Cond(C.EVALUATED, "False", reason, f"{desired} is blocked: its evaluation ended {record.verdict}.{detail}{keeps} {to_continue}")


def plan_rollout(tier: ModelTier, observed: RolloutObservation, now: datetime, adapters: AdapterGate | None = None) -> RolloutPlan:
    """Decide the next step of the tier's checkpoint rollout. Pure; see the module docstring.

    ``adapters``: the serving adapters' evaluations on the candidate; the candidate rolls
    out only after its own evaluation (if any) and all of these passed."""
    spec, status = tier.spec, tier.status
    desired = spec.model.served_uri()
    serving = status.serving_checkpoint
    previous_candidate = status.candidate_checkpoint
    last = status.last_evaluation
    evaluation = spec.rollout.evaluation
    events: list[EventSpec] = []

    withdrawn = previous_candidate is not None and previous_candidate not in (desired, serving)
    if withdrawn:
        events.append(EventSpec("Normal", EVENT_SUPERSEDED, f"Candidate {previous_candidate} was replaced by {desired}; its evaluation is cancelled."))
    stale_jobs = tuple(sorted(j.name for j in observed.jobs if j.checkpoint != desired or desired == serving))

    def deployed(checkpoint: str) -> bool:
        return observed.deployment_checkpoint == checkpoint and observed.deployment_complete

    def rolling_out(record: EvaluationRecord | None, evaluated: Cond) -> RolloutPlan:
        if deployed(desired):
            events.append(EventSpec("Normal", EVENT_PROMOTED, f"{desired} now serves traffic" + (f" (was {serving})." if serving else ".")))
            # The candidate serves now: its evaluation Job has done its work too (plan/tier.py
            # keeps it while a RoutePolicy that learns from the tier has yet to keep its outcomes).
            every_job = tuple(sorted(j.name for j in observed.jobs))
            return RolloutPlan(
                step="Serving", deploy_checkpoint=desired, create_job_for=None, delete_jobs=every_job,
                serving_checkpoint=desired, candidate_checkpoint=None, last_evaluation=record, evaluated=evaluated,
                progressing=None, events=events,
            )
        return RolloutPlan(
            step="RollingOut", deploy_checkpoint=desired, create_job_for=None, delete_jobs=stale_jobs,
            serving_checkpoint=serving, candidate_checkpoint=desired, last_evaluation=record, evaluated=evaluated,
            progressing=None, events=events,
        )

    def proceed(record: EvaluationRecord | None, evaluated: Cond) -> RolloutPlan:
        """Roll out, unless a serving adapter has yet to pass on the candidate."""
        if adapters is None or adapters.base != desired or serving is None:
            return rolling_out(record, evaluated)
        if adapters.failed is not None:
            name, source, verdict = adapters.failed
            detail = f" {verdict.message}" if verdict.message else ""
            blocked = Cond(
                C.EVALUATED, "False", C.REASON_ADAPTER_FAILED,
                f"{desired} is blocked: adapter {name} ({source}) serves on {serving}, and its evaluation on {desired} "
                f"ended {verdict.verdict}.{detail} {serving} keeps serving with its adapters unchanged. Set "
                f"spec.model.checkpoint to a new checkpoint (or back to the serving one), give adapter {name} a source "
                "that passes on both, or set spec.rollout.adapters to ignore, to continue.",
            )
            return RolloutPlan(
                step="Blocked", deploy_checkpoint=serving, create_job_for=None, delete_jobs=stale_jobs,
                serving_checkpoint=serving, candidate_checkpoint=desired, last_evaluation=record, evaluated=blocked,
                progressing=Cond(C.PROGRESSING, "False", C.REASON_ADAPTER_FAILED, blocked.message), events=events,
            )
        if adapters.pending:
            names = ", ".join(adapters.pending)
            message = f"Evaluating adapter{'s' if len(adapters.pending) != 1 else ''} {names} on {desired} before it serves traffic."
            return RolloutPlan(
                step="Evaluating", deploy_checkpoint=serving, create_job_for=None, delete_jobs=stale_jobs,
                serving_checkpoint=serving, candidate_checkpoint=desired, last_evaluation=record,
                evaluated=Cond(C.EVALUATED, "Unknown", C.REASON_EVALUATING_ADAPTERS, f"{message} {serving} keeps serving."),
                progressing=Cond(C.PROGRESSING, "True", C.REASON_EVALUATING_ADAPTERS, message), events=events,
            )
        return rolling_out(record, evaluated)

    # The spec asks for what already serves: nothing to evaluate or roll out.
    # The verdict that let it serve stays reported (Passed), so the status a promotion wrote
    # is also what the next pass computes: a fixed point, not a flip on the next event.
    if desired == serving:
        passed = last if last is not None and last.checkpoint == desired and last.verdict == "Passed" else None
        return RolloutPlan(
            step="Serving", deploy_checkpoint=serving, create_job_for=None, delete_jobs=stale_jobs,
            serving_checkpoint=serving, candidate_checkpoint=None, last_evaluation=last,
            evaluated=_evaluated(passed, desired, serving), progressing=None, events=events,
        )

    # No gate for this checkpoint: roll it out directly.
    gated = evaluation is not None and (serving is not None or spec.rollout.first_checkpoint == "evaluate")
    if not gated:
        return proceed(last, _evaluated(None, desired, serving))

    assert evaluation is not None
    record = last if last is not None and last.checkpoint == desired else None
    create_job_for = None
    if record is None or record.verdict == "Running":
        job = next((j for j in observed.jobs if j.checkpoint == desired), None)
        verdict = verdict_from_job(job, evaluation.timeout_seconds, now) if job is not None else None
        if verdict is not None:
            record = verdict
            kind = "Normal" if verdict.verdict == "Passed" else "Warning"
            scores = ", ".join(
                f"{m.name} {m.value:.3f} [{m.lower:.3f}, {m.upper:.3f}]" for m in verdict.metrics if m.lower is not None and m.upper is not None
            )
            events.append(EventSpec(kind, verdict.verdict, f"Evaluation of {desired}: {verdict.verdict}. " + (f"{scores}. " if scores else "") + (verdict.message or "")))
        else:
            create_job_for = desired
            if record is None:
                record = EvaluationRecord(checkpoint=desired, verdict="Running", job_name=eval_job_name(tier.name, desired), start_time=now)
                events.append(EventSpec("Normal", C.REASON_EVALUATING, f"Evaluating {desired} in Job {record.job_name} before it serves."))

    evaluated = _evaluated(record, desired, serving)
    if record.verdict == "Passed":
        return proceed(record, evaluated)
    if record.verdict == "Running":
        progressing = Cond(C.PROGRESSING, "True", C.REASON_EVALUATING, f"Evaluating {desired} before it serves traffic.")
        return RolloutPlan(
            step="Evaluating", deploy_checkpoint=serving, create_job_for=create_job_for, delete_jobs=stale_jobs,
            serving_checkpoint=serving, candidate_checkpoint=desired, last_evaluation=record, evaluated=evaluated,
            progressing=progressing, events=events,
        )
    progressing = Cond(C.PROGRESSING, "False", evaluated.reason, evaluated.message)
    return RolloutPlan(
        step="Blocked", deploy_checkpoint=serving, create_job_for=None, delete_jobs=stale_jobs,
        serving_checkpoint=serving, candidate_checkpoint=desired, last_evaluation=record, evaluated=evaluated,
        progressing=progressing, events=events,
    )
