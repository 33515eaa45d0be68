"""RoutePolicy -> the ConfigMap of its classifier learned from evaluations.

`<policy>-classifier`, owned by the RoutePolicy, holds:

- `model.json`: the learned model the sidecars load (mounted, optional, beside the user's
  model: render/deployment.py); absent until a promotion taught the classifier, and
  after the user's model changed (the learned one was built on the old one);
- `evaluations.json`: the kept per-item outcomes of the latest promoted evaluations of
  each ModelTier and adapter (plan/learning.py keeps KEEP_PER_TIER) (bitmaps and digests, never prompts; api/outcomes.py). The operator reads
  them as the reference for a later evaluation run without a baseline; nothing mounts them.

Annotations carry what the RoutePolicy status is rebuilt from on every pass (the
ConfigMap is the one owner of these facts): the user's model the learned one builds on,
where the latest recalibration came from, and what the latest promotion did.
"""

from __future__ import annotations

import json
from typing import Any

from shoal.api.naming import (
    CLASSIFIER_BASE_ANNOTATION,
    KEPT_OUTCOMES_KEY,
    LEARNED_AT_ANNOTATION,
    LEARNED_FROM_ANNOTATION,
    LEARNING_MESSAGE_ANNOTATION,
    LEARNED_MODEL_KEY,
    MANAGED_BY,
    POLICY_LABEL,
    child_metadata,
    learned_classifier_configmap_name,
)
from shoal.api.routepolicy import RoutePolicy

def render_learned_classifier(
    policy: RoutePolicy,
    *,
    base: str,
    model: str | None,
    kept: list[dict[str, Any]],
    learned_from: dict[str, Any] | None,
    learned_at: str | None,
    message: str,
) -> dict[str, Any]:
    """The ConfigMap; `model` is the stored model text (None: no learned model)."""
    annotations = {CLASSIFIER_BASE_ANNOTATION: base, LEARNING_MESSAGE_ANNOTATION: message}
    if learned_from is not None:
        annotations[LEARNED_FROM_ANNOTATION] = json.dumps(learned_from, separators=(",", ":"), sort_keys=True)
    if learned_at is not None:
        annotations[LEARNED_AT_ANNOTATION] = learned_at
    data = {KEPT_OUTCOMES_KEY: json.dumps(kept, separators=(",", ":"))}
    if model is not None:
        data[LEARNED_MODEL_KEY] = model
    metadata = child_metadata(
        "RoutePolicy",
        policy,
        learned_classifier_configmap_name(policy.name),
        {
            "app.kubernetes.io/name": "routepolicy",
            "app.kubernetes.io/instance": policy.name,
            "app.kubernetes.io/component": "classifier",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/part-of": "shoal",
            POLICY_LABEL: policy.name,
        },
    )
    metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
