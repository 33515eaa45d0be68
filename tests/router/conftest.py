"""Real processes on loopback: fake engines and the `shoal router` sidecar under test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.testing.fake_engine import FakeEngineProcess, start_fake_engine

REPO = Path(__file__).resolve().parents[2]
LABELLED = REPO / "examples" / "router" / "labelled.jsonl"


def wait_for(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll `check` until it returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


class RouterProcess:
    def __init__(self, config_path: Path, env: dict[str, str] | None = None, port: int = 0) -> None:
        self.config_path = config_path
        # The log goes to a file, not a pipe nobody reads: a full pipe would block the
        # router on its per-request log line.
        self.log_path = config_path.with_suffix(".log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shoal.router.commands", "router", "--config", str(config_path),
             "--host", "127.0.0.1", "--port", str(port), "--reload-interval", "0.1"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.process.kill()
            raise AssertionError(f"router did not start: {line!r} {self.log_text()!r}")
        self.port = int(line.strip().rsplit(":", 1)[1])
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def state(self) -> dict[str, Any]:
        return json.loads(self.get("/shoal/state")[1])

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.root + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post(self, path: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            self.root + path, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of one sample on /metrics, or None when absent."""
        from prometheus_client.parser import text_string_to_metric_families

        _, text = self.get("/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    return sample.value
        return None

    def write_config(self, config: dict[str, Any]) -> None:
        # Write then rename, as the kubelet swaps a ConfigMap volume atomically.
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config))
        tmp.replace(self.config_path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def engines() -> Iterator[dict[str, FakeEngineProcess]]:
    """Three fake engines: the local engine of the small tier, the medium tier behind its
    "Service", and a frontier API that wants a bearer token (not checked, recorded)."""
    started = {
        "small": start_fake_engine(name="small", model="smol-chat"),
        "medium": start_fake_engine(name="medium", model="mid-chat"),
        "frontier": start_fake_engine(name="frontier", model="big-model"),
    }
    try:
        yield started
    finally:
        for engine in started.values():
            engine.stop()


@pytest.fixture
def fresh_engines(engines: dict[str, FakeEngineProcess]) -> dict[str, FakeEngineProcess]:
    for engine in engines.values():
        engine.reset()
    return engines


def ladder_config(engines: dict[str, FakeEngineProcess], tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    key_file = tmp_path / "frontier-token"
    key_file.write_text("sk-test-secret-123\n")
    config: dict[str, Any] = {
        "modelTier": "smol",
        "localTier": "small",
        "tiers": [
            {"name": "small", "kind": "local", "url": engines["small"].base_url, "model": "smol-chat",
             "aliases": ["tiny"], "maxQueueDepth": 4,
             "outputUSDPerToken": 1e-6},
            {"name": "medium", "kind": "service", "url": engines["medium"].base_url, "model": "mid-chat",
             "outputUSDPerToken": 4e-6},
            {"name": "frontier", "kind": "external", "url": engines["frontier"].base_url, "model": "big-model",
             "apiKeyFile": str(key_file), "inputUSDPerToken": 2e-6, "outputUSDPerToken": 1e-5},
        ],
        "rules": [{"name": "code", "match": {"keywords": ["python"]}, "tier": "medium"}],
        # Most tests name an arbitrary model ("x") and are about routing, not names; the
        # default (reject: 404 model_not_found) has its own tests.
        "escalation": {"onUnknownModel": "route"},
        "engine": {"metricsUrl": engines["small"].root + "/metrics", "scrapeIntervalSeconds": 0.1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
def start_router(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], RouterProcess]]:
    routers: list[RouterProcess] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None, port: int = 0) -> RouterProcess:
        path = tmp_path / f"router-{len(routers)}.json"
        path.write_text(json.dumps(config))
        router = RouterProcess(path, env, port)
        routers.append(router)
        # Generous: on a loaded machine importing and starting takes seconds.
        wait_for(lambda: router.get("/readyz")[0] == 200, "router ready", timeout=60)
        return router

    yield start
    for router in routers:
        router.stop()
