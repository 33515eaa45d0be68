"""The in-memory view: the newest known version of an object, and what it keeps of others'."""

from __future__ import annotations

from shoal.kube.view import REMEMBER_SECONDS, View, pack, slim_config_map, slim_pod, unpack, without_managed_fields


def cm(rv: str, replicas: int = 1) -> dict:
    return {"kind": "Deployment", "metadata": {"name": "small", "namespace": "llm", "resourceVersion": rv}, "spec": {"replicas": replicas}}


def test_a_written_object_is_seen_until_the_watch_delivers_that_version_or_a_newer_one():
    now = [0.0]
    store: dict = {("llm", "small"): [pack(cm("10", 1))]}
    view = View(deployments=store, seconds=lambda: now[0])
    view.remember(cm("12", 3))
    assert view.get("Deployment", "llm", "small")["spec"]["replicas"] == 3  # the watch still shows 10
    store[("llm", "small")] = [pack(cm("11", 2))]  # an older event arrives late
    assert view.get("Deployment", "llm", "small")["spec"]["replicas"] == 3
    store[("llm", "small")] = [pack(cm("12", 3))]
    assert view.get("Deployment", "llm", "small")["metadata"]["resourceVersion"] == "12"
    assert view._written == {}  # caught up: the copy is dropped


def test_a_written_object_the_watch_never_shows_is_forgotten_after_a_while():
    now = [0.0]
    view = View(deployments={}, seconds=lambda: now[0])
    view.remember(cm("12"))
    assert view.get("Deployment", "llm", "small") is not None
    now[0] = REMEMBER_SECONDS + 1  # deleted meanwhile
    assert view.get("Deployment", "llm", "small") is None


def test_someone_elses_config_map_is_kept_as_key_names_only_and_pods_without_their_spec():
    theirs = {"metadata": {"name": "dataset", "namespace": "llm", "labels": {}}, "data": {"eval.jsonl": "x" * 10_000}, "binaryData": {"blob": "AAAA"}}
    assert slim_config_map(theirs) == {"metadata": {"name": "dataset", "namespace": "llm"}, "data": {"eval.jsonl": "", "blob": ""}}
    ours = {"metadata": {"name": "small-router", "labels": {"app.kubernetes.io/managed-by": "shoal"}}, "data": {"router.json": "{}"}}
    assert slim_config_map(ours) == ours
    pod = {"metadata": {"name": "p", "labels": {"a": "b"}, "managedFields": [1]}, "spec": {"containers": []}, "status": {"phase": "Running"}}
    assert slim_pod(pod) == {"metadata": {"name": "p", "labels": {"a": "b"}}, "status": {"phase": "Running"}}


def test_server_side_apply_bookkeeping_is_not_kept():
    obj = {"kind": "Deployment", "metadata": {"name": "small", "managedFields": [{"manager": "shoal"}]}, "spec": {"replicas": 1}}
    assert without_managed_fields(obj) == {"kind": "Deployment", "metadata": {"name": "small"}, "spec": {"replicas": 1}}
    assert obj["metadata"]["managedFields"]  # the caller's object is left alone
    view = View(deployments={})
    view.remember(obj)
    assert "managedFields" not in view.get("Deployment", "", "small")["metadata"]


def test_children_are_kept_packed_and_read_back_whole():
    deployment = {"kind": "Deployment", "metadata": {"name": "small", "namespace": "llm", "resourceVersion": "7"},
                  "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "vllm", "args": ["--port", 8000]}]}}}}
    text = pack(deployment)
    assert isinstance(text, str) and " " not in text  # compact: no separators' spaces
    assert unpack(text) == deployment
    pod = {"metadata": {"name": "small-0", "labels": {"shoal.dev/tier": "small"}}, "status": {"podIP": "10.0.0.1"}}
    view = View(deployments={("llm", "small"): [text]}, tier_pods={("llm", "small"): [pack(pod)]})
    assert view.get("Deployment", "llm", "small") == deployment
    assert view.pods("llm", "small") == [pod]
