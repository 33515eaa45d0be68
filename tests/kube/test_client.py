"""The API client's translation of answers, and Events that are recorded once."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import httpx
import pytest
from kubernetes import client as k8s_client
from prometheus_client import CollectorRegistry

from shoal.kube.client import Connection, Kube
from shoal.kube.errors import NamespaceTerminating

TIER = {
    "apiVersion": "shoal.dev/v1alpha1",
    "kind": "ModelTier",
    "metadata": {"name": "small", "namespace": "llm", "uid": "u-1", "resourceVersion": "42"},
}
NOW = datetime(2026, 11, 18, 11, 6, 40, 123456, tzinfo=timezone.utc)


def kube(handler) -> Kube:
    cfg = k8s_client.Configuration()
    cfg.host = "https://api.test"
    return Kube(Connection("https://api.test", cfg), registry=CollectorRegistry(), transport=httpx.MockTransport(handler))


def test_the_same_event_about_the_same_version_is_created_once():
    names: set[str] = set()
    bodies: list[dict] = []

    def api(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if body["metadata"]["name"] in names:
            return httpx.Response(409, json={"kind": "Status", "reason": "AlreadyExists", "message": "exists"})
        names.add(body["metadata"]["name"])
        return httpx.Response(201, json=body)

    k = kube(api)

    async def record_twice_then_a_new_version():
        await k.event(TIER, "Normal", "Promoted", "ckpt-2 now serves traffic.", now=NOW)
        await k.event(TIER, "Normal", "Promoted", "ckpt-2 now serves traffic.", now=NOW)  # the retried pass
        newer = {**TIER, "metadata": {**TIER["metadata"], "resourceVersion": "43"}}
        await k.event(newer, "Normal", "Promoted", "ckpt-2 now serves traffic.", now=NOW)

    asyncio.run(record_twice_then_a_new_version())
    assert len(bodies) == 3
    assert bodies[0]["metadata"]["name"] == bodies[1]["metadata"]["name"] != bodies[2]["metadata"]["name"]
    assert bodies[0]["metadata"]["name"].startswith("small.")
    assert len(names) == 2
    # One RFC 3339 format everywhere: whole seconds, Z.
    assert bodies[0]["firstTimestamp"] == "2026-11-18T11:06:40Z"


def test_a_write_into_a_terminating_namespace_is_its_own_error():
    def api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={
            "kind": "Status", "reason": "Forbidden", "code": 403,
            "message": 'deployments.apps "small" is forbidden: unable to create new content in namespace llm because it is being terminated',
            "details": {"name": "small", "kind": "deployments", "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]},
        })

    with pytest.raises(NamespaceTerminating, match="being terminated"):
        asyncio.run(kube(api).apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "small", "namespace": "llm"}}))


@pytest.mark.parametrize("max_in_flight", [3, 20])  # one client; three (8 + 8 + 4 connections)
def test_no_more_requests_than_max_in_flight_are_sent_at_once(max_in_flight):
    in_flight: list[int] = [0]
    most: list[int] = [0]
    seen: list[str] = []

    async def api(request: httpx.Request) -> httpx.Response:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        for _ in range(5):  # hand the loop to the other callers while this one is "in flight"
            await asyncio.sleep(0)
        in_flight[0] -= 1
        seen.append(request.url.path.rsplit("/", 1)[-1])
        return httpx.Response(200, json={"kind": "Secret", "metadata": {"name": "x"}})

    cfg = k8s_client.Configuration()
    cfg.host = "https://api.test"
    k = Kube(Connection("https://api.test", cfg), registry=CollectorRegistry(),
             transport=httpx.MockTransport(api), max_in_flight=max_in_flight)

    async def thirty_at_once():
        await asyncio.gather(*(k.get("v1", "Secret", "llm", f"s{i}") for i in range(30)))

    asyncio.run(thirty_at_once())
    assert most[0] == max_in_flight
    assert sorted(seen) == sorted(f"s{i}" for i in range(30))


def test_service_applies_have_a_lane_of_their_own_beside_the_other_requests():
    started: list[str] = []
    release = asyncio.Event()

    async def api(request: httpx.Request) -> httpx.Response:
        started.append(request.url.path.split("/")[-2])  # the resource: services or configmaps
        await release.wait()
        return httpx.Response(200, json=json.loads(request.content))

    cfg = k8s_client.Configuration()
    cfg.host = "https://api.test"
    k = Kube(Connection("https://api.test", cfg), registry=CollectorRegistry(),
             transport=httpx.MockTransport(api), max_in_flight=2, service_applies_in_flight=1)

    def obj(kind: str, name: str) -> dict:
        return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "llm"}}

    async def burst():
        writes = [asyncio.create_task(k.apply(obj(kind, f"{kind}-{i}"))) for i in range(3) for kind in ("Service", "ConfigMap")]
        for _ in range(10):
            await asyncio.sleep(0)
        in_flight = sorted(started)
        release.set()
        await asyncio.gather(*writes)
        return in_flight

    # One Service and two ConfigMaps are sent at once: the Services' slot does not take one
    # of the others', and the Services queued behind it do not hold the ConfigMaps back.
    assert asyncio.run(burst()) == ["configmaps", "configmaps", "services"]
    assert sorted(started) == ["configmaps"] * 3 + ["services"] * 3
