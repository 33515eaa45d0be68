"""One real vLLM engine (CPU, SmolLM2-135M, LoRA enabled) shared by every test here.

Starting vLLM costs about two minutes on two busy cores, so the whole session shares one
engine; tests that load adapters use names of their own and unload them again. vLLM must be
installed by scripts/install-test-deps.sh: without it these tests fail (VllmUnavailable
names the script), they are not skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.api.modeltier import ModelTier
from shoal.evaluate.engine import free_port
from shoal.testing.vllm_server import VllmServer, cpu_test_tier, test_adapter, vllm_server


def engine_tier(port: int) -> ModelTier:
    """The tier the shared engine serves: its arguments are what the renderer gives it."""
    return cpu_test_tier(
        port=port,
        adapters=[test_adapter("alpha", "alpha"), test_adapter("bravo", "bravo")],
        max_loras=2,
        max_cpu_loras=4,
    )


@pytest.fixture(scope="session")
def vllm_tier() -> ModelTier:
    return engine_tier(free_port())


@pytest.fixture(scope="session")
def vllm_engine(vllm_tier: ModelTier, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    log = Path(tmp_path_factory.mktemp("vllm")) / "engine.log"
    with vllm_server(vllm_tier, log_path=log) as engine:
        print(f"vLLM ready in {engine.startup_seconds:.0f} s (log {engine.log_path})")
        yield engine
