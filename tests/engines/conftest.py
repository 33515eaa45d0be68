"""One real vLLM engine (CPU, SmolLM2-135M, LoRA enabled) shared by every test here.

Starting vLLM costs two to four minutes on two busy cores, so the whole package shares one
engine; tests that load adapters use names of their own and unload them again. vLLM must be
installed by scripts/install-test-deps.sh: without it these tests fail (VllmUnavailable
names the script), they are not skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.api.modeltier import ModelTier
from shoal.render.routerconfig import render_router_config
from shoal.evaluate.engine import free_port
from shoal.testing.vllm_server import VllmServer, adapter_entry, cpu_test_tier, vllm_server
from tests.router.conftest import RouterProcess


def engine_tier(port: int) -> ModelTier:
    """The tier the shared engine serves: its arguments are what the renderer gives it."""
    return cpu_test_tier(
        port=port,
        adapters=[adapter_entry("alpha", "alpha"), adapter_entry("bravo", "bravo")],
        max_loras=2,
        max_cpu_loras=4,
    )


@pytest.fixture(scope="package")
def vllm_tier() -> ModelTier:
    return engine_tier(free_port())


# Package scope: every vLLM test lives here, and the engine (about 5 GB resident in three processes)
# is stopped before the rest of the suite runs.
@pytest.fixture(scope="package")
def vllm_engine(vllm_tier: ModelTier, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    log = Path(tmp_path_factory.mktemp("vllm")) / "engine.log"
    with vllm_server(vllm_tier, log_path=log) as engine:
        print(f"vLLM ready in {engine.startup_seconds:.0f} s (log {engine.log_path})")
        yield engine


def router_config(tier: ModelTier, engine: VllmServer, **overrides: Any) -> dict[str, Any]:
    """The sidecar configuration the operator renders for `tier`, with the adapters' claim
    paths mapped to this machine (the PVC emulation) and a fast engine scrape."""
    config = render_router_config(tier, None, {}, "default")
    for adapter in config.get("adapters", []):
        if adapter.get("path"):
            adapter["path"] = engine.local_path(adapter["path"])
    config["engine"]["scrapeIntervalSeconds"] = 0.2
    config.update(overrides)
    return config


@pytest.fixture
def start_router(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], RouterProcess]]:
    """Start `shoal router` processes on a config; each is stopped after the test."""
    routers: list[RouterProcess] = []

    def start(config: dict[str, Any]) -> RouterProcess:
        path = tmp_path / f"router-{len(routers)}.json"
        path.write_text(json.dumps(config))
        router = RouterProcess(path)
        routers.append(router)
        return router

    yield start
    for router in routers:
        router.stop()


def engine_models(engine: VllmServer) -> dict[str, str | None]:
    """What the engine serves now: model id -> the path a LoRA module was loaded from
    (None for the base model)."""
    response = httpx.get(f"{engine.base_url}/models", timeout=10)
    response.raise_for_status()
    return {m["id"]: (m.get("root") if m.get("parent") else None) for m in response.json()["data"]}
