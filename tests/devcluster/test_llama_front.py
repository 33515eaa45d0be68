"""SmolLM2 on llama.cpp behind the dev cluster's front: real text and vLLM's queue gauges."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from shoal.devcluster.cluster import free_port
from shoal.devcluster.engines.llama import require_llama_server

HOST = "127.63.0.9"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:  # not listening yet
        return 0, str(error)


def _gauges(root: str) -> dict[str, float]:
    _, text = _get(root + "/metrics")
    return {m[1]: float(m[2]) for m in re.finditer(r"^vllm:(num_requests_\w+)\{[^}]*\} (\S+)$", text, re.M)}


def _chat(root: str, results: list, content: str) -> None:
    body = {"model": "support-8b", "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": content}]}
    request = urllib.request.Request(root + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=180) as response:
        results.append(json.loads(response.read()))


def test_front_serves_real_text_on_the_pod_ip_and_reports_the_queue_in_front_of_the_model(tmp_path):
    require_llama_server()  # installed by scripts/install-test-deps.sh; fails loudly if not
    port = free_port()
    root = f"http://{HOST}:{port}"
    log = open(tmp_path / "front.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "shoal.devcluster.engines.llama", "--host", HOST,
                                "--port", str(port), "--model-alias", "support-8b"],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        status = None
        while time.monotonic() < deadline and (status := _get(root + "/health")[0]) != 200:
            assert process.poll() is None, (tmp_path / "front.log").read_text()
            time.sleep(0.2)
        assert status == 200, (tmp_path / "front.log").read_text()
        assert _gauges(root) == {"num_requests_running": 0.0, "num_requests_waiting": 0.0}

        # Three at once: llama.cpp's server answers one at a time, the others wait in the front.
        results: list = []
        threads = [threading.Thread(target=_chat, args=(root, results, f"Name a colour, number {i}."))
                   for i in range(3)]
        for thread in threads:
            thread.start()
        seen: list[dict[str, float]] = []
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            seen.append(_gauges(root))
            time.sleep(0.05)
        for thread in threads:
            thread.join(timeout=180)
        assert max(g["num_requests_waiting"] for g in seen) >= 1, seen
        assert max(g["num_requests_running"] for g in seen) == 1, seen
        assert len(results) == 3
        assert all(r["model"] == "support-8b" and r["choices"][0]["message"]["content"].strip() for r in results)
        assert _gauges(root) == {"num_requests_running": 0.0, "num_requests_waiting": 0.0}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
