"""The eval-gated promotion of LoRA adapter sources, as a pure decision per adapter.

    serving A --(spec names B)--> evaluating B --(Job passes)--> serving B
                                              \\--(Job fails, times out, errors)--> B blocked, A serves

A newer source C supersedes B at any step (B's Job is deleted, C is evaluated); setting
the spec back to the serving source withdraws the candidate the same way.

Where the candidate runs. Each candidate is evaluated in its own Job (render/evaljob.py):
the Job starts an engine on the serving base checkpoint with the candidate loaded as a
LoRA adapter under the adapter's own name (the name clients send), and, when the
evaluation compares with the serving version (``baseline: serving``), the serving
source under a second name in the same engine (without one, the base model itself is the
baseline). Nothing runs on the serving pods: their traffic never shares a batch with the
evaluation, their GPU memory never holds an adapter that might not pass, and the paired
comparison runs both versions on one engine. The price is an engine start per evaluation
(loading the base weights again, minutes for a large model on a GPU) where loading the
candidate on a serving pod under a hidden name would take seconds; an evaluation already
takes minutes to run its dataset, and a promotion is a commit, not a request, so the
isolation is worth it (benchmarks/adapters has both times).

What is decided here, for each adapter of ``spec.adapters``:

- The evaluation is ``adapters[].rollout.evaluation``, else the tier's
  ``spec.rollout.evaluation``. An adapter with neither keeps the ungated behaviour: a new
  source serves as soon as it is committed.
- A brand-new adapter (nothing serving yet) with an evaluation serves nothing until its
  first source passes, like a tier's first checkpoint under ``firstCheckpoint: evaluate``:
  an adapter is a fine-tune, and a fine-tune that never passed must not answer clients.
- The candidate is evaluated on the base checkpoint the tier serves (its rolled-out
  checkpoint; the one being rolled out while nothing serves yet); its verdict holds for
  that base only. While no base
  checkpoint may serve (a first checkpoint waiting for its own evaluation), the candidate
  waits.
- On Passed, ``servingSource`` moves to the candidate in the same pass: the router
  ConfigMap rendered from this plan lists the new source, and each sidecar swaps the
  adapter in its engine without restarting the pod (router/adapters.py). There is no
  rollout to wait for, unlike a checkpoint.

A base checkpoint change. An adapter is trained against the base it serves on, and its
verdict names that base (``lastEvaluation.baseCheckpoint``; ``servingBase`` for the serving
source). While the tier's spec names a new checkpoint B and A serves
(``spec.rollout.adapters: evaluate``, the default), ``plan_base_change`` evaluates each
adapter that has an evaluation and serves a source on B, in a Job of its own (the
adapter's evaluation; the engine on B with the serving source loaded; the baseline, with
``baseline: serving``, is B's base model alone, since one engine cannot also serve the
adapter on A). Its ``AdapterGate`` holds B's rollout (plan/rollout.py) until all pass and
blocks B with reason AdapterFailed when one does not; A keeps serving with its adapters.
The verdicts are recorded in ``status.adapters[].baseEvaluation``; the Jobs stay while B is
the candidate and go when B serves or is superseded. Once B serves, each adapter that
passed on B has ``servingBase`` B. Adapters without an evaluation are not evaluated on B.
A candidate source waits while B rolls out (its Job on A goes: that verdict says nothing
about B) and is evaluated on B once B serves; while B is being evaluated or is blocked,
candidates are evaluated on A as usual, and one promoted there is then what the gate
evaluates on B.

Every pass is computed from the ModelTier (spec, ``status.adapters``) and the observed
adapter evaluation Jobs, with the clock passed in, so an operator restarted at any step
reaches the same decision. What cannot be observed again (the serving source, the
verdict) is recorded in the status once. The Job whose verdict promoted a source is
deleted only on the pass after the status says it serves, so a restart between the
ConfigMap write and the status write finds the verdict again instead of re-evaluating.
Verdicts are read as for checkpoints (plan/rollout.py's ``verdict_from_job``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from shoal.api import conditions as C
from shoal.api.modeltier import AdapterSpec, AdapterStatus, EvaluationRecord, ModelTier
from shoal.api.naming import adapter_eval_job_name

from .conditions import Cond, EventSpec, merge_conditions
from .rollout import AdapterGate, EvalJobObservation, evaluated_condition, verdict_from_job

Step = Literal["Serving", "Evaluating", "Blocked", "Waiting"]

# Event reasons (recorded on the ModelTier; each message names the adapter).
EVENT_EVALUATING = "AdapterEvaluating"  # A candidate source's evaluation Job was started.
EVENT_PROMOTED = "AdapterPromoted"  # A source now serves (after a pass, or ungated).
EVENT_BLOCKED = "AdapterBlocked"  # A candidate's evaluation failed, timed out or errored.
EVENT_SUPERSEDED = "AdapterSuperseded"  # A newer source (or a revert) replaced the candidate.
EVENT_BASE_EVALUATING = "AdapterEvaluatingOnBase"  # A serving source's evaluation on a candidate checkpoint was started.
EVENT_BASE_PASSED = "AdapterPassedOnBase"  # A serving source passed its evaluation on a candidate checkpoint.
EVENT_BASE_FAILED = C.REASON_ADAPTER_FAILED  # ... or did not: the candidate checkpoint is blocked.


@dataclass(frozen=True, kw_only=True)
class AdapterJobRequest:
    """An adapter evaluation Job that must exist (created by name, so never twice)."""

    adapter: str
    source: str  # the candidate
    base_checkpoint: str  # the engine's model
    serving_source: str | None  # the baseline with baseline: serving; None: the base model
    # The serving source evaluated on a candidate base checkpoint (base_checkpoint), for
    # the checkpoint's gate; its baseline is the base model.
    base_change: bool = False


@dataclass(frozen=True, kw_only=True)
class AdapterDecision:
    name: str
    step: Step
    serving_source: str | None
    candidate_source: str | None
    last_evaluation: EvaluationRecord | None
    ready: Cond
    evaluated: Cond
    serving_base: str | None = None
    base_evaluation: EvaluationRecord | None = None


@dataclass(frozen=True, kw_only=True)
class AdaptersPlan:
    adapters: tuple[AdapterDecision, ...] = ()
    create_jobs: tuple[AdapterJobRequest, ...] = ()
    delete_jobs: tuple[str, ...] = ()
    events: list[EventSpec] = field(default_factory=list)

    def serving(self) -> dict[str, str]:
        """Adapter name -> the source the router loads, in spec order; adapters that serve
        nothing yet are left out."""
        return {d.name: d.serving_source for d in self.adapters if d.serving_source is not None}

    def condition(self) -> Cond | None:
        """The tier-level AdaptersReady condition; None when the tier lists no adapters."""
        if not self.adapters:
            return None
        waiting = [d for d in self.adapters if d.step != "Serving"]
        if not waiting:
            count = len(self.adapters)
            return Cond(C.ADAPTERS_READY, "True", C.REASON_ADAPTERS_SERVING,
                        f"Every adapter serves the source its spec names ({count} adapter{'s' if count != 1 else ''}).")
        # A blocked adapter needs a person; an evaluating one only needs time.
        order = {"Blocked": 0, "Evaluating": 1, "Waiting": 2}
        first = min(waiting, key=lambda d: order[d.step])
        return Cond(C.ADAPTERS_READY, "False", first.ready.reason, " ".join(d.ready.message for d in waiting))

    def status_adapters(self, previous: list[dict[str, Any]] | None, generation: int | None, now: datetime) -> list[dict[str, Any]]:
        """``status.adapters`` in wire form, each adapter's conditions merged with the stored
        ones (transition times move only on a flip). Unset fields are left out, as the API
        server stores them."""
        before = {a.get("name"): a for a in previous or [] if isinstance(a, dict)}
        out: list[dict[str, Any]] = []
        for d in self.adapters:
            old = before.get(d.name) or {}
            entry: dict[str, Any] = {"name": d.name}
            if d.serving_source is not None:
                entry["servingSource"] = d.serving_source
            if d.serving_base is not None:
                entry["servingBase"] = d.serving_base
            if d.candidate_source is not None:
                entry["candidateSource"] = d.candidate_source
            if d.last_evaluation is not None:
                entry["lastEvaluation"] = d.last_evaluation.to_wire()
            if d.base_evaluation is not None:
                entry["baseEvaluation"] = d.base_evaluation.to_wire()
            entry["conditions"] = merge_conditions(old.get("conditions"), [d.ready, d.evaluated], generation, now)
            out.append(entry)
        return out


def _evaluated(name: str, record: EvaluationRecord | None, desired: str, serving: str | None) -> Cond:
    keeps = f" {serving} keeps serving." if serving else f" {name} serves nothing until a source passes."
    return evaluated_condition(record, desired, keeps, f"Set the source of adapter {name} to a new version (or back to the serving one) to continue.")


def _scores(record: EvaluationRecord) -> str:
    parts = [f"{m.name} {m.value:.3f} [{m.lower:.3f}, {m.upper:.3f}]" for m in record.metrics if m.lower is not None and m.upper is not None]
    return (", ".join(parts) + ". ") if parts else ""


def plan_adapter(
    tier: ModelTier,
    adapter: AdapterSpec,
    jobs: tuple[EvalJobObservation, ...],
    base_checkpoint: str | None,
    now: datetime,
    *,
    held_by: str | None = None,
    on_base_change: EvaluationRecord | None = None,
) -> tuple[AdapterDecision, AdapterJobRequest | None, tuple[str, ...], list[EventSpec]]:
    """One adapter's next step: (decision, Job to create, Jobs to delete, events). Pure.

    ``held_by``: a new base checkpoint rolling out; a candidate source waits for it.
    ``on_base_change``: the serving source's evaluation on the tier's candidate checkpoint
    (``plan_base_change``), reported, and the adapter's servingBase once it serves there."""
    name, desired = adapter.name, adapter.source
    previous = next((a for a in tier.status.adapters if a.name == name), None) or AdapterStatus(name=name)
    serving, last = previous.serving_source, previous.last_evaluation
    mine = [j for j in jobs if j.adapter == name]
    expected = adapter_eval_job_name(tier.name, name, desired, base_checkpoint) if base_checkpoint is not None else None
    events: list[EventSpec] = []

    if previous.candidate_source is not None and previous.candidate_source not in (desired, serving):
        events.append(EventSpec("Normal", EVENT_SUPERSEDED,
                                f"Adapter {name}: candidate {previous.candidate_source} was replaced by {desired}; its evaluation is cancelled."))
    stale = tuple(sorted(j.name for j in mine if j.name != expected or desired == serving))

    def kept_base(source: str | None) -> str | None:
        # The serving source passed on the checkpoint that serves now (after a base change).
        passed = on_base_change
        if passed is not None and passed.checkpoint == source and passed.base_checkpoint == base_checkpoint and passed.verdict == "Passed":
            return base_checkpoint
        return previous.serving_base

    def decision(step: Step, serving_source: str | None, candidate: str | None, record: EvaluationRecord | None,
                 evaluated: Cond, ready: Cond, serving_base: str | None = None) -> AdapterDecision:
        return AdapterDecision(name=name, step=step, serving_source=serving_source, candidate_source=candidate,
                               last_evaluation=record, ready=ready, evaluated=evaluated,
                               serving_base=serving_base if serving_source != serving else kept_base(serving),
                               base_evaluation=on_base_change)

    def serves(source: str, record: EvaluationRecord | None, evaluated: Cond, serving_base: str | None = None) -> AdapterDecision:
        return decision("Serving", source, None, record, evaluated,
                        Cond(C.READY, "True", C.REASON_ADAPTERS_SERVING, f"Adapter {name} serves {source}."), serving_base)

    # The spec asks for what already serves. The verdict that promoted it stays reported,
    # so the status a promotion wrote is also what the next pass computes (a fixed point).
    if desired == serving:
        passed = last if last is not None and last.checkpoint == desired and last.verdict == "Passed" else None
        return serves(desired, last, _evaluated(name, passed, desired, serving)), None, stale, events

    evaluation = tier.spec.adapter_evaluation(adapter)
    if evaluation is None:
        how = f"(was {serving}; no evaluation is configured)." if serving else "(no evaluation is configured)."
        events.append(EventSpec("Normal", EVENT_PROMOTED, f"Adapter {name} now serves {desired} {how}"))
        return serves(desired, last, _evaluated(name, None, desired, desired)), None, stale, events

    keeps = f" {serving} keeps serving." if serving else " It serves nothing until a source passes."
    if base_checkpoint is None or held_by is not None:
        if held_by is not None:
            # A verdict on the old base says nothing about the new one: the candidate is
            # evaluated on the new base once it serves (its Job on the old one goes now).
            message = f"Adapter {name}: {desired} waits for base checkpoint {held_by} to finish rolling out, to be evaluated on it.{keeps}"
            last = last if last is None or last.verdict != "Running" else None
            stale = tuple(sorted(j.name for j in mine))
        else:
            message = f"Adapter {name}: {desired} waits for a base checkpoint to serve before it can be evaluated.{keeps}"
        ready = Cond(C.READY, "False", C.REASON_WAITING_FOR_BASE, message)
        evaluated = Cond(C.EVALUATED, "Unknown", C.REASON_WAITING_FOR_BASE, ready.message)
        return decision("Waiting", serving, desired, last, evaluated, ready), None, stale, events

    assert expected is not None
    # A verdict holds for the base it was reached on (one recorded before verdicts named
    # their base is taken as it is).
    record = last if (last is not None and last.checkpoint == desired
                      and (last.base_checkpoint == base_checkpoint or (last.base_checkpoint is None and last.verdict != "Running"))) else None
    request = None
    if record is None or record.verdict == "Running":
        job = next((j for j in mine if j.name == expected), None)
        verdict = verdict_from_job(job, evaluation.timeout_seconds, now) if job is not None else None
        if verdict is not None:
            # What the candidate was compared with: the serving source its Job loaded beside
            # it (the request below), else the base model (the classifier learns from the
            # former only: plan/learning.py).
            compared = serving if evaluation.baseline == "serving" else None
            record = verdict.model_copy(update={"base_checkpoint": base_checkpoint, "baseline_source": compared})
        else:
            request = AdapterJobRequest(adapter=name, source=desired, base_checkpoint=base_checkpoint, serving_source=serving)
            if record is None:
                record = EvaluationRecord(checkpoint=desired, verdict="Running", job_name=expected, start_time=now, base_checkpoint=base_checkpoint)
                events.append(EventSpec("Normal", EVENT_EVALUATING,
                                        f"Adapter {name}: evaluating {desired} on {base_checkpoint} in Job {record.job_name} before it serves."))

    evaluated = _evaluated(name, record, desired, serving)
    if record.verdict == "Passed":
        if last is None or last.checkpoint != desired or last.verdict != "Passed":
            events.append(EventSpec("Normal", EVENT_PROMOTED,
                                    f"Adapter {name} now serves {desired}" + (f" (was {serving}). " if serving else ". ")
                                    + f"Its evaluation passed. {_scores(record)}".rstrip()))
        # Only the other Jobs go now; this one goes once the status says it serves.
        return (serves(desired, record, evaluated, record.base_checkpoint or base_checkpoint), None,
                tuple(sorted(j.name for j in mine if j.name != expected)), events)
    if record.verdict == "Running":
        ready = Cond(C.READY, "False", C.REASON_EVALUATING, f"Adapter {name}: evaluating {desired} before it serves.{keeps}")
        return decision("Evaluating", serving, desired, record, evaluated, ready), request, stale, events
    if last is None or last.checkpoint != desired or last.verdict != record.verdict:
        events.append(EventSpec("Warning", EVENT_BLOCKED,
                                f"Adapter {name}: {desired} is blocked, its evaluation ended {record.verdict}. {_scores(record)}"
                                + (record.message or "")))
    ready = Cond(C.READY, "False", evaluated.reason, f"Adapter {name}: {evaluated.message}")
    return decision("Blocked", serving, desired, record, evaluated, ready), None, stale, events


@dataclass(frozen=True, kw_only=True)
class BaseChangePlan:
    """The serving adapters' evaluations on the tier's candidate checkpoint (see the module
    docstring): their verdicts by adapter, the Jobs to create and to keep, the events."""

    base: str
    records: dict[str, EvaluationRecord] = field(default_factory=dict)
    create_jobs: tuple[AdapterJobRequest, ...] = ()
    keep_jobs: frozenset[str] = frozenset()
    events: list[EventSpec] = field(default_factory=list)

    def gate(self) -> AdapterGate:
        """What the checkpoint's rollout waits for (plan/rollout.py)."""
        pending = tuple(name for name, r in self.records.items() if r.verdict == "Running")
        failed = next(((name, r.checkpoint, r) for name, r in self.records.items() if r.verdict not in ("Running", "Passed")), None)
        return AdapterGate(base=self.base, pending=pending, failed=failed)


def plan_base_change(tier: ModelTier, jobs: tuple[EvalJobObservation, ...], base: str, now: datetime) -> BaseChangePlan:
    """Evaluate each serving, gated adapter's serving source on the candidate checkpoint
    ``base``. Pure. A verdict is recorded once (``status.adapters[].baseEvaluation``) and
    read from there, as for every evaluation; its Job stays while the checkpoint is a
    candidate (a blocked one's for inspection) and goes when the candidate serves or is
    superseded."""
    records: dict[str, EvaluationRecord] = {}
    creates: list[AdapterJobRequest] = []
    keep: set[str] = set()
    events: list[EventSpec] = []
    for adapter in tier.spec.adapters:
        evaluation = tier.spec.adapter_evaluation(adapter)
        previous = next((a for a in tier.status.adapters if a.name == adapter.name), None)
        source = previous.serving_source if previous is not None else None
        if evaluation is None or source is None:
            continue  # ungated adapters load on any base; one that serves nothing has nothing to prove
        assert previous is not None
        name = adapter_eval_job_name(tier.name, adapter.name, source, base, base_change=True)
        keep.add(name)
        prior = previous.base_evaluation
        record = prior if prior is not None and prior.checkpoint == source and prior.base_checkpoint == base else None
        if record is None or record.verdict == "Running":
            job = next((j for j in jobs if j.name == name), None)
            verdict = verdict_from_job(job, evaluation.timeout_seconds, now) if job is not None else None
            if verdict is not None:
                record = verdict.model_copy(update={"base_checkpoint": base})
                if record.verdict == "Passed":
                    events.append(EventSpec("Normal", EVENT_BASE_PASSED,
                                            f"Adapter {adapter.name}: {source} passed its evaluation on {base}. {_scores(record)}".rstrip()))
                else:
                    events.append(EventSpec("Warning", EVENT_BASE_FAILED,
                                            f"Adapter {adapter.name}: {source} did not pass on {base} (evaluation ended {record.verdict}); "
                                            f"{base} does not serve. {_scores(record)}" + (record.message or "")))
            else:
                creates.append(AdapterJobRequest(adapter=adapter.name, source=source, base_checkpoint=base, serving_source=None, base_change=True))
                if record is None:
                    record = EvaluationRecord(checkpoint=source, verdict="Running", job_name=name, start_time=now, base_checkpoint=base)
                    events.append(EventSpec("Normal", EVENT_BASE_EVALUATING,
                                            f"Adapter {adapter.name}: evaluating its serving source {source} on {base} in Job {name} before {base} serves."))
        records[adapter.name] = record
    return BaseChangePlan(base=base, records=records, create_jobs=tuple(creates), keep_jobs=frozenset(keep), events=events)


def plan_adapters(
    tier: ModelTier,
    jobs: tuple[EvalJobObservation, ...],
    base_checkpoint: str | None,
    now: datetime,
    *,
    base_change: BaseChangePlan | None = None,
    held_by: str | None = None,
) -> AdaptersPlan:
    """Every adapter's next step; Jobs of adapters no longer listed are deleted. Pure.

    ``base_change``: the serving adapters' evaluations on a candidate checkpoint, whose
    Jobs are kept and created here too. ``held_by``: a new base checkpoint rolling out."""
    decisions: list[AdapterDecision] = []
    creates: list[AdapterJobRequest] = list(base_change.create_jobs) if base_change else []
    deletes: list[str] = []
    events: list[EventSpec] = list(base_change.events) if base_change else []
    listed = {a.name for a in tier.spec.adapters}
    for adapter in tier.spec.adapters:
        on_base = base_change.records.get(adapter.name) if base_change else None
        decided, request, stale, said = plan_adapter(tier, adapter, jobs, base_checkpoint, now, held_by=held_by, on_base_change=on_base)
        decisions.append(decided)
        if request is not None:
            creates.append(request)
        deletes += stale
        events += said
    deletes += [j.name for j in jobs if j.adapter not in listed]
    keep = base_change.keep_jobs if base_change else frozenset()
    return AdaptersPlan(adapters=tuple(decisions), create_jobs=tuple(creates),
                        delete_jobs=tuple(sorted(set(deletes) - keep)), events=events)
