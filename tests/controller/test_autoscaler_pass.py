"""One autoscaling pass over the view: no reads, the Event before the scale, quiet when steady."""

from __future__ import annotations

import asyncio

import httpx

from shoal.controller.autoscaler import Autoscaler
from shoal.controller.clock import FakeClock

from .fakes import FakeKube, put, tier_body, view_of


def deployment(replicas: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "small", "namespace": "llm", "resourceVersion": "5", "generation": 1},
            "spec": {"replicas": replicas}}


def harness(body: dict, replicas: int):
    view = view_of(body, deployment(replicas))
    kube = FakeKube(view)
    clock = FakeClock()
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(503)))
    return view, kube, clock, Autoscaler(kube, view, http, clock)


def test_a_fixed_size_tier_is_scaled_once_with_its_event_first_then_left_alone():
    body = tier_body(autoscaling={"engine": "none"}, replicas={"min": 1, "max": 4, "desired": 3})
    view, kube, clock, autoscaler = harness(body, replicas=1)
    asyncio.run(autoscaler.run(view.tier("llm", "small")))
    assert [c[:4] for c in kube.calls] == [
        ("event", "ModelTier", "small", "ScaledUp"),
        ("scale", "Deployment", "small", 3),
        ("patch-status", "ModelTier", "small", ("autoscaler", "conditions")),
    ]
    # The view shows the new size at once (a reconcile in between keeps it).
    assert view.get("Deployment", "llm", "small")["spec"]["replicas"] == 3
    kube.deliver()
    put(view, {**deployment(3), "metadata": {**deployment(3)["metadata"], "resourceVersion": "200"}})
    kube.calls.clear()
    for _ in range(3):
        clock.advance(5)
        asyncio.run(autoscaler.run(view.tier("llm", "small")))
    assert kube.calls == []


def test_a_tier_is_due_once_per_metrics_period():
    body = tier_body(autoscaling={"metricsPeriodSeconds": 10})
    view, kube, clock, autoscaler = harness(body, replicas=1)
    assert autoscaler.due("llm", "small", body)
    asyncio.run(autoscaler.run(body))
    assert not autoscaler.due("llm", "small", body)
    clock.advance(9)
    assert not autoscaler.due("llm", "small", body)
    clock.advance(1)
    assert autoscaler.due("llm", "small", body)
    # No pod is ready to report load: the size is held, and nothing was read from the API.
    assert [c[0] for c in kube.calls] == ["patch-status"]
