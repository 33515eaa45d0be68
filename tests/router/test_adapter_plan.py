"""The sidecar's adapter sync decision (pure): which loads and unloads bring the engine's
loaded set to the configured one, with backoff after failures."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from shoal.api.routerconfig import AdapterConfig
from shoal.router.adapters import Action, AdapterStatus, AdapterSync, backoff_seconds, plan_sync


def cfg(name: str, path: str | None, source: str | None = None) -> AdapterConfig:
    return AdapterConfig(name=name, source=source or f"pvc://a/{name}", path=path)


@pytest.mark.parametrize(
    ("desired", "loaded", "expected"),
    [
        ([cfg("a", "/m/a")], {}, [Action("load", "a", "/m/a")]),
        ([cfg("a", "/m/a")], {"a": "/m/a"}, []),
        ([cfg("a", "/m/a2")], {"a": "/m/a"}, [Action("unload", "a"), Action("load", "a", "/m/a2")]),
        ([], {"a": "/m/a"}, [Action("unload", "a")]),
        ([cfg("b", "/m/b")], {"a": "/m/a"}, [Action("unload", "a"), Action("load", "b", "/m/b")]),
        ([cfg("s3", None)], {}, []),
    ],
    ids=["new", "in-place", "new-source", "removed", "swapped", "unloadable"],
)
def test_plan_loads_what_is_missing_and_unloads_what_is_not_wanted(desired, loaded, expected):
    assert plan_sync(desired, loaded, {}, now=100.0) == expected


def test_an_adapter_waiting_out_its_backoff_is_left_alone_until_then():
    statuses = {"a": AdapterStatus("a", "pvc://a/a", state="Failed", failures=2, retry_at=102.0)}
    assert plan_sync([cfg("a", "/m/a")], {}, statuses, now=101.0) == []
    assert plan_sync([cfg("a", "/m/a")], {}, statuses, now=102.0) == [Action("load", "a", "/m/a")]


def test_backoff_doubles_from_one_second_up_to_a_minute():
    assert [backoff_seconds(n) for n in (1, 2, 3, 4, 7, 20)] == [1.0, 2.0, 4.0, 8.0, 60.0, 60.0]


def test_unloadable_source_is_reported_unsupported_with_its_reason_and_does_not_hold_readiness():
    sync = AdapterSync("http://127.0.0.1:1/v1", CollectorRegistry())
    sync.set_desired([AdapterConfig(name="x", source="s3://b/x", unsupported_reason="vLLM cannot load s3:// adapters at run time")])
    assert sync.report() == [{"name": "x", "source": "s3://b/x", "state": "Unsupported", "message": "vLLM cannot load s3:// adapters at run time", "failures": 0}]
    assert sync.ready() == (True, "")


def test_a_pending_adapter_holds_first_readiness_and_the_reason_names_it():
    sync = AdapterSync("http://127.0.0.1:1/v1", CollectorRegistry())
    sync.set_desired([cfg("a", "/m/a"), cfg("b", "/m/b")])
    sync.statuses["a"].state = "Loaded"
    sync.statuses["b"].state, sync.statuses["b"].message = "Failed", "engine answered 400"
    assert sync.ready() == (False, "adapters not loaded yet: b; b is Failed (engine answered 400)")


def test_a_new_source_resets_the_adapter_status_and_an_unchanged_one_keeps_it():
    sync = AdapterSync("http://127.0.0.1:1/v1", CollectorRegistry())
    sync.set_desired([cfg("a", "/m/a", "pvc://a/v1"), cfg("b", "/m/b", "pvc://b/v1")])
    sync.statuses["a"].state = sync.statuses["b"].state = "Loaded"
    sync.set_desired([cfg("a", "/m/a2", "pvc://a/v2"), cfg("b", "/m/b", "pvc://b/v1")])
    assert (sync.statuses["a"].state, sync.statuses["b"].state) == ("Pending", "Loaded")


def test_once_ready_a_failing_adapter_no_longer_takes_the_pod_out_of_service():
    sync = AdapterSync("http://127.0.0.1:1/v1", CollectorRegistry())
    sync.set_desired([cfg("a", "/m/a")])
    sync.statuses["a"].state = "Loaded"
    assert sync.ready() == (True, "")
    sync.set_desired([cfg("a", "/m/a"), cfg("b", "/m/b")])
    sync.statuses["b"].state = "Failed"
    assert sync.ready() == (True, "")
