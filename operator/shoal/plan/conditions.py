"""Helpers to build a condition list the Kubernetes way.

`lastTransitionTime` moves only when a condition's status flips; reason and message may
change under a stable transition time. Conditions are kept in a fixed order so that a
status rebuilt from the same observations compares equal to the stored one and is not
written again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shoal.api.times import rfc3339

ORDER = ["Ready", "Available", "Progressing", "ResolvedRefs", "ScalingActive", "Evaluated", "AdaptersReady", "Drifting"]


@dataclass(frozen=True)
class EventSpec:
    """A Kubernetes Event to record about the object."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Cond:
    type: str
    status: str
    reason: str
    message: str


def merge_conditions(
    previous: list[dict[str, Any]] | None,
    wanted: list[Cond],
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """The condition list to store: `wanted`, with transition times carried over."""
    before = {c.get("type"): c for c in previous or []}
    out: list[dict[str, Any]] = []
    for cond in sorted(wanted, key=lambda c: ORDER.index(c.type) if c.type in ORDER else len(ORDER)):
        old = before.get(cond.type)
        if old is not None and old.get("status") == cond.status and old.get("lastTransitionTime"):
            since = old["lastTransitionTime"]
        else:
            since = rfc3339(now)
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": since,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    return out


def update_conditions(
    previous: list[dict[str, Any]] | None,
    wanted: list[Cond],
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """Replace the conditions of the types in `wanted`; keep the others as they are.

    Several planners own conditions of one object (the tier's status, the autoscaler's
    ScalingActive, the rollout's Evaluated); each rewrites only its own, and the fixed
    order keeps the list stable whichever of them wrote last.
    """
    owned = {c.type for c in wanted}
    kept = [c for c in previous or [] if c.get("type") not in owned]
    merged = kept + merge_conditions(previous, wanted, generation, now)
    return sorted(merged, key=lambda c: ORDER.index(c["type"]) if c.get("type") in ORDER else len(ORDER))


def status_merge_patch(
    wanted: dict[str, Any], stored: dict[str, Any] | None, rebuilt: frozenset[str] = frozenset()
) -> dict[str, Any] | None:
    """The merge patch that turns `stored` into `wanted`, or None when nothing differs.

    Fields in `rebuilt` are recomputed from observations on every pass: one that is no
    longer reported is removed (merge-patch null). Other stored fields are left alone.
    """
    stored = stored or {}
    patch = {k: v for k, v in wanted.items() if stored.get(k) != v}
    for key in stored:
        if key not in wanted and key in rebuilt:
            patch[key] = None
    return patch or None


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond
    return None


def flips(previous: list[dict[str, Any]] | None, current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Conditions whose status or reason differs from before: each deserves an Event."""
    before = {c.get("type"): c for c in previous or []}
    changed = []
    for cond in current:
        old = before.get(cond["type"])
        if old is None or old.get("status") != cond["status"] or old.get("reason") != cond["reason"]:
            changed.append(cond)
    return changed


def as_sentence(text: str) -> str:
    """``text`` ending as a sentence, so a message quoted inside a condition's message
    (an evaluation's, an engine's) does not run into the sentence after it."""
    text = text.strip()
    return text if not text or text.endswith((".", "!", "?")) else text + "."
