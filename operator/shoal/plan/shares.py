"""The held target shares of a RoutePolicy, as its status reports them: a pure summary.

Each router sidecar holds `spec.classifier.targetShares` on its own (router/share.py) and
exports, per held tier, the share it kept in its last full window of decisions and the
threshold it uses now. The policy's status shows, per tier, the target and the mean of
those over the sidecars that report them (rounded to 3 decimals, so a status write
happens only when a value moves by at least that). The decisions a sidecar makes are
not weighed: the sidecars behind one Service see similar traffic, and the count of
sidecars in the mean is reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.api.routepolicy import RoutePolicy

__all__ = ["SidecarShares", "share_status"]


@dataclass(frozen=True)
class SidecarShares:
    """One sidecar's held-share gauges, by tier."""

    observed: dict[str, float] = field(default_factory=dict)
    threshold: dict[str, float] = field(default_factory=dict)


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(sum(finite) / len(finite), 3) if finite else None


def share_status(policy: RoutePolicy, sidecars: Mapping[str, SidecarShares]) -> list[dict[str, Any]] | None:
    """status.targetShares in wire form, in ladder order (None: the policy holds no share)."""
    classifier = policy.spec.classifier
    if classifier.mode != "enabled" or not classifier.target_shares:
        return None
    out = []
    for rung in policy.spec.tiers:
        if rung.name not in classifier.target_shares:
            continue
        observed = [s.observed[rung.name] for s in sidecars.values() if rung.name in s.observed]
        entry: dict[str, Any] = {"tier": rung.name, "targetShare": classifier.target_shares[rung.name], "sidecars": len(observed)}
        mean = _mean(observed)
        if mean is not None:
            entry["observedShare"] = mean
        threshold = _mean([s.threshold[rung.name] for s in sidecars.values() if rung.name in s.threshold])
        if threshold is not None:
            entry["threshold"] = threshold
        out.append(entry)
    return out
