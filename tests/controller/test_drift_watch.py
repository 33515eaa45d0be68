"""The drift watch over the view: sidecar counters in, the Drifting condition, Event and gauge out."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from shoal.api.modeltier import ModelTier
from shoal.controller.clock import FakeClock
from shoal.controller.drift import DriftWatch
from shoal.router.shadow import ShadowMetrics

from .fakes import FakeKube, policy_body, put, tier_body, view_of


def pod(name: str, tier: str, ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "llm", "labels": {"shoal.dev/tier": tier}},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}


class Sidecars:
    """Each pod's /metrics as its router would serve it, from the router's own metrics."""

    def __init__(self) -> None:
        self.counts: dict[str, tuple[int, int]] = {}
        self.down: set[str] = set()

    def handler(self, request: httpx.Request) -> httpx.Response:
        ip = request.url.host
        if ip in self.down:
            return httpx.Response(503)
        registry = CollectorRegistry()
        metrics = ShadowMetrics(registry)
        agreed, disagreed = self.counts.get(ip, (0, 0))
        if agreed:
            metrics.samples.labels("small", "agree").inc(agreed)
        if disagreed:
            metrics.samples.labels("small", "disagree").inc(disagreed)
        return httpx.Response(200, text=generate_latest(registry).decode())


def harness(shadow: dict | None):
    tier = tier_body(router={"routePolicy": "chat"})
    policy = policy_body("chat", ["small", "large"])
    if shadow is not None:
        policy["spec"]["shadow"] = shadow
    view = view_of(tier, tier_body("large", router={"routePolicy": "chat"}), policy,
                   pod("small-0", "small", "10.0.0.1"), pod("large-0", "large", "10.0.0.2"))
    kube = FakeKube(view)
    clock = FakeClock()
    sidecars = Sidecars()
    registry = CollectorRegistry()
    watch = DriftWatch(kube, view, httpx.AsyncClient(transport=httpx.MockTransport(sidecars.handler)), clock, registry)

    def check() -> None:
        body = view.tier("llm", "small")
        asyncio.run(watch.run(ModelTier.from_body(body), body))
        kube.deliver()
        clock.advance(30)

    check.watch = watch  # type: ignore[attr-defined]
    return view, kube, sidecars, registry, check


SHADOW = {"tiers": [{"tier": "small", "reference": "large", "samplePercent": 5, "baselineAgreement": 0.9}]}


def drifting(view) -> dict:
    return next(c for c in view.tier("llm", "small")["status"]["conditions"] if c["type"] == "Drifting")


def test_a_drop_in_agreement_sets_drifting_with_a_warning_and_the_gauge_then_nothing_more_is_written():
    view, kube, sidecars, registry, check = harness(SHADOW)
    # Samples of the small rung, counted by the sidecars of both tiers (each routes some).
    sidecars.counts = {"10.0.0.1": (80, 0), "10.0.0.2": (20, 0)}
    check()
    first = drifting(view)
    assert (first["status"], first["reason"]) == ("False", "AgreementStable")
    assert first["message"].startswith("agreement with the reference tier consistent with the baseline of 90.0% (configured): 100 samples at a sampling rate of 5% tested")
    sidecars.counts = {"10.0.0.1": (80, 20), "10.0.0.2": (20, 10)}
    check()
    now = drifting(view)
    assert (now["status"], now["reason"]) == ("True", "AgreementDropped")
    # 30 disagreements at ln(0.2 / 0.1) nats each: 20.8 >= 12.
    assert now["message"] == (
        "agreement with the reference tier dropped: 0.0% over the last 30 samples against a baseline of 90.0% "
        "(configured); cusum test fired after 130 samples at a sampling rate of 5%"
    )
    assert [(e["type"], e["reason"]) for e in kube.events] == [("Normal", "AgreementStable"), ("Warning", "AgreementDropped")]
    assert registry.get_sample_value("shoal_modeltier_drifting", {"namespace": "llm", "modeltier": "small"}) == 1.0
    kube.calls.clear()
    check()
    check()
    assert kube.calls == []


def test_agreement_back_at_the_baseline_clears_drifting_with_a_normal_event():
    view, kube, sidecars, registry, check = harness(SHADOW)
    sidecars.counts = {"10.0.0.1": (0, 20)}
    check()
    assert drifting(view)["status"] == "True"
    # 102 agreements at ln(0.9 / 0.8) nats each reach the threshold of the recovery test.
    sidecars.counts = {"10.0.0.1": (110, 20)}
    check()
    assert (drifting(view)["status"], drifting(view)["reason"]) == ("False", "AgreementStable")
    assert [(e["type"], e["reason"]) for e in kube.events] == [("Warning", "AgreementDropped"), ("Normal", "AgreementStable")]
    assert registry.get_sample_value("shoal_modeltier_drifting", {"namespace": "llm", "modeltier": "small"}) == 0.0


def test_without_a_baseline_the_tier_is_unknown_while_calibrating_and_says_how_far_it_is():
    view, kube, sidecars, _, check = harness({"tiers": [{"tier": "small", "reference": "large"}], "detection": {"warmupSamples": 500}})
    sidecars.counts = {"10.0.0.1": (100, 20)}
    check()
    cond = drifting(view)
    assert (cond["status"], cond["reason"]) == ("Unknown", "Calibrating")
    assert cond["message"].startswith("120 of 500 graded shadow samples at a sampling rate of 5% seen")
    assert kube.events == []


def test_an_unreadable_sidecar_neither_loses_nor_doubles_its_samples():
    view, kube, sidecars, _, check = harness({"tiers": [{"tier": "small", "reference": "large"}], "detection": {"warmupSamples": 500}})
    sidecars.counts = {"10.0.0.1": (100, 0), "10.0.0.2": (100, 0)}
    check()
    sidecars.down = {"10.0.0.2"}
    sidecars.counts = {"10.0.0.1": (150, 0), "10.0.0.2": (180, 0)}
    check()
    assert check.watch.state("llm", "small").warmup_total == 250
    sidecars.down = set()
    check()
    # 330 samples in all, each counted once.
    assert check.watch.state("llm", "small").warmup_total == 330
    # The condition is written on transitions only: it still shows the first reading.
    assert drifting(view)["message"].startswith("200 of 500")


def test_a_tier_no_longer_shadowed_loses_its_condition_and_gauge():
    view, kube, sidecars, registry, check = harness(SHADOW)
    sidecars.counts = {"10.0.0.1": (0, 20)}
    check()
    assert drifting(view)["status"] == "True"
    put(view, policy_body("chat", ["small", "large"]) | {"metadata": {**policy_body("chat", ["small"])["metadata"], "resourceVersion": "9"}})
    check()
    assert all(c["type"] != "Drifting" for c in view.tier("llm", "small")["status"]["conditions"])
    assert registry.get_sample_value("shoal_modeltier_drifting", {"namespace": "llm", "modeltier": "small"}) is None


def test_the_autoscaling_pass_runs_the_drift_check_once_per_drift_period():
    from shoal.controller.autoscaler import Autoscaler
    from shoal.controller.reconcilers import Reconcilers

    view, kube, sidecars, _, check = harness(SHADOW)
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": "small", "namespace": "llm", "resourceVersion": "5", "generation": 1},
                  "spec": {"replicas": 1}}
    put(view, deployment)
    watch = check.watch
    reconcilers = Reconcilers(kube, view, watch.clock, requeue=lambda key: None,
                              autoscaler=Autoscaler(kube, view, watch.http, watch.clock), drift=watch)
    sidecars.counts = {"10.0.0.1": (0, 20)}
    asyncio.run(reconcilers.autoscale("llm", "small"))
    kube.deliver()
    assert drifting(view)["status"] == "True"
    assert not watch.due("llm", "small")
    watch.clock.advance(30)
    assert watch.due("llm", "small")


def test_a_promotion_starts_a_new_test_even_when_the_parsed_spec_is_unchanged():
    from shoal.controller.autoscaler import Autoscaler
    from shoal.controller.reconcilers import Reconcilers

    view, kube, sidecars, _, check = harness({"tiers": [{"tier": "small", "reference": "large"}], "detection": {"warmupSamples": 100}})
    watch = check.watch
    # Through the autoscaling pass, which parses a tier once per generation.
    reconcilers = Reconcilers(kube, view, watch.clock, requeue=lambda key: None,
                              autoscaler=Autoscaler(kube, view, watch.http, watch.clock), drift=watch)
    sidecars.counts = {"10.0.0.1": (150, 10)}
    asyncio.run(reconcilers.autoscale("llm", "small"))
    kube.deliver()
    assert watch.state("llm", "small").phase == "Watching"
    # The operator records a new serving checkpoint: a status change, the same generation.
    body = view.tier("llm", "small")
    put(view, {**body, "status": {**body.get("status", {}), "servingCheckpoint": "s3://b/ckpt-2"},
               "metadata": {**body["metadata"], "resourceVersion": "300"}})
    watch.clock.advance(30)
    sidecars.counts = {"10.0.0.1": (160, 10)}
    asyncio.run(reconcilers.autoscale("llm", "small"))
    state = watch.state("llm", "small")
    assert (state.phase, state.warmup_total) == ("Calibrating", 0)
