"""kwok's configuration: its default Stages plus Shoal's own, composed at cluster start.

kwok picks at random (by weight) among the Stages that match an object, so a Shoal Stage
that replaces one of kwok's for some objects must also be excluded from kwok's Stage by
selector: :func:`kwok_config` adds that exclusion.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

# Job pods with this annotation are finished by shoal-job-pod-exit, not pod-complete.
SIMULATE_EXIT_CODE_ANNOTATION = "shoal.dev/simulate-exit-code"
SIMULATE_TERMINATION_MESSAGE_ANNOTATION = "shoal.dev/simulate-termination-message"
_HAS_SIMULATED_EXIT = f'.metadata.annotations["{SIMULATE_EXIT_CODE_ANNOTATION}"]'
# Job pods with this annotation are never finished: an evaluation that hangs.
SIMULATE_HOLD_ANNOTATION = "shoal.dev/simulate-hold"
_HAS_HOLD = f'.metadata.annotations["{SIMULATE_HOLD_ANNOTATION}"]'


def shoal_stages() -> list[dict[str, Any]]:
    """Shoal's Stages (package data in ``devcluster/stages/``), in file name order."""
    folder = resources.files("shoal.devcluster").joinpath("stages")
    documents: list[dict[str, Any]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            documents += [d for d in yaml.safe_load_all(entry.read_text()) if d]
    return documents


# With hold_evaluation_pods, kwok never finishes an evaluation Job's pod by itself: the
# dev cluster's fleet runs the Job's program and hands its outcome to shoal-job-pod-exit.
_COMPONENT = '.metadata.labels["app.kubernetes.io/component"]'


def kwok_config(default_stages: str, extra: list[dict[str, Any]] | None = None, *,
                hold_evaluation_pods: bool = False) -> str:
    """kwok's default Stages, with pod-complete leaving simulated exits alone, plus
    ``extra`` (Shoal's Stages unless given). With ``hold_evaluation_pods``, pod-complete
    also leaves Shoal's evaluation pods alone (something else decides how they end)."""
    documents = [d for d in yaml.safe_load_all(default_stages) if d]
    names = [d.get("metadata", {}).get("name") for d in documents]
    if "pod-complete" not in names:
        raise ValueError("kwok's default stages have no pod-complete stage")
    for document in documents:
        if document["metadata"]["name"] == "pod-complete":
            expressions = document["spec"]["selector"]["matchExpressions"]
            expressions.append({"key": _HAS_SIMULATED_EXIT, "operator": "DoesNotExist"})
            expressions.append({"key": _HAS_HOLD, "operator": "DoesNotExist"})
            if hold_evaluation_pods:
                expressions.append({"key": _COMPONENT, "operator": "NotIn", "values": ["evaluation"]})
    documents += shoal_stages() if extra is None else extra
    return yaml.safe_dump_all(documents, sort_keys=False, width=200)
