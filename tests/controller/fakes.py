"""An in-memory stand-in for the API server's write side, for orchestration unit tests.

The reconcilers read their world from a `View` built of plain dicts; this fake records
every request they send (so a test can assert the exact writes, and that there are no
reads) and answers like the API server would: an applied object comes back with a new
resourceVersion, a status patch comes back as the whole object. `deliver()` plays the
watch: it puts what was written into the view's stores.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shoal.kube.errors import KubeError
from shoal.kube.view import KINDS, PACKED, View, pack


def tier_body(name: str = "small", *, namespace: str = "llm", generation: int = 1, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "ModelTier",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": generation, "resourceVersion": "1"},
        "spec": {
            "model": {"name": "m", "source": "hf://org/model"},
            "resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}, "cpu": "1", "memory": "4Gi"},
            "replicas": {"min": 1, "max": 2},
        },
    }
    body["spec"].update(spec)
    return body


def policy_body(name: str, tiers: list[str], *, namespace: str = "llm", generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "RoutePolicy",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": generation, "resourceVersion": "1"},
        "spec": {"tiers": [{"name": t, "modelTierRef": {"name": t}} for t in tiers]},
    }


def view_of(*objects: dict[str, Any], clock: Callable[[], float] = lambda: 0.0) -> View:
    """A view holding `objects` (ModelTiers, RoutePolicies, children), as the watches would."""
    view = View(
        tiers={}, policies={}, deployments={}, services={}, pdbs={}, config_maps={},
        tier_pods={}, job_pods={}, eval_jobs={}, tier_names={}, policy_names={}, seconds=clock,
    )
    for obj in objects:
        put(view, obj)
    return view


def put(view: View, obj: dict[str, Any]) -> None:
    """What a watch event does to the view: file the object under its key."""
    meta = obj["metadata"]
    ns, name = meta.get("namespace", ""), meta["name"]
    kind = obj["kind"]
    if kind == "Pod":
        view.tier_pods.setdefault((ns, meta["labels"]["shoal.dev/tier"]), []).append(pack(obj))  # type: ignore[attr-defined]
        return
    getattr(view, KINDS[kind])[(ns, name)] = [pack(obj) if kind in PACKED else obj]
    if kind == "ModelTier":
        names = view.tier_names.setdefault(ns, [])  # type: ignore[attr-defined]
        if name not in names:
            names.append(name)
    if kind == "RoutePolicy":
        names = view.policy_names.setdefault(ns, [])  # type: ignore[attr-defined]
        if name not in names:
            names.append(name)


class FakeKube:
    """Records requests; answers as the API server does. `fail` makes the next call of a
    method raise (a dropped connection, a conflict)."""

    def __init__(
        self,
        view: View,
        secrets: dict[tuple[str, str], dict[str, Any]] | None = None,
        config_maps: dict[tuple[str, str], dict[str, Any]] | None = None,
    ) -> None:
        self.view = view
        self.secrets = secrets or {}
        # Whole ConfigMaps a GET returns (the view keeps other people's as key names only).
        self.config_maps = config_maps or {}
        self.calls: list[tuple[Any, ...]] = []
        self.events: list[dict[str, Any]] = []
        self.written: list[dict[str, Any]] = []
        # Every Job applied, as stored (the view's Job store is filled by the tests, as the
        # Jobs' watch with their status would).
        self.jobs: list[dict[str, Any]] = []
        self.fail: dict[str, KubeError] = {}
        # Kinds whose apply waits until the test sets the event (a slow API server).
        self.hold: dict[str, asyncio.Event] = {}
        self._rv = 100

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _maybe_fail(self, method: str, kind: str | None = None) -> None:
        """Raise what `fail` holds for "method:Kind" or "method", once."""
        for key in (f"{method}:{kind}", method):
            if key in self.fail:
                raise self.fail.pop(key)

    def writes(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] != "get"]

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind, name))
        self._maybe_fail("get")
        if kind == "ConfigMap":
            return copy.deepcopy(self.config_maps.get((namespace or "", name)))
        return copy.deepcopy(self.secrets.get((namespace or "", name))) if kind == "Secret" else None

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("apply", obj["kind"], obj["metadata"]["name"]))
        if obj["kind"] in self.hold:
            await self.hold[obj["kind"]].wait()
        self._maybe_fail("apply", obj["kind"])
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = self._next_rv()
        stored["metadata"].setdefault("generation", 1)
        self.written.append(stored)
        if obj["kind"] == "Job":
            self.jobs.append(stored)
        return stored

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch-status", kind, name, tuple(sorted(status))))
        self._maybe_fail("patch_status")
        current = copy.deepcopy(self.view.get(kind, namespace, name))
        merged = {**(current.get("status") or {}), **status}
        current["status"] = {k: v for k, v in merged.items() if v is not None}
        current["metadata"]["resourceVersion"] = self._next_rv()
        self.written.append(current)
        return current

    async def event(self, involved: dict[str, Any], type_: str, reason: str, message: str, now: datetime | None = None) -> None:
        self.calls.append(("event", involved["kind"], involved["metadata"]["name"], reason))
        self._maybe_fail("event")
        self.events.append({"type": type_, "reason": reason, "message": message, "resourceVersion": involved["metadata"].get("resourceVersion")})

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", kind, name))

    async def scale(self, api_version: str, kind: str, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        self.calls.append(("scale", kind, name, replicas))
        self._maybe_fail("scale")
        return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": self._next_rv()}, "spec": {"replicas": replicas}}

    def deliver(self) -> None:
        """The watches catch up: everything written so far is in the view's stores."""
        for obj in self.written:
            if obj["kind"] in KINDS:
                put(self.view, obj)
        self.written.clear()
