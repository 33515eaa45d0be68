"""Per-item outcomes of an evaluation: which dataset items a checkpoint answered well.

The evaluation program (`shoal eval`) adds them to its termination message beside the
EvaluationRecord, under the key "outcomes"; the operator reads them from the finished
Job's pod to teach the RoutePolicy's classifier (plan/learning.py). They never enter a
status, a log line or a metric: the ModelTier's status.lastEvaluation is the record
without them.

Compact on purpose (Kubernetes keeps at most 4096 bytes of a termination message): one
bit per item in dataset order, base64, for "passed" and for "scored" (an item whose
request failed, or that every scorer skipped, has no outcome). Only the first
MAX_ITEMS items of a dataset are described, 2 x 256 bytes (4 x with a baseline) before
base64. No prompt text leaves the dataset: the operator reads the prompts from the
dataset ConfigMap itself and checks its digest against the record's (a dataset behind a
`uri` teaches from the outcomes alone: plan/learning.py).

An item passed when every scorer that scored it gave at least PASS_SCORE (scores are in
[0, 1]: exact match and the like give 0 or 1, a judge's grade is scaled).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from pydantic import Field, ValidationError

from .base import ShoalModel

MAX_ITEMS = 2048
PASS_SCORE = 0.5
MESSAGE_KEY = "outcomes"


def item_passed(scores: Sequence[float | None]) -> bool | None:
    """One item's outcome from its scores (one per scorer); None when none scored it."""
    known = [s for s in scores if s is not None]
    if not known:
        return None
    return all(s >= PASS_SCORE for s in known)


def _bits(values: Sequence[bool]) -> str:
    raw = bytearray((len(values) + 7) // 8)
    for i, value in enumerate(values):
        if value:
            raw[i // 8] |= 1 << (i % 8)
    return base64.b64encode(bytes(raw)).decode()


def _unbits(text: str, count: int) -> list[bool]:
    raw = base64.b64decode(text, validate=True)
    if len(raw) != (count + 7) // 8:
        raise ValueError(f"a bitmap of {len(raw)} bytes cannot describe {count} items")
    return [bool(raw[i // 8] >> (i % 8) & 1) for i in range(count)]


class ItemOutcomes(ShoalModel):
    """The outcomes of one evaluation, in dataset order (see the module docstring)."""

    items: int = Field(ge=0, le=MAX_ITEMS, description="Dataset items described (the first ones, in dataset order).")
    passed: str = Field(description="Bitmap (base64, item i is bit i % 8 of byte i // 8): the candidate answered the item well.")
    scored: str = Field(description="Bitmap: the candidate's answer to the item was scored.")
    baseline_passed: str | None = Field(default=None, description="Bitmap: the serving checkpoint answered the item well (baseline: serving).")
    baseline_scored: str | None = Field(default=None, description="Bitmap: the serving checkpoint's answer was scored.")

    @classmethod
    def encode(cls, candidate: Sequence[bool | None], baseline: Sequence[bool | None] | None = None) -> ItemOutcomes:
        """From per-item outcomes in dataset order (None: not scored); items past MAX_ITEMS are left out."""
        candidate = list(candidate)[:MAX_ITEMS]
        out = cls(items=len(candidate), passed=_bits([v is True for v in candidate]), scored=_bits([v is not None for v in candidate]))
        if baseline is not None:
            baseline = list(baseline)[: len(candidate)] + [None] * max(0, len(candidate) - len(baseline))
            out = out.model_copy(update={
                "baseline_passed": _bits([v is True for v in baseline]),
                "baseline_scored": _bits([v is not None for v in baseline]),
            })
        return out

    def candidate(self) -> list[bool | None]:
        return [p if s else None for p, s in zip(_unbits(self.passed, self.items), _unbits(self.scored, self.items))]

    def baseline(self) -> list[bool | None] | None:
        if self.baseline_passed is None or self.baseline_scored is None:
            return None
        return [p if s else None for p, s in zip(_unbits(self.baseline_passed, self.items), _unbits(self.baseline_scored, self.items))]


def split_message(message: str) -> tuple[str, ItemOutcomes | None]:
    """A termination message -> (the EvaluationRecord's JSON, the outcomes or None).

    A message that is not a JSON object, or whose outcomes do not parse, is returned as
    it was with no outcomes: the record's own parser says what is wrong with it.
    """
    try:
        data = json.loads(message)
    except ValueError:
        return message, None
    if not isinstance(data, dict) or MESSAGE_KEY not in data:
        return message, None
    raw = data.pop(MESSAGE_KEY)
    try:
        outcomes = ItemOutcomes.model_validate(raw)
        outcomes.candidate()
        outcomes.baseline()
    except (ValidationError, ValueError):
        outcomes = None
    return json.dumps(data, separators=(",", ":")), outcomes
