"""Recalibrate one step of a v2 routing model from an evaluation's per-item outcomes.

When a ModelTier promotes a checkpoint, what its rung of the ladder can do has changed,
and the router's step above that rung should follow. The evaluation that let the
checkpoint through scored it item by item, and (with `baseline: serving`, or from the
kept outcomes of the replaced checkpoint's own evaluation) the checkpoint it replaces on
the same items. This module turns those outcomes into a new model.

What changes, and why only that: the step's *helps* model (the probability that the
rung fails where the next one answers well) gets a new intercept; its weights, the
*hurts* model and every other step stay as trained. An evaluation has tens to a few
thousand items, far too few to retrain hashed n-gram weights without undoing what the
user's training data taught; what it measures well is the *level*: how much more (or
less) often the new checkpoint fails than the old one on the same prompts. So:

    change   = failure rate of the new checkpoint - failure rate of the old one,
               over the items both have an outcome for, shrunk towards 0 by
               n / (n + PRIOR_ITEMS) so a handful of items moves the model little;
    target   = mean P(helps) over the evaluation's prompts + change (kept in (0, 1));
    intercept: the one that makes the mean P(helps) over those prompts equal the target
               (bisection; the mean is monotone in the intercept).

Without the prompts (an evaluation dataset behind a `uri`: the Job downloads it, the
operator does not), the change is measured the same way from the outcomes alone, and the
intercept moves so that the mean P(helps) over a reference sample moves by it. The
reference is the model's own: the cross-fitted helps logits of its training prompts it
carries (`helpsLogits`, row for row with `calibration`). A model file written before it
carries them falls back to one point, the step's intercept alone (P(helps) of a prompt
with no features), which moves the level right but the shape of the logits not at all.
The cost of the approximation: the training prompts stand in for the evaluation's, so
when the evaluation's prompts are much harder or easier than the training prompts (their
logits sit where the sigmoid is flatter or steeper) the intercept moves too little or too
much for the same change.

The larger rung is taken as it was: an evaluation scores one tier, so it says nothing
about the next. Comparing the checkpoint with the one it replaces (rather than reading its
failure rate as P(helps) directly) keeps an evaluation dataset that is harder or easier
than the traffic from moving the model: only the difference between the checkpoints does.

The step's calibration values (the cross-fitted gains targetShares are read from) move by
the mean change of P(helps), so thresholds chosen for a target share stay where the share
is (a share is what the policy asked for; learning changes which requests climb).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .classifier import FORMAT_V2, DifficultyModel

PRIOR_ITEMS = 20
_LIMIT = 1e-3

# What the mean P(helps) was moved over (Recalibration.reference).
EVALUATION_PROMPTS = "evaluationPrompts"
TRAINING_SAMPLE = "trainingSample"
INTERCEPT_ONLY = "interceptOnly"


class CannotLearn(ValueError):
    """The outcomes cannot recalibrate this model (the message says why, as a sentence)."""


@dataclass(frozen=True)
class Recalibration:
    """What one recalibration did (numbers only: never prompts or answers)."""

    rung: str
    items: int  # items with an outcome for both checkpoints
    failure_rate: float  # the new checkpoint's, over those items
    previous_failure_rate: float  # the replaced checkpoint's
    intercept_before: float
    intercept_after: float
    mean_helps_before: float  # mean P(helps) over the reference
    mean_helps_after: float
    # What that mean is over: EVALUATION_PROMPTS (the evaluation's own prompts),
    # TRAINING_SAMPLE (no prompts: the model's helpsLogits) or INTERCEPT_ONLY (no prompts
    # and a model file without helpsLogits: the intercept alone, one point).
    reference: str = EVALUATION_PROMPTS
    reference_size: int = 0


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


def _mean_probability(logits: Sequence[float], shift: float) -> float:
    return sum(_sigmoid(z + shift) for z in logits) / len(logits)


def recalibrate(
    model: dict,
    rung: str,
    prompts: Sequence[str] | None,
    outcomes: Sequence[bool | None],
    previous: Sequence[bool | None],
) -> tuple[dict, Recalibration]:
    """A copy of `model` (v2 JSON) whose step from `rung` up follows the new outcomes.

    prompts, outcomes, previous: per evaluation item, in the same order; an outcome is
    True (answered well), False, or None (not scored). Items past the shorter list are
    ignored. prompts None: they are not known (a `uri` dataset); the level is learned over
    the model's helpsLogits, else its intercept alone (see the module docstring and
    Recalibration.reference). Raises CannotLearn when the model is not v2, `rung` is not
    below its largest class, or no item has an outcome for both checkpoints.
    """
    if model.get("format") != FORMAT_V2:
        raise CannotLearn("the classifier is not a v2 model (train it from outcome lines with shoal router train); a v1 model is used as it is")
    parsed = DifficultyModel.from_json(model)
    if rung not in parsed.classes[:-1]:
        raise CannotLearn(f"the model routes between {', '.join(parsed.classes)}: it has no step above {rung!r}")
    index = parsed.classes.index(rung)
    step = parsed.steps[index]
    texts: Sequence[str | None] = prompts if prompts is not None else [None] * min(len(outcomes), len(previous))
    pairs = [(p, new, old) for p, new, old in zip(texts, outcomes, previous) if new is not None and old is not None]
    if not pairs:
        raise CannotLearn("no evaluation item has an outcome for both the promoted checkpoint and the one it replaced")
    n = len(pairs)
    failure = sum(1 for _, new, _ in pairs if not new) / n
    previous_failure = sum(1 for _, _, old in pairs if not old) / n
    change = (failure - previous_failure) * n / (n + PRIOR_ITEMS)
    sample = [row[index] for row in parsed.helps_logits]  # rows checked on load: one value per step
    if prompts is not None:
        reference = EVALUATION_PROMPTS
        logits = [step.helps.logit(parsed.features(p or "")) for p, _, _ in pairs]
    elif sample:
        reference, logits = TRAINING_SAMPLE, sample
    else:
        reference, logits = INTERCEPT_ONLY, [step.helps.bias]
    before = _mean_probability(logits, 0.0)
    target = min(1 - _LIMIT, max(_LIMIT, before + change))
    low, high = -30.0, 30.0
    for _ in range(60):
        middle = (low + high) / 2
        if _mean_probability(logits, middle) < target:
            low = middle
        else:
            high = middle
    shift = (low + high) / 2
    after = _mean_probability(logits, shift)
    learned = copy.deepcopy(model)
    wire_step = learned["steps"][index]
    wire_step["helps"]["bias"] = round(step.helps.bias + shift, 6)
    moved = after - before
    learned["calibration"] = [
        [round(v + moved, 4) if k == index else v for k, v in enumerate(row)] for row in learned.get("calibration", [])
    ]
    if "helpsLogits" in learned:
        # The step's logits move by exactly the intercept's shift: the next prompt-free
        # recalibration starts from this model's own.
        learned["helpsLogits"] = [
            [round(v + shift, 4) if k == index else v for k, v in enumerate(row)] for row in learned["helpsLogits"]
        ]
    summary = Recalibration(
        rung=rung, items=n, failure_rate=failure, previous_failure_rate=previous_failure,
        intercept_before=step.helps.bias, intercept_after=wire_step["helps"]["bias"],
        mean_helps_before=before, mean_helps_after=after, reference=reference, reference_size=len(logits),
    )
    info = dict(learned.get("info") or {})
    info["recalibrated"] = {
        "rung": rung, "items": n, "failureRate": round(failure, 4), "previousFailureRate": round(previous_failure, 4),
        "interceptBefore": round(step.helps.bias, 6), "interceptAfter": wire_step["helps"]["bias"], "reference": reference,
    }
    learned["info"] = info
    return learned, summary
