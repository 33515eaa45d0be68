"""Every evaluation teaches the router: pure decisions about a RoutePolicy's learned classifier.

When a ModelTier of a policy's ladder promotes a checkpoint (its status says the
checkpoint serves and its last evaluation, of that checkpoint, passed), the evaluation's
per-item outcomes (api/outcomes.py) recalibrate the step above that tier's rung
(router/learning.py). A rung that serves one of the tier's LoRA adapters learns the same
way from the adapter's promotions (status.adapters[]: its serving source and the
evaluation that promoted it); its baseline counts only when it was the adapter's serving
source (EvaluationRecord.baselineSource), not the base model an adapter's first source is
compared with. They are read off the finished Job's pod as soon as the status says
the evaluation passed, while the candidate rolls out. The result and the kept outcomes live
in the policy's ConfigMap `<policy>-classifier` (render/classifier.py), which is the one
owner of these facts; the RoutePolicy's status.classifier is rebuilt from it on every pass.

The promotion would delete the Job, and the operator may not have run a policy pass
between the verdict and the promotion (it was down while the Job ran, or the tier's pass
after a restart came first). So the tier's pass keeps a promoted evaluation's Job while a
policy that learns from that rung has not kept its outcomes in its ConfigMap
(`held_for_learning`, seen through `Learner`), and deletes it on the pass after they are
kept (the ConfigMap's change queues the tier). Bound: the Job's own ttlSecondsAfterFinished
(7 days, render/evaljob.py) removes it whatever happens; a newer candidate, or no learning
policy naming the rung any more, releases it at once; only the Job of what serves is held.

    user model M (configMapRef, resourceVersion R)
      --(first seen, or R changed)--> base "M@R", no learned model; the promotions
                                      visible now are kept as promoted references:
                                      M is taken to describe the checkpoints serving now
      --(tier T's candidate C passed in Job J)--> J's outcomes kept, not yet promoted
      --(T promotes C)--> J kept as promoted; with a reference (J's own baseline, else
                                      the kept outcomes of T's previous promoted
                                      evaluation on the same dataset) the step above T's
                                      rung of the current model (learned, else M) is
                                      recalibrated -> learned model, learnedFrom J

The prompts come from the evaluation dataset's ConfigMap (its digest must still match the
evaluation's). A dataset given by `uri` is downloaded by the Job only: its promotion
teaches the level alone, without prompts (router/learning.py), and says so in learnedFrom.
Which dataset an evaluation ran on is read off its Job (the evaluation spec in the
container's environment) and kept with its outcomes, not taken from the tier's spec now:
the gate may have been removed, or its dataset switched from a ConfigMap to a uri, since
the Job ran. When neither the Job nor the kept entry says and the spec names no ConfigMap
(whose digest is checked), the promotion's outcomes are kept and the classifier is left
as it is.

A promotion is handled once: its Job is kept as promoted afterwards. Reading
the dataset and the user's model takes requests (the controller's part); deciding what to
read and what to write is here, with the clock passed in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from shoal.api.base import ConfigMapKeyReference
from shoal.api.modeltier import DatasetSpec, ModelTier
from shoal.api.naming import (
    CLASSIFIER_BASE_ANNOTATION,
    EVAL_CONTAINER,
    EVAL_SPEC_ENV,
    KEPT_OUTCOMES_KEY,
    LEARNED_AT_ANNOTATION,
    LEARNED_FROM_ANNOTATION,
    LEARNED_MODEL_KEY,
    LEARNING_MESSAGE_ANNOTATION,
    learned_classifier_configmap_name,
)
from shoal.api.outcomes import ItemOutcomes, split_message
from shoal.api.routepolicy import RoutePolicy, TierRef
from shoal.api.times import rfc3339
from shoal.router.learning import EVALUATION_PROMPTS, INTERCEPT_ONLY, TRAINING_SAMPLE, CannotLearn, recalibrate

from .rollout import EvalJobObservation

__all__ = [
    "DatasetPrompts", "Evaluation", "LearnedState", "Learner", "base_of", "classifier_status", "evaluated_dataset", "evaluations",
    "held_for_learning", "learn", "learning_rungs",
    "model_text", "note", "reseed", "status_patch_field", "version_of",
]


# Kept outcomes per ModelTier (per adapter, for an adapter's): the promoted ones (the newest
# is the reference for the next promotion; a few more say where earlier versions came from)
# and a passed candidate newer than them that has not been promoted yet.
KEEP_PER_TIER = 4


def keep(kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ModelTier (and adapter) the last KEEP_PER_TIER promoted entries and the pending one newer than them, in order."""
    promoted: dict[Any, int] = {}
    pending: set[Any] = set()
    out = []
    for entry in reversed(kept):
        tier = (entry.get("modelTier"), entry.get("adapter"))
        if entry.get("promoted"):
            promoted[tier] = promoted.get(tier, 0) + 1
            if promoted[tier] <= KEEP_PER_TIER:
                out.append(entry)
        elif tier not in pending and tier not in promoted:
            # The newest candidate not promoted yet; one older than a promotion was superseded.
            pending.add(tier)
            out.append(entry)
    return out[::-1]


def model_text(model: dict[str, Any]) -> str:
    """The learned model as stored (its sha256 is the version the status and sidecars name)."""
    return json.dumps(model, separators=(",", ":"), sort_keys=True)


def version_of(text: str | bytes) -> str:
    """The version of a model file: what the sidecar reports for the same bytes."""
    raw = text.encode() if isinstance(text, str) else text
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:16]


def base_of(policy: RoutePolicy, resource_version: str | None) -> str:
    ref = policy.spec.classifier.config_map_ref
    assert ref is not None
    return f"{ref.name}/{ref.key}@{resource_version or ''}"


@dataclass(frozen=True)
class Evaluation:
    """A rung's ModelTier's passed evaluation with per-item outcomes; `promoted` when the
    tier serves the evaluated checkpoint now. For an adapter rung, `adapter` names the
    adapter and `checkpoint` is its evaluated source."""

    model_tier: str
    rung: str
    checkpoint: str
    job: str
    dataset_digest: str
    dataset: ConfigMapKeyReference | None  # the dataset ConfigMap evaluated (its prompts are read)
    outcomes: ItemOutcomes
    promoted: bool
    adapter: str | None = None
    # The uri of the dataset evaluated (its prompts are not read). Neither this nor
    # `dataset`: which dataset was evaluated is no longer known.
    dataset_uri: str | None = None

    def kept(self, promoted: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "modelTier": self.model_tier, "checkpoint": self.checkpoint, "job": self.job,
            "datasetDigest": self.dataset_digest, "outcomes": self.outcomes.to_wire(), "promoted": promoted,
        }
        if self.dataset is not None or self.dataset_uri is not None:
            entry["dataset"] = DatasetSpec(config_map_ref=self.dataset, uri=self.dataset_uri).to_wire()
        return entry if self.adapter is None else {**entry, "adapter": self.adapter}

    def what(self) -> str:
        """What was promoted, for messages: the checkpoint, or the adapter and its source."""
        return self.checkpoint if self.adapter is None else f"adapter {self.adapter} {self.checkpoint}"


@dataclass(frozen=True)
class LearnedState:
    """What the policy's learned-classifier ConfigMap says (empty when it does not exist)."""

    base: str | None = None
    model: str | None = None
    kept: list[dict[str, Any]] = field(default_factory=list)
    learned_from: dict[str, Any] | None = None
    learned_at: str | None = None
    message: str | None = None

    @classmethod
    def from_config_map(cls, cm: dict[str, Any] | None) -> LearnedState:
        if cm is None:
            return cls()
        annotations = (cm.get("metadata") or {}).get("annotations") or {}
        data = cm.get("data") or {}
        try:
            kept = json.loads(data.get(KEPT_OUTCOMES_KEY) or "[]")
            learned_from = json.loads(annotations[LEARNED_FROM_ANNOTATION]) if LEARNED_FROM_ANNOTATION in annotations else None
        except ValueError:
            kept, learned_from = [], None
        return cls(
            base=annotations.get(CLASSIFIER_BASE_ANNOTATION),
            model=data.get(LEARNED_MODEL_KEY),
            kept=[k for k in kept if isinstance(k, dict)] if isinstance(kept, list) else [],
            learned_from=learned_from if isinstance(learned_from, dict) else None,
            learned_at=annotations.get(LEARNED_AT_ANNOTATION),
            message=annotations.get(LEARNING_MESSAGE_ANNOTATION),
        )

    @property
    def kept_jobs(self) -> frozenset[str]:
        """The evaluation Jobs whose outcomes are kept."""
        return frozenset(str(k["job"]) for k in self.kept if k.get("job"))

    def entry(self, job: str) -> dict[str, Any] | None:
        return next((k for k in self.kept if k.get("job") == job), None)

    def handled(self, evaluation: Evaluation) -> bool:
        """Its promotion was handled (or it is kept and not promoted yet, and is not now)."""
        kept = self.entry(evaluation.job)
        return kept is not None and (bool(kept.get("promoted")) or not evaluation.promoted)

    def with_entry(self, evaluation: Evaluation, promoted: bool) -> list[dict[str, Any]]:
        """The kept outcomes with this evaluation's entry added or replaced (bounded)."""
        return keep([*(k for k in self.kept if k.get("job") != evaluation.job), evaluation.kept(promoted)])


def learning_rungs(policy: RoutePolicy) -> list[TierRef]:
    """The rungs whose promotions teach the policy's classifier: every rung below the
    largest that serves a ModelTier (its base model or one of its adapters)."""
    if not policy.spec.classifier.learns():
        return []
    return [ref for ref in policy.spec.tiers[:-1] if ref.model_tier_ref is not None]


def evaluated_dataset(job: Mapping[str, Any]) -> DatasetSpec | None:
    """The dataset an evaluation Job ran on, from the evaluation spec in its container's
    environment (render/evaljob.py); None when the Job does not say."""
    for container in ((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []:
        if container.get("name") != EVAL_CONTAINER:
            continue
        for env in container.get("env") or []:
            if env.get("name") == EVAL_SPEC_ENV and isinstance(env.get("value"), str):
                try:
                    return DatasetSpec.model_validate(json.loads(env["value"]).get("dataset"))
                except (ValueError, AttributeError, ValidationError):
                    return None
    return None


def evaluations(
    policy: RoutePolicy,
    tiers: Mapping[str, ModelTier],
    messages: Mapping[tuple[str, str], str],
    state: LearnedState,
    datasets: Mapping[tuple[str, str], DatasetSpec] | None = None,
) -> list[Evaluation]:
    """The passed evaluations of the policy's rungs (below the largest) whose per-item
    outcomes are known: from the Job's termination message while the Job is there, else
    as kept.

    tiers: the rungs' ModelTiers by name; messages: (ModelTier, Job) -> the evaluation
    container's termination message, for the Jobs still there; datasets: (ModelTier, Job)
    -> the dataset the Job ran on (`evaluated_dataset`), for the Jobs still there. The
    dataset evaluated is the Job's, else the kept entry's, else the tier's dataset
    ConfigMap now (its digest is checked before its prompts are used); a uri is never
    taken from the spec alone: the Job may have run on a ConfigMap before the switch.
    """
    found = []
    for ref in learning_rungs(policy):
        target = ref.model_tier_ref
        assert target is not None
        if target.name not in tiers:
            continue
        tier = tiers[target.name]
        if target.adapter is None:
            record, serving = tier.status.last_evaluation, tier.status.serving_checkpoint
            spec = tier.spec.rollout.evaluation
        else:
            adapter = tier.spec.adapter(target.adapter)
            status = next((a for a in tier.status.adapters if a.name == target.adapter), None)
            if adapter is None or status is None:
                continue
            record, serving = status.last_evaluation, status.serving_source
            spec = tier.spec.adapter_evaluation(adapter)
        if record is None or record.verdict != "Passed" or not record.job_name or not record.dataset_digest:
            continue
        message = messages.get((tier.name, record.job_name))
        outcomes = split_message(message)[1] if message else None
        if outcomes is not None and target.adapter is not None and record.baseline_source is None:
            # The Job compared the adapter with the base model (it served nothing yet), not
            # with what the rung served before: no reference for the rung's step.
            outcomes = outcomes.model_copy(update={"baseline_passed": None, "baseline_scored": None})
        kept = state.entry(record.job_name)
        if outcomes is None and kept is not None:
            try:
                outcomes = ItemOutcomes.model_validate(kept.get("outcomes"))
            except ValueError:
                outcomes = None
        if outcomes is None:
            continue
        evaluated = (datasets or {}).get((tier.name, record.job_name))
        if evaluated is None and kept is not None:
            try:
                evaluated = DatasetSpec.model_validate(kept["dataset"]) if "dataset" in kept else None
            except ValidationError:
                evaluated = None
        if evaluated is None and spec is not None and spec.dataset.config_map_ref is not None:
            evaluated = spec.dataset
        found.append(Evaluation(
            tier.name, ref.name, record.checkpoint, record.job_name, record.dataset_digest,
            evaluated.config_map_ref if evaluated is not None else None, outcomes,
            promoted=serving == record.checkpoint, adapter=target.adapter,
            dataset_uri=evaluated.uri if evaluated is not None else None,
        ))
    return found


def note(evaluation: Evaluation, state: LearnedState) -> LearnedState:
    """A passed candidate's outcomes kept before its promotion (which deletes its Job)."""
    return LearnedState(state.base, state.model, state.with_entry(evaluation, False), state.learned_from, state.learned_at, state.message)


def reseed(policy: RoutePolicy, base: str, visible: list[Evaluation], previous: LearnedState) -> LearnedState:
    """The state for a user model seen for the first time (or changed): no learned model;
    the promotions visible now are kept as promoted references, not learned from, and
    passed candidates as not yet promoted (their promotion will teach the new model)."""
    state = previous
    for evaluation in visible:
        state = LearnedState(kept=state.with_entry(evaluation, evaluation.promoted))
    kept = state.kept
    ref = policy.spec.classifier.config_map_ref
    assert ref is not None
    message = (
        f"Using the model in ConfigMap {ref.name} (key {ref.key}), taken to describe the checkpoints serving now; "
        "later promotions recalibrate it."
    )
    return LearnedState(base=base, model=None, kept=kept, message=message)


@dataclass(frozen=True)
class DatasetPrompts:
    """An evaluation dataset as read for learning: its digest and, per item in dataset
    order, what the router classifies (the last user message); or why it could not be read."""

    digest: str | None = None
    prompts: tuple[str, ...] = ()
    problem: str | None = None


def learn(
    promotion: Evaluation,
    state: LearnedState,
    *,
    base_model: str | None,
    dataset: DatasetPrompts | None,
    now: datetime,
) -> LearnedState:
    """The state after handling one promotion: its outcomes kept, and (when there is a
    reference to compare with and everything needed could be read) the model recalibrated.

    base_model: the model to start from (state.model when there is one, else the user's
    model text; None when it could not be read); dataset: the evaluation dataset as read
    (None when it was not read: the promotion has no dataset ConfigMap). A promotion whose
    dataset was a `uri` (no ConfigMap) learns from the level alone, without prompts, and
    learnedFrom says so (`prompts: none`, `meanOver`); one whose dataset is not known any
    more has its outcomes kept only.
    """
    kept = state.with_entry(promotion, True)

    def only_kept(why: str) -> LearnedState:
        message = f"{promotion.model_tier} promoted {promotion.what()} (Job {promotion.job}): its outcomes are kept, the classifier is unchanged: {why}."
        return LearnedState(state.base, state.model, kept, state.learned_from, state.learned_at, message)

    replaced = "checkpoint" if promotion.adapter is None else "source"
    reference = promotion.outcomes.baseline()
    compared_with = "baseline"
    if reference is None:
        earlier = [
            k for k in state.kept
            if k.get("modelTier") == promotion.model_tier and k.get("adapter") == promotion.adapter
            and k.get("datasetDigest") == promotion.dataset_digest
            and k.get("job") != promotion.job and k.get("promoted")
        ]
        if earlier:
            try:
                reference = ItemOutcomes.model_validate(earlier[-1]["outcomes"]).candidate()
            except ValueError:
                reference = None
        compared_with = "previousEvaluation"
    if reference is None:
        return only_kept(
            f"the evaluation ran without a baseline{' of a serving source' if promotion.adapter else ''} and no evaluation of the "
            f"{replaced} it replaced on the same dataset is kept (these outcomes are the reference for the next promotion)"
        )
    prompts: list[str] | None = None
    if promotion.dataset is not None:
        if dataset is None or dataset.problem is not None:
            why = dataset.problem if dataset is not None else "it was not read"
            return only_kept(f"the dataset ConfigMap {promotion.dataset.name} (key {promotion.dataset.key}) cannot be used: {why}")
        if base_model is None:
            return only_kept("the classifier's model could not be read")
        if dataset.digest != promotion.dataset_digest:
            return only_kept(f"the dataset ConfigMap {promotion.dataset.name} changed since the evaluation (digest {dataset.digest})")
        prompts = list(dataset.prompts[: promotion.outcomes.items])
    elif promotion.dataset_uri is None:
        return only_kept(
            "which dataset its evaluation ran on is no longer known (its Job is gone and the tier's evaluation no longer names "
            "a dataset ConfigMap whose digest can be checked), so neither prompts nor a uri's level can be matched with it"
        )
    # Else the dataset is a uri: the Job downloaded it and the operator does not, so the
    # level alone teaches (router/learning.py: over the model's sample of its training prompts).
    if base_model is None:
        return only_kept("the classifier's model could not be read")
    try:
        model = json.loads(base_model)
        if not isinstance(model, dict):
            raise CannotLearn("the classifier's model is not a JSON object")
        learned, summary = recalibrate(model, promotion.rung, prompts, promotion.outcomes.candidate(), reference)
    except CannotLearn as exc:
        return only_kept(str(exc))
    except ValueError as exc:
        return only_kept(f"the classifier's model does not load: {exc}")
    learned_from = {
        "modelTier": promotion.model_tier, **({"adapter": promotion.adapter} if promotion.adapter else {}),
        "rung": promotion.rung, "checkpoint": promotion.checkpoint,
        "evaluationJob": promotion.job, "datasetDigest": promotion.dataset_digest, "items": summary.items,
        "comparedWith": compared_with, "failureRate": round(summary.failure_rate, 4),
        "previousFailureRate": round(summary.previous_failure_rate, 4),
        "prompts": "dataset" if prompts is not None else "none", "meanOver": summary.reference,
    }
    over = {
        EVALUATION_PROMPTS: "on the evaluation's prompts",
        TRAINING_SAMPLE: f"over the model's sample of {summary.reference_size} training prompts (the dataset is a uri, "
                         "whose prompts the operator does not read: the level alone was learned)",
        INTERCEPT_ONLY: "at the step's intercept alone (the dataset is a uri, whose prompts the operator does not read, and the "
                        "model file carries no sample of its training prompts: retrain it with shoal router train to learn "
                        "from a uri dataset over that sample)",
    }[summary.reference]
    message = (
        f"Recalibrated the step above {promotion.rung} from Job {promotion.job}: {promotion.what()} failed "
        f"{summary.failure_rate:.1%} of {summary.items} items against {summary.previous_failure_rate:.1%} for the {replaced} "
        f"it replaced; the predicted share of requests {promotion.rung} needs help with moved from "
        f"{summary.mean_helps_before:.3f} to {summary.mean_helps_after:.3f} {over}."
    )
    return LearnedState(state.base, model_text(learned), kept, learned_from, rfc3339(now), message)


def classifier_status(policy: RoutePolicy, state: LearnedState, user_version: str | None) -> dict[str, Any] | None:
    """status.classifier in wire form (None: the policy routes without a classifier)."""
    spec = policy.spec.classifier
    if spec.mode != "enabled" or spec.config_map_ref is None:
        return None
    user = {"source": "ConfigMap", "configMap": f"{spec.config_map_ref.name}/{spec.config_map_ref.key}"}
    if user_version is not None:
        user["version"] = user_version
    if spec.learn_from_evaluations != "enabled":
        return {**user, "message": "learnFromEvaluations is disabled: the sidecars use the configured model as it is."}
    if state.message is not None:
        user["message"] = state.message
    if state.model is None:
        return user
    status: dict[str, Any] = {
        "version": version_of(state.model),
        "source": "Learned",
        "configMap": f"{learned_classifier_configmap_name(policy.name)}/{LEARNED_MODEL_KEY}",
    }
    if state.learned_from is not None:
        status["learnedFrom"] = state.learned_from
    if state.learned_at is not None:
        status["learnedAt"] = state.learned_at
    if state.message is not None:
        status["message"] = state.message
    return status


@dataclass(frozen=True, kw_only=True)
class Learner:
    """A RoutePolicy that learns from a ModelTier's evaluations, as that tier's pass sees it:
    its classifier learns, its user model exists, and its ladder has a rung below the
    largest on the tier."""

    policy: str
    # What those rungs serve of the tier: an adapter's name, or None for the base model.
    rungs: frozenset[str | None]
    # The evaluation Jobs its `<policy>-classifier` ConfigMap keeps outcomes of.
    kept_jobs: frozenset[str]


def held_for_learning(
    promoted: Mapping[str | None, str], jobs: tuple[EvalJobObservation, ...], learners: tuple[Learner, ...]
) -> frozenset[str]:
    """The evaluation Jobs a ModelTier's pass keeps although their candidate serves: a
    promotion's Job stays until every policy that learns from that rung keeps its outcomes.

    promoted: what serves now (None: the base checkpoint; else the adapter's name) -> the
    Job of the passed evaluation that promoted it. A Job is held while its termination
    message carries per-item outcomes (one without them teaches nothing) and a learner
    whose ladder has the rung does not list it in kept_jobs. The bound: the Job's own
    ttlSecondsAfterFinished (render/evaljob.py) deletes it whatever happens; a newer
    candidate (its Job then describes no serving version) and a policy that stops learning
    from the tier release it at once; at most one Job per serving version is held.
    """
    with_outcomes = {j.name for j in jobs if j.termination_message and split_message(j.termination_message)[1] is not None}
    held = set()
    for rung, job in promoted.items():
        if job in with_outcomes and any(rung in learner.rungs and job not in learner.kept_jobs for learner in learners):
            held.add(job)
    return frozenset(held)


def status_patch_field(wanted: dict[str, Any] | None, stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """status.classifier as a merge patch: a field the new value no longer has is set to
    null (a merge patch merges nested objects, so leaving it out would keep it)."""
    if wanted is None:
        return None
    return {**{k: None for k in (stored or {}) if k not in wanted}, **wanted}
