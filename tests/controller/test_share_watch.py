"""The share watch over the view: the sidecars' held-share gauges in, status.targetShares out."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from shoal.api.modeltier import ModelTier
from shoal.api.routepolicy import RoutePolicy
from shoal.controller.clock import FakeClock
from shoal.controller.metrics_source import parse_held_shares
from shoal.controller.shares import ShareWatch
from shoal.plan.shares import SidecarShares, share_status
from shoal.router.classifier import Example, train_difficulty
from shoal.router.share import HeldShareModel, ShareCollector

from .fakes import FakeKube, policy_body, tier_body, view_of

EASY = [f"add {i} and {i + 3} please" for i in range(300)]
HARD = [f"prove lemma {i} about compact manifolds rigorously" for i in range(300)]


@pytest.fixture(scope="module")
def model():
    examples = [Example(p, {"small": True, "large": True}) for p in EASY[:60]]
    examples += [Example(p, {"small": False, "large": True}) for p in HARD[:60]]
    return train_difficulty(examples, ["small", "large"], bits=10, epochs=3, calibration_folds=3)


def exposition(held: HeldShareModel) -> str:
    registry = CollectorRegistry()
    registry.register(ShareCollector(lambda: held))
    return generate_latest(registry).decode()


def pod(name: str, tier: str, ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "llm", "labels": {"shoal.dev/tier": tier}},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}


def test_a_sidecars_gauges_parse_into_its_observed_share_and_threshold(model):
    held = HeldShareModel.hold(model, {"small": 0.5}, window=100)
    assert parse_held_shares(exposition(held)) == SidecarShares({}, {"small": held.controller.thresholds()[0]})
    for prompt in EASY[:50] + HARD[:50]:
        held.predict(prompt)
    parsed = parse_held_shares(exposition(held))
    assert parsed.observed == {"small": held.controller.last_observed["small"]}
    assert 0.4 <= parsed.observed["small"] <= 0.6


def test_the_status_averages_the_sidecars_in_ladder_order_and_leaves_out_what_is_unknown():
    body = policy_body("chat", ["small", "medium", "large"])
    body["spec"]["classifier"] = {"mode": "enabled", "configMapRef": {"name": "m", "key": "model.json"},
                                  "targetShares": {"medium": 0.15, "small": 0.7}}
    policy = RoutePolicy.from_body(body)
    sidecars = {
        "a": SidecarShares({"small": 0.72, "medium": 0.1}, {"small": 0.05, "medium": float("inf")}),
        "b": SidecarShares({"small": 0.6805}, {"small": 0.0612}),
        "c": SidecarShares({}, {"small": 0.07}),
    }
    assert share_status(policy, sidecars) == [
        {"tier": "small", "targetShare": 0.7, "sidecars": 2, "observedShare": 0.7, "threshold": 0.06},
        {"tier": "medium", "targetShare": 0.15, "sidecars": 1, "observedShare": 0.1},
    ]
    body["spec"]["classifier"]["targetShares"] = {}
    assert share_status(RoutePolicy.from_body(body), sidecars) is None


def test_the_watch_writes_the_policy_status_when_the_shares_move_and_not_otherwise(model):
    policy = policy_body("chat", ["small", "large"])
    policy["spec"]["classifier"] = {"mode": "enabled", "configMapRef": {"name": "m", "key": "model.json"}, "targetShares": {"small": 0.5}}
    view = view_of(tier_body("small", router={"routePolicy": "chat"}), tier_body("large", router={"routePolicy": "chat"}), policy,
                   pod("small-0", "small", "10.0.0.1"), pod("large-0", "large", "10.0.0.2"))
    kube = FakeKube(view)
    clock = FakeClock()
    held = {ip: HeldShareModel.hold(model, {"small": 0.5}, window=100) for ip in ("10.0.0.1", "10.0.0.2")}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text=exposition(held[request.url.host])))
    watch = ShareWatch(kube, view, httpx.AsyncClient(transport=transport), clock)

    def check(tier: str = "small") -> None:
        kube.calls.clear()
        body = view.tier("llm", tier)
        asyncio.run(watch.run(ModelTier.from_body(body), body))
        kube.deliver()
        clock.advance(30)

    check()
    first = view.policy("llm", "chat")["status"]["targetShares"]
    threshold = round(held["10.0.0.1"].controller.thresholds()[0], 3)
    assert first == [{"tier": "small", "targetShare": 0.5, "sidecars": 0, "threshold": threshold}]
    check()
    assert kube.writes() == []
    # Both sidecars complete a window: 30 and 70 of 100 requests kept on small.
    for ip, easy in (("10.0.0.1", 30), ("10.0.0.2", 70)):
        for prompt in EASY[:easy] + HARD[: 100 - easy]:
            held[ip].predict(prompt)
    observed = [held[ip].controller.last_observed["small"] for ip in held]
    check()
    status = view.policy("llm", "chat")["status"]["targetShares"][0]
    assert status["sidecars"] == 2 and status["observedShare"] == round(sum(observed) / 2, 3)
    assert kube.writes() == [("patch-status", "RoutePolicy", "chat", ("targetShares",))]
    # Another tier of the policy is not the one that reports it.
    check("large")
    assert kube.calls == []
    # Dropping the target removes the field.
    body = dict(view.policy("llm", "chat"))
    body["spec"] = {**body["spec"], "classifier": {"mode": "enabled", "configMapRef": {"name": "m", "key": "model.json"}}}
    body["metadata"] = {**body["metadata"], "resourceVersion": "500"}
    view.policies[("llm", "chat")] = [body]  # type: ignore[index]
    check()
    assert "targetShares" not in view.policy("llm", "chat")["status"]
