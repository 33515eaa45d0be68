"""Names, labels and URLs of the objects Shoal creates for a ModelTier or RoutePolicy.

One place so the renderers, the controller (which looks children up) and the router
configuration (which points at other tiers' Services) always agree.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .base import API_VERSION
from .routerconfig import CONFIG_DIR as CONFIG_MOUNT
from .routerconfig import CONFIG_KEY
from .routerconfig import SECRETS_DIR as SECRETS_MOUNT

__all__ = ["CONFIG_KEY", "CONFIG_MOUNT", "SECRETS_MOUNT"]

MANAGED_BY = "shoal"
TIER_LABEL = "shoal.dev/tier"
POLICY_LABEL = "shoal.dev/route-policy"
COMPONENT_INFERENCE = "inference"
COMPONENT_EVALUATION = "evaluation"

SERVICE_PORT = 80


def tier_selector(tier_name: str) -> dict[str, str]:
    """Labels that select a tier's serving pods (not its evaluation Jobs' pods).

    Immutable once a Deployment exists.
    """
    return {"app.kubernetes.io/name": "modeltier", "app.kubernetes.io/component": COMPONENT_INFERENCE, TIER_LABEL: tier_name}


def tier_labels(tier_name: str, component: str = COMPONENT_INFERENCE) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modeltier",
        "app.kubernetes.io/instance": tier_name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "shoal",
        TIER_LABEL: tier_name,
    }


def evaluation_selector(tier_name: str) -> dict[str, str]:
    """Labels that select a tier's evaluation Jobs (and their pods)."""
    return {"app.kubernetes.io/component": COMPONENT_EVALUATION, TIER_LABEL: tier_name}


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def router_configmap_name(tier_name: str) -> str:
    return f"{tier_name}-router"


def learned_classifier_configmap_name(policy_name: str) -> str:
    """The operator's ConfigMap of a RoutePolicy's learned classifier (render/classifier.py)."""
    return f"{policy_name}-classifier"


# Keys of that ConfigMap: the learned model the sidecars load, and the kept per-item
# outcomes of evaluations (read by the operator only; never mounted).
LEARNED_MODEL_KEY = "model.json"
KEPT_OUTCOMES_KEY = "evaluations.json"
# Where the learned model appears in the sidecar's classifier volume.
LEARNED_MODEL_PATH = "learned/model.json"
# Annotations of that ConfigMap, which the RoutePolicy status is rebuilt from.
CLASSIFIER_BASE_ANNOTATION = "shoal.dev/classifier-base"  # "<configmap>/<key>@<resourceVersion>" of the user's model
LEARNED_FROM_ANNOTATION = "shoal.dev/learned-from"  # status.classifier.learnedFrom as JSON
LEARNED_AT_ANNOTATION = "shoal.dev/learned-at"
LEARNING_MESSAGE_ANNOTATION = "shoal.dev/learning-message"  # what the latest promotion did, as a sentence


def service_host(service_name: str, namespace: str) -> str:
    return f"{service_name}.{namespace}.svc"


def tier_endpoint(tier_name: str, namespace: str) -> str:
    """In-cluster base URL of a tier's OpenAI-compatible API (its router sidecar)."""
    return f"http://{service_host(tier_name, namespace)}/v1"


def policy_service_name(policy_name: str) -> str:
    return f"{policy_name}-route"


def policy_endpoint(policy_name: str, namespace: str) -> str:
    return f"http://{service_host(policy_service_name(policy_name), namespace)}/v1"


def child_metadata(owner_kind: str, owner: Any, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """Metadata of an object Shoal creates for `owner` (a ModelTier or RoutePolicy):
    in the owner's namespace, owned by it so deleting the owner collects it."""
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(owner_kind, owner.name, owner.uid)],
    }


def owner_reference(kind: str, name: str, uid: str | None) -> dict[str, Any]:
    """A controller owner reference, so deleting the owner garbage-collects the child."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


# A request one router sidecar forwards to another tier's Service carries this header;
# the receiving sidecar serves it with its own engine and never routes it on.
HOP_HEADER = "x-shoal-hop"
# The container of an evaluation Job that runs `shoal eval`.
EVAL_CONTAINER = "eval"
# The evaluation container's environment variable holding its EvaluationSpec as JSON.
EVAL_SPEC_ENV = "SHOAL_EVAL_SPEC"
# The checkpoint a pod template (Deployment) or evaluation Job is for.
CHECKPOINT_ANNOTATION = "shoal.dev/checkpoint"
# The adapter (its name and candidate source) an adapter's evaluation Job is for. A Job
# with ADAPTER_ANNOTATION evaluates an adapter, never a checkpoint.
ADAPTER_ANNOTATION = "shoal.dev/adapter"
ADAPTER_SOURCE_ANNOTATION = "shoal.dev/adapter-source"
# On an adapter's evaluation Job: the base checkpoint its engine serves.
BASE_CHECKPOINT_ANNOTATION = "shoal.dev/base-checkpoint"


def eval_job_name(tier_name: str, checkpoint: str) -> str:
    """The evaluation Job of one candidate checkpoint: ``<tier>-eval-<8 hex of sha256>``.

    Deterministic, so an operator restarted at any step finds (or re-creates) the same
    Job instead of starting a second evaluation of the same checkpoint.
    """
    return f"{tier_name}-eval-{hashlib.sha256(checkpoint.encode()).hexdigest()[:8]}"


def adapter_eval_job_name(tier_name: str, adapter: str, source: str, base: str, *, base_change: bool = False) -> str:
    """The evaluation Job of one source of an adapter on one base checkpoint:
    ``<tier>-lora-<adapter, as a DNS label, shortened>-<8 hex of sha256(adapter, source, base)>``.

    ``base_change`` marks the Job that evaluates the serving source on a candidate base
    checkpoint (plan/adapters.py), so it never shares a name with a candidate source's
    Job even for the same source and base. Deterministic like `eval_job_name`, at most 63
    characters (a Job's name is also a label value of its pods). The hash covers the exact
    adapter name, so two adapters whose names shorten to the same label still get two Jobs.
    """
    role = "base-change" if base_change else "candidate"
    digest = hashlib.sha256(f"{adapter}\0{source}\0{base}\0{role}".encode()).hexdigest()[:8]
    room = 63 - len(tier_name) - len("-lora--") - len(digest)
    slug = re.sub(r"[^a-z0-9-]+", "-", adapter.lower())[: max(0, room)].strip("-")
    return f"{tier_name}-lora-{slug}-{digest}" if slug else f"{tier_name}-lora-{digest}"
