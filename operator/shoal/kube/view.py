"""The operator's in-memory view of the cluster: everything a reconcile reads.

Watches keep the view current (the controller feeds it from kopf indexes, which kopf fills
from one list-and-watch per kind before it runs any handler), so a reconcile reads its
world from memory and sends the API server only the writes that change something. The
view is plain mappings from a key to the objects filed under it, so a test builds one from
dicts and lists, with no emulator of the API server.

What each mapping holds, and under which key:

    tiers, policies         (namespace, name)  -> [the object]
    deployments, services,
    pdbs, config_maps       (namespace, name)  -> [the object]   (config_maps: see slim_config_map)
    tier_pods               (namespace, tier)  -> [serving pods, slimmed]
    tier_names, policy_names  namespace        -> [names]
    job_pods                (namespace, job)   -> [evaluation pods, slimmed]
    eval_jobs               (namespace, tier)  -> [evaluation Jobs]

Children, pods and evaluation Jobs are kept packed: as compact JSON text (see `pack`),
unpacked each time a reconcile reads one. A thousand tiers' Deployments, pods, Services,
PodDisruptionBudgets and ConfigMaps take about 65 MB as Python dicts and about 15 MB as
text, and a pass unpacks only the few it reads (tens of microseconds each). Tiers and
policies stay dicts: the autoscaler's loop and the watch events read them all the time.

Secrets are not in the view on purpose: watching them would need list/watch on every
Secret of the watched namespaces. A reconcile GETs the few Secrets its spec names.

Writes go through `remember`: the object the API server returned is kept until the watch
delivers that version (or a newer one), so a reconcile that runs before the watch event
does not act on what it already changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]
Store = Mapping[Key, Iterable[dict[str, Any]]]
# An object as compact JSON text (`pack`).
Packed = str
PackedStore = Mapping[Key, Iterable[Packed]]

# How long a written object is trusted over the watch's view when the watch has not shown
# it at all (it may have been deleted since): the watch delivers within milliseconds.
REMEMBER_SECONDS = 10.0

KINDS = {
    "ModelTier": "tiers",
    "RoutePolicy": "policies",
    "Deployment": "deployments",
    "Service": "services",
    "PodDisruptionBudget": "pdbs",
    "ConfigMap": "config_maps",
}


# Kinds whose store holds packed objects.
PACKED = frozenset({"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"})


def pack(obj: dict[str, Any]) -> Packed:
    """`obj` as compact JSON text, the form the view keeps children in."""
    return json.dumps(obj, separators=(",", ":"))


def unpack(text: Packed) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(text)
    return result


def _resource_version(obj: dict[str, Any] | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` without metadata.managedFields (a shallow copy where it had them)."""
    meta = obj.get("metadata")
    if not meta or "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def slim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """A pod as the controller reads it: labels, deletion, status (not the spec)."""
    meta = pod.get("metadata") or {}
    return {
        "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations", "deletionTimestamp", "resourceVersion") if k in meta},
        "status": pod.get("status") or {},
    }


def slim_config_map(cm: dict[str, Any]) -> dict[str, Any]:
    """Shoal's own ConfigMaps whole (they are compared before applying); anyone else's by
    key names only, since a reference needs only the keys to resolve."""
    meta = cm.get("metadata") or {}
    if (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") == "shoal":
        return dict(cm)
    keys = list((cm.get("data") or {}).keys()) + list((cm.get("binaryData") or {}).keys())
    return {"metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion") if k in meta}, "data": dict.fromkeys(keys, "")}


@dataclass
class View:
    tiers: Store = field(default_factory=dict)
    policies: Store = field(default_factory=dict)
    deployments: PackedStore = field(default_factory=dict)
    services: PackedStore = field(default_factory=dict)
    pdbs: PackedStore = field(default_factory=dict)
    config_maps: PackedStore = field(default_factory=dict)
    tier_pods: PackedStore = field(default_factory=dict)
    job_pods: PackedStore = field(default_factory=dict)
    eval_jobs: PackedStore = field(default_factory=dict)
    # Namespace -> names of its ModelTiers and RoutePolicies (for a policy's lookups).
    tier_names: Mapping[str, Iterable[str]] = field(default_factory=dict)
    policy_names: Mapping[str, Iterable[str]] = field(default_factory=dict)
    seconds: Callable[[], float] = time.monotonic
    _written: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = field(default_factory=dict)

    # --- reads -----------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The newest known version of one object, or None."""
        store = getattr(self, KINDS[kind])
        watched = next(iter(store.get((namespace, name), ())), None)
        if watched is not None and kind in PACKED:
            watched = unpack(watched)
        remembered = self._written.get((kind, namespace, name))
        if remembered is None:
            return watched
        when, obj = remembered
        if watched is None:
            if self.seconds() - when < REMEMBER_SECONDS:
                return obj
        elif _resource_version(obj) > _resource_version(watched):
            return obj
        del self._written[(kind, namespace, name)]
        return watched

    def tier(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("ModelTier", namespace, name)

    def policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get("RoutePolicy", namespace, name)

    def tiers_in(self, namespace: str) -> list[dict[str, Any]]:
        names = sorted(set(self.tier_names.get(namespace, ())))
        return [t for n in names if (t := self.tier(namespace, n)) is not None]

    def policies_in(self, namespace: str) -> list[dict[str, Any]]:
        names = sorted(set(self.policy_names.get(namespace, ())))
        return [p for n in names if (p := self.policy(namespace, n)) is not None]

    def pods(self, namespace: str, tier: str) -> list[dict[str, Any]]:
        return sorted((unpack(p) for p in self.tier_pods.get((namespace, tier), ())), key=lambda p: p["metadata"]["name"])

    def evaluation_jobs(self, namespace: str, tier: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        jobs = sorted((unpack(j) for j in self.eval_jobs.get((namespace, tier), ())), key=lambda j: j["metadata"]["name"])
        return [(job, [unpack(p) for p in self.job_pods.get((namespace, job["metadata"]["name"]), ())]) for job in jobs]

    def evaluation_job_names(self, namespace: str, tier: str) -> list[str]:
        """The names of ModelTier `tier`'s evaluation Jobs (without reading their pods)."""
        return sorted(unpack(j)["metadata"]["name"] for j in self.eval_jobs.get((namespace, tier), ()))

    def config_map_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        cm = self.get("ConfigMap", namespace, name)
        if cm is None:
            return None
        return frozenset((cm.get("data") or {}).keys()) | frozenset((cm.get("binaryData") or {}).keys())

    # --- writes ----------------------------------------------------------------------

    def remember(self, obj: dict[str, Any]) -> None:
        """Keep what the API server returned for a write until the watch shows it."""
        kind = obj.get("kind")
        meta = obj.get("metadata") or {}
        if kind and meta.get("name"):
            self._written[(kind, meta.get("namespace") or "", meta["name"])] = (self.seconds(), without_managed_fields(obj))

    def prune(self) -> None:
        """Forget written objects the watch has long had time to show."""
        now = self.seconds()
        for key in [k for k, (when, _) in self._written.items() if now - when >= 6 * REMEMBER_SECONDS]:
            del self._written[key]

    def recently_written(self, kind: str, namespace: str, name: str) -> bool:
        """Whether this operator wrote the object moments ago (the watch may not show it yet)."""
        remembered = self._written.get((kind, namespace, name))
        if remembered is not None and self.seconds() - remembered[0] >= REMEMBER_SECONDS:
            del self._written[(kind, namespace, name)]
            return False
        return remembered is not None

