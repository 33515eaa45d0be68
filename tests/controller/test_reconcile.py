"""The reconcile orchestration over an in-memory view: what a pass writes, and when nothing.

The view is plain dicts (tests/controller/fakes.py), the API server's write side a
recorder; the plan/ and render/ code is the real one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from shoal.controller.clock import FakeClock
from shoal.controller.queue import GiveUp, RetryAfter
from shoal.controller.reconcilers import Reconcilers, retry_rule
from shoal.kube.errors import Conflict, Forbidden, NamespaceTerminating, Unavailable
from shoal.kube.view import pack

from .fakes import FakeKube, policy_body, put, tier_body, view_of


class Harness:
    def __init__(self, *objects: dict[str, Any], secrets: dict | None = None) -> None:
        self.view = view_of(*objects)
        self.kube = FakeKube(self.view, secrets)
        self.clock = FakeClock()
        self.requeued: list[tuple[str, str, str]] = []
        self.reconcilers = Reconcilers(self.kube, self.view, self.clock, requeue=self.requeued.append)
        # One event loop for every pass, as in the operator (a Service apply may outlive
        # the pass that started it).
        self.loop = asyncio.Runner()

    def run(self, coro: Any) -> Any:
        async def then_let_background_work_run() -> Any:
            result = await coro
            for _ in range(3):
                await asyncio.sleep(0)
            return result

        return self.loop.run(then_let_background_work_run())

    def tier_pass(self, name: str = "small") -> None:
        self.run(self.reconcilers.tier("llm", name))

    def policy_pass(self, name: str) -> None:
        self.run(self.reconcilers.policy("llm", name))

    def settle(self, name: str = "small") -> None:
        """Passes until one writes nothing, delivering the watch in between."""
        for _ in range(5):
            self.kube.calls.clear()
            self.tier_pass(name)
            self.kube.deliver()
            if not self.kube.writes():
                return
        raise AssertionError(f"no steady state after 5 passes: {self.kube.calls}")

    def make_deployment_ready(self, name: str = "small") -> None:
        """What the Deployment controller and kubelets do: every replica ready."""
        dep = self.view.get("Deployment", "llm", name)
        assert dep is not None
        replicas = dep["spec"]["replicas"]
        dep = {**dep, "metadata": {**dep["metadata"], "resourceVersion": str(int(dep["metadata"]["resourceVersion"]) + 1000)}}
        dep["status"] = {
            "observedGeneration": dep["metadata"]["generation"], "replicas": replicas, "readyReplicas": replicas,
            "availableReplicas": replicas, "updatedReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True"}, {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
        }
        put(self.view, dep)


def test_a_new_tier_gets_its_children_in_one_pass_and_no_status_until_the_deployment_is_seen():
    h = Harness(tier_body())
    h.tier_pass()
    assert sorted(h.kube.calls) == [
        ("apply", "ConfigMap", "small-router"),
        ("apply", "Deployment", "small"),
        ("apply", "PodDisruptionBudget", "small"),
        ("apply", "Service", "small"),
    ]
    assert h.kube.calls.index(("apply", "ConfigMap", "small-router")) < h.kube.calls.index(("apply", "Deployment", "small"))
    # The pass reported nothing about a Deployment it had not seen yet: it asked for
    # another pass, which sees the Deployment (from the write's answer, before the watch);
    # the Service's own apply, when it ended, asked for one too.
    assert h.requeued == [("ModelTier", "llm", "small")] * 2
    h.kube.calls.clear()
    h.tier_pass()
    assert h.kube.calls == [
        ("event", "ModelTier", "small", "WaitingForPods"),
        ("event", "ModelTier", "small", "RollingOut"),
        ("patch-status", "ModelTier", "small", ("candidateCheckpoint", "conditions", "endpoint", "observedGeneration", "readyReplicas", "replicas", "selector", "updatedReplicas")),
    ]


def test_a_settled_tier_makes_no_request_at_all():
    h = Harness(tier_body())
    h.settle()
    h.make_deployment_ready()
    h.settle()
    ready = next(c for c in h.view.tier("llm", "small")["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Available")
    h.kube.calls.clear()
    for _ in range(3):
        h.tier_pass()
    assert h.kube.calls == []  # no write, and no read either: everything came from the view
    assert h.requeued == [("ModelTier", "llm", "small")] * 2  # only the very first pass asked for more


def test_events_are_recorded_before_the_status_that_makes_them_due_and_again_after_a_failed_status_write():
    h = Harness(tier_body())
    h.settle()
    h.make_deployment_ready()
    h.kube.calls.clear()
    h.kube.events.clear()
    h.kube.fail["patch_status"] = Unavailable("connection reset")
    with pytest.raises(Unavailable):
        h.tier_pass()
    assert [c[0] for c in h.kube.calls] == ["event", "event", "event", "patch-status"]
    first = list(h.kube.events)
    # The retried pass plans from the same stored status: the same Events about the same
    # version of the tier (so Kube.event's derived name makes the API server keep one).
    h.kube.calls.clear()
    h.kube.events.clear()
    h.tier_pass()
    assert [c[0] for c in h.kube.calls] == ["event", "event", "event", "patch-status"]
    assert h.kube.events == first
    # Promoted included: an operator killed right after a promotion still reports it.
    assert [e["reason"] for e in first] == ["Promoted", "Available", "RolloutComplete"]


def test_a_tier_naming_a_missing_secret_reads_it_by_name_and_says_so():
    body = tier_body(model={"name": "m", "source": "hf://org/model", "credentialsSecretRef": {"name": "hf-token"}})
    h = Harness(body)
    h.settle()
    assert ("get", "Secret", "hf-token") in h.kube.calls
    refs = next(c for c in h.view.tier("llm", "small")["status"]["conditions"] if c["type"] == "ResolvedRefs")
    assert (refs["status"], refs["reason"]) == ("False", "SecretNotFound")


def test_a_spec_the_models_refuse_becomes_invalid_spec_once_and_is_not_retried():
    body = tier_body()
    body["spec"]["replicas"] = {"min": 3, "max": 2}  # past a schema that would have refused it
    h = Harness(body)
    with pytest.raises(Exception) as failed:
        h.tier_pass()
    assert isinstance(retry_rule(failed.value), GiveUp)
    assert [c[:4] for c in h.kube.calls] == [("event", "ModelTier", "small", "InvalidSpec"), ("patch-status", "ModelTier", "small", ("conditions", "observedGeneration"))]
    h.kube.deliver()
    h.kube.calls.clear()
    with pytest.raises(Exception):
        h.tier_pass()
    assert h.kube.calls == []  # the condition is already there: no second Event


@pytest.mark.parametrize(
    ("error", "expected", "delay"),
    [
        (Conflict("changed"), RetryAfter, 1),
        (Forbidden("rbac"), RetryAfter, 60),
        (Unavailable("down"), RetryAfter, None),
        (NamespaceTerminating("going"), GiveUp, None),
    ],
)
def test_each_error_maps_to_one_retry_rule(error, expected, delay):
    rule = retry_rule(error)
    assert isinstance(rule, expected)
    if isinstance(rule, RetryAfter):
        assert rule.delay == delay


def test_a_terminating_namespace_stops_the_retries_and_the_passes_its_events_bring():
    body = tier_body()
    body["metadata"]["creationTimestamp"] = "2026-11-18T11:00:00Z"
    h = Harness(body)
    h.kube.hold["Service"] = asyncio.Event()  # the ConfigMap's apply meets the error
    h.kube.fail["apply"] = NamespaceTerminating("unable to create new content in namespace llm because it is being terminated", 403)
    with pytest.raises(GiveUp):
        h.run(h.reconcilers.reconcile(("ModelTier", "llm", "small")))
    h.kube.calls.clear()
    # A pod of the tier is deleted with the namespace: its event queues the tier again.
    h.run(h.reconcilers.reconcile(("ModelTier", "llm", "small")))
    assert h.kube.calls == []
    # A tier created later (the namespace was re-created) is reconciled as usual.
    put(h.view, tier_body("fresh") | {"metadata": {**tier_body("fresh")["metadata"], "creationTimestamp": "2026-11-18T12:00:00Z"}})
    h.run(h.reconcilers.reconcile(("ModelTier", "llm", "fresh")))
    assert ("apply", "ConfigMap", "fresh-router") in h.kube.calls
    h.run(_release(h.kube.hold["Service"]))


def test_a_policy_pass_follows_the_first_ready_tier_and_writes_only_when_that_changes():
    small = tier_body("small", router={"routePolicy": "ladder"})
    large = tier_body("large", router={"routePolicy": "ladder"})
    small["status"] = {"readyReplicas": 0}
    large["status"] = {"readyReplicas": 1}
    h = Harness(small, large, policy_body("ladder", ["small", "large"]))
    h.policy_pass("ladder")
    service = next(o for o in h.kube.written if o["kind"] == "Service")
    assert service["spec"]["selector"]["shoal.dev/tier"] == "large"
    assert [c[0] for c in h.kube.calls] == ["apply", "event", "patch-status"]
    h.kube.deliver()
    h.kube.calls.clear()
    h.policy_pass("ladder")
    assert h.kube.calls == []
    # small wakes: only the entry Service moves; no tier is touched by the policy's pass.
    put(h.view, {**small, "status": {"readyReplicas": 1}, "metadata": {**small["metadata"], "resourceVersion": "9"}})
    h.policy_pass("ladder")
    assert [c[:2] for c in h.kube.calls] == [("apply", "Service"), ("patch-status", "RoutePolicy")]


def test_a_slow_service_holds_up_neither_the_deployment_nor_the_status():
    h = Harness(tier_body())
    h.kube.hold["Service"] = asyncio.Event()
    h.tier_pass()
    h.tier_pass()
    # The Service is still being created; the Deployment and the status are written.
    assert ("apply", "Deployment", "small") in h.kube.calls
    assert [c[:2] for c in h.kube.calls if c[0] == "patch-status"] == [("patch-status", "ModelTier")]
    assert h.kube.calls.count(("apply", "Service", "small")) == 1  # not sent twice while in flight
    h.kube.calls.clear()
    h.run(_release(h.kube.hold["Service"]))
    assert h.requeued[-1] == ("ModelTier", "llm", "small")  # its end queues the tier again
    h.kube.deliver()
    h.tier_pass()
    assert h.kube.calls == []


def test_a_failed_service_apply_is_retried_inside_the_next_pass_under_the_retry_rule():
    h = Harness(tier_body())
    h.kube.fail["apply:Service"] = Unavailable("service IP allocation timed out")
    h.tier_pass()
    assert h.requeued[-1] == ("ModelTier", "llm", "small")
    h.kube.calls.clear()
    h.kube.fail["apply:Service"] = Unavailable("still down")
    with pytest.raises(Unavailable):
        h.tier_pass()  # the Service is applied inline now, and its error reaches the queue


async def _release(event: asyncio.Event) -> None:
    event.set()
    for _ in range(3):
        await asyncio.sleep(0)


# --- adapters: eval-gated promotion ----------------------------------------------------------

REFUNDS_V1, REFUNDS_V2 = "hf://acme/refunds-v1", "hf://acme/refunds-v2"
ADAPTER_EVALUATION = {
    "dataset": {"uri": "https://data.example/refunds.jsonl"},
    "scorers": [{"type": "exactMatch"}],
    "thresholds": [{"metric": "exact_match", "min": 0.8}],
}


def _gated_tier(source: str, **status: Any) -> dict[str, Any]:
    body = tier_body(adapters=[{"name": "refunds", "source": source, "rollout": {"evaluation": ADAPTER_EVALUATION}}])
    if status:
        body["status"] = status
    return body


def _router_adapters(h: Harness) -> dict[str, str]:
    config = json.loads(h.view.get("ConfigMap", "llm", "small-router")["data"]["router.json"])
    return {a["name"]: a["source"] for a in config.get("adapters", [])}


def _adapter_status(h: Harness) -> dict[str, Any]:
    (only,) = h.view.tier("llm", "small")["status"]["adapters"]
    return only


def _finish_job(h: Harness, name: str, exit_code: int) -> None:
    """What the Job controller and kubelet do: the eval container exits, the Job ends (the
    Job as the Jobs' watch shows it)."""
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": "llm", "annotations": {
            "shoal.dev/adapter": "refunds", "shoal.dev/adapter-source": _adapter_status(h)["candidateSource"]}},
        "status": {"startTime": "2026-01-01T00:00:00Z",
                   "conditions": [{"type": "Complete" if exit_code == 0 else "Failed", "status": "True"}]},
    }
    h.view.eval_jobs[("llm", "small")] = [pack(job)]
    h.view.job_pods[("llm", name)] = [pack({"metadata": {"name": f"{name}-x"}, "status": {"containerStatuses": [
        {"name": "eval", "state": {"terminated": {"exitCode": exit_code}}}]}})]


def _ready_gated_tier(source: str, **status: Any) -> Harness:
    h = Harness(_gated_tier(source, **status))
    h.kube.calls.clear()
    h.tier_pass()
    h.kube.deliver()
    h.make_deployment_ready()
    h.settle()
    return h


def test_an_adapter_source_reaches_the_router_config_only_after_its_job_passes_and_the_job_goes_after_the_status_says_so():
    h = Harness(_gated_tier(REFUNDS_V1))
    h.tier_pass()
    (created,) = [c for c in h.kube.calls if c[:2] == ("apply", "Job")]
    name = created[2]
    assert name.startswith("small-lora-refunds-")
    h.kube.deliver()
    h.make_deployment_ready()
    h.settle()
    # A brand-new gated adapter serves nothing while its first source is evaluated.
    assert _router_adapters(h) == {}
    assert _adapter_status(h)["candidateSource"] == REFUNDS_V1
    assert "servingSource" not in _adapter_status(h)

    _finish_job(h, name, 0)
    h.kube.calls.clear()
    h.tier_pass()
    # The ConfigMap first, then the Events, then the status; the Job stays for this pass.
    assert h.kube.calls == [
        ("apply", "ConfigMap", "small-router"),
        ("event", "ModelTier", "small", "AdapterPromoted"),
        ("patch-status", "ModelTier", "small", ("adapters", "conditions")),
    ]
    h.kube.deliver()
    assert _router_adapters(h) == {"refunds": REFUNDS_V1}
    assert (_adapter_status(h)["servingSource"], _adapter_status(h)["lastEvaluation"]["verdict"]) == (REFUNDS_V1, "Passed")
    h.kube.calls.clear()
    h.tier_pass()
    assert h.kube.calls == [("delete", "Job", name)]


def test_a_failed_adapter_evaluation_keeps_the_serving_source_in_the_router_config_and_writes_no_deployment():
    h = _ready_gated_tier(REFUNDS_V1, adapters=[{"name": "refunds", "servingSource": REFUNDS_V1}])
    assert _router_adapters(h) == {"refunds": REFUNDS_V1}
    body = h.view.tier("llm", "small")
    put(h.view, {**body, "metadata": {**body["metadata"], "generation": 2, "resourceVersion": "500"},
                 "spec": _gated_tier(REFUNDS_V2)["spec"]})
    h.kube.calls.clear()
    h.settle()
    adapter = _adapter_status(h)
    assert (adapter["servingSource"], adapter["candidateSource"]) == (REFUNDS_V1, REFUNDS_V2)
    name = adapter["lastEvaluation"]["jobName"]

    _finish_job(h, name, 1)
    h.settle()
    adapter = _adapter_status(h)
    assert (adapter["servingSource"], adapter["candidateSource"], adapter["lastEvaluation"]["verdict"]) == (REFUNDS_V1, REFUNDS_V2, "Failed")
    tier_level = next(c for c in h.view.tier("llm", "small")["status"]["conditions"] if c["type"] == "AdaptersReady")
    assert (tier_level["status"], tier_level["reason"]) == ("False", "Failed")
    assert _router_adapters(h) == {"refunds": REFUNDS_V1}
    # The blocked source's Job stays for inspection; the Deployment was never written.
    assert ("delete", "Job", name) not in h.kube.calls
    assert not [c for c in h.kube.calls if c[:2] == ("apply", "Deployment")]


# --- adapters across a base checkpoint change ------------------------------------------------

BASE_B = "hf://org/model-b"


def _jobs_end(h: Harness, ended: dict[str, int]) -> None:
    """The Jobs applied so far, each ended with its exit code in `ended` (others still running)."""
    jobs = []
    for job in h.kube.jobs:
        name = job["metadata"]["name"]
        status: dict[str, Any] = {"startTime": "2026-01-01T00:00:00Z"}
        if name in ended:
            status["conditions"] = [{"type": "Complete" if ended[name] == 0 else "Failed", "status": "True"}]
            h.view.job_pods[("llm", name)] = [pack({"metadata": {"name": f"{name}-x"}, "status": {"containerStatuses": [
                {"name": "eval", "state": {"terminated": {"exitCode": ended[name]}}}]}})]
        jobs.append(pack({**job, "status": status}))
    h.view.eval_jobs[("llm", "small")] = jobs


def test_a_new_base_checkpoint_whose_serving_adapter_fails_on_it_writes_no_deployment_and_a_newer_one_deletes_both_jobs():
    h = _ready_gated_tier(REFUNDS_V1, adapters=[{"name": "refunds", "servingSource": REFUNDS_V1}])
    assert h.kube.jobs == []
    template = h.view.get("Deployment", "llm", "small")["spec"]["template"]
    body = h.view.tier("llm", "small")
    spec = {**body["spec"], "model": {**body["spec"]["model"], "checkpoint": BASE_B}, "rollout": {"evaluation": ADAPTER_EVALUATION}}
    put(h.view, {**body, "metadata": {**body["metadata"], "generation": 2, "resourceVersion": "600"}, "spec": spec})
    h.settle()
    assert len(h.kube.jobs) == 2  # created once each, by name
    checkpoint_job = next(j["metadata"]["name"] for j in h.kube.jobs if "shoal.dev/checkpoint" in j["metadata"]["annotations"])
    on_b = next(j for j in h.kube.jobs if "shoal.dev/adapter" in j["metadata"]["annotations"])
    assert on_b["metadata"]["annotations"] == {
        "shoal.dev/adapter": "refunds", "shoal.dev/adapter-source": REFUNDS_V1, "shoal.dev/base-checkpoint": BASE_B}
    assert on_b["spec"]["template"]["spec"]["containers"][0]["args"][:3] == ["eval", "--serve-checkpoint", BASE_B]
    assert _adapter_status(h)["baseEvaluation"]["verdict"] == "Running"

    _jobs_end(h, {checkpoint_job: 0, on_b["metadata"]["name"]: 1})
    h.settle()
    status = h.view.tier("llm", "small")["status"]
    evaluated = next(c for c in status["conditions"] if c["type"] == "Evaluated")
    assert (evaluated["status"], evaluated["reason"]) == ("False", "AdapterFailed")
    assert f"adapter refunds ({REFUNDS_V1}) serves on hf://org/model" in evaluated["message"]
    assert (status["servingCheckpoint"], status["candidateCheckpoint"]) == ("hf://org/model", BASE_B)
    assert _adapter_status(h)["baseEvaluation"]["verdict"] == "Failed"
    assert h.view.get("Deployment", "llm", "small")["spec"]["template"] == template
    assert _router_adapters(h) == {"refunds": REFUNDS_V1}
    assert "AdapterFailed" in {e["reason"] for e in h.kube.events}

    # A newer checkpoint supersedes B: both of B's Jobs go.
    body = h.view.tier("llm", "small")
    spec = {**body["spec"], "model": {**body["spec"]["model"], "checkpoint": "hf://org/model-c"}}
    put(h.view, {**body, "metadata": {**body["metadata"], "generation": 3, "resourceVersion": "900"}, "spec": spec})
    h.kube.calls.clear()
    h.tier_pass()
    deleted = {c[2] for c in h.kube.calls if c[:2] == ("delete", "Job")}
    assert deleted == {checkpoint_job, on_b["metadata"]["name"]}
