"""Real vLLM (CPU) started with the arguments the renderer gives a tier's engine container.

A flag the renderer gets wrong makes the engine refuse to start, which fails every test
here; the health path the pod's probes use and the queue metrics the router reads are
checked against the real engine.
"""

from __future__ import annotations

import httpx
import openai

from shoal.render.deployment import engine_args
from shoal.router.server import parse_engine_metrics
from shoal.testing.vllm_server import CPU_DROPPED_FLAGS

from .conftest import engine_models

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]


def test_engine_runs_the_rendered_arguments_with_only_the_documented_changes(vllm_engine, vllm_tier):
    rendered = engine_args(vllm_tier, vllm_tier.spec.model.served_uri())
    assert rendered[0] == "/mnt/models/test-models/smollm2-135m-instruct"
    argv = vllm_engine.argv[3:]  # after: python -m vllm.entrypoints.openai.api_server
    download = argv[argv.index("--download-dir") + 1]
    assert argv == [
        "--model", f"{vllm_engine.assets}/smollm2-135m-instruct",
        "--served-model-name", "smollm2",
        "--host", "127.0.0.1",
        "--port", str(vllm_engine.port),
        "--download-dir", download,
        "--tensor-parallel-size", "1",
        "--dtype", "float32",
        "--max-model-len", "2048",
        "--max-num-seqs", "8",
        "--enable-prefix-caching",
        "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8", "--max-cpu-loras", "4",
    ]
    # Every rendered flag reaches the engine except the documented GPU-only ones.
    rendered_flags = {a for a in rendered if a.startswith("--")}
    assert rendered_flags - {a for a in argv if a.startswith("--")} == set(CPU_DROPPED_FLAGS) == {"--gpu-memory-utilization"}


def test_engine_serves_the_base_model_under_its_served_name_and_answers_correctly(vllm_engine):
    assert engine_models(vllm_engine)["smollm2"] is None
    client = openai.OpenAI(base_url=vllm_engine.base_url, api_key="unused", max_retries=0, timeout=120)
    completion = client.chat.completions.create(model="smollm2", messages=QUESTION, temperature=0, max_tokens=24)
    assert "Paris" in completion.choices[0].message.content


def test_the_probe_path_of_the_pod_answers_on_the_real_engine(vllm_engine):
    # The engine container's startup, readiness and liveness probes all GET /health.
    assert httpx.get(f"http://127.0.0.1:{vllm_engine.port}/health", timeout=10).status_code == 200


def test_engine_exports_the_queue_gauges_the_router_reads(vllm_engine):
    text = httpx.get(vllm_engine.metrics_url, timeout=10).text
    names = {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}
    assert {"vllm:num_requests_waiting", "vllm:num_requests_running"} <= names
    assert parse_engine_metrics(text) == (0.0, 0.0)
