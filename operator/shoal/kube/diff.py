"""Whether applying a manifest would change anything, so steady state makes no writes."""

from __future__ import annotations

from typing import Any


def contains(observed: Any, desired: Any) -> bool:
    """True when every field of `desired` is present with the same value in `observed`.

    The API server adds defaults (probe thresholds, dnsPolicy, clusterIP...), so the
    stored object is a superset of what was applied; lists are compared element by
    element, since their order is part of what was asked.
    """
    if isinstance(desired, dict):
        if not isinstance(observed, dict):
            return False
        return all(k in observed and contains(observed[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(observed) != len(desired):
            return False
        return all(contains(o, d) for o, d in zip(observed, desired))
    if isinstance(desired, (int, float)) and isinstance(observed, str) or isinstance(desired, str) and isinstance(observed, (int, float)):
        return str(desired) == str(observed)
    return observed == desired


def needs_apply(observed: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    if observed is None:
        return True
    for section in ("spec", "data"):
        if section in desired and not contains(observed.get(section), desired[section]):
            return True
    meta_d, meta_o = desired.get("metadata", {}), observed.get("metadata", {})
    for key in ("labels", "annotations"):
        if key in meta_d and not contains(meta_o.get(key) or {}, meta_d[key]):
            return True
    if "ownerReferences" in meta_d:
        uids = {r.get("uid") for r in meta_o.get("ownerReferences") or []}
        if not all(r.get("uid") in uids for r in meta_d["ownerReferences"]):
            return True
    return False
