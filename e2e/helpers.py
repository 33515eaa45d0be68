"""Helpers shared by the end-to-end tests (imported by conftest and the test modules)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from shoal.devcluster.engines import ENGINE_ANNOTATION

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not hold before its deadline; carries the last value seen."""


def wait_for(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``fn`` until it returns something truthy and return that.

    Exceptions raised by ``fn`` count as "not yet" and are kept as the last value seen, so a
    timeout reports what was actually observed instead of only that time ran out.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = fn()
        except Exception as error:  # noqa: BLE001 - reported if the deadline passes
            value, last = None, error
        else:
            last = value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        time.sleep(interval)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The status condition of ``type_`` on ``obj``, or None."""
    for cond in obj.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_:
            return cond
    return None


def is_true(obj: dict[str, Any], type_: str) -> bool:
    cond = condition(obj, type_)
    return bool(cond and cond.get("status") == "True")


class Watch:
    """``kubectl get --watch -o json`` in the background, keeping every version seen.

    Status transitions that last less than a poll interval (Progressing during a fast
    rollout on kwok nodes) are still recorded, because the apiserver sends every change.
    """

    def __init__(self, argv: list[str]) -> None:
        import json
        import subprocess
        import threading

        self.objects: list[dict[str, Any]] = []
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
        decoder = json.JSONDecoder()

        def read() -> None:
            assert self._proc.stdout is not None
            buffer = ""
            for line in self._proc.stdout:
                buffer += line
                while True:
                    stripped = buffer.lstrip()
                    if not stripped:
                        buffer = ""
                        break
                    try:
                        obj, end = decoder.raw_decode(stripped)
                    except ValueError:
                        break  # an object still being written
                    self.objects.append(obj)
                    buffer = stripped[end:]

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()

    def stop(self) -> list[dict[str, Any]]:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._thread.join(timeout=10)
        return self.objects

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fleet_tier(name: str, checkpoint: str, *, policy: str, engine: str, evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """A one-replica L4 ModelTier of `policy` whose pod the dev fleet backs with the engine
    named `engine` (an entry of the fleet's engines file)."""
    spec: dict[str, Any] = {
        "model": {"name": f"{name}-model", "source": f"hf://org/{name}", "checkpoint": checkpoint},
        "resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}, "cpu": "1", "memory": "2Gi"},
        "replicas": {"min": 1, "max": 1},
        "router": {"routePolicy": policy},
    }
    if evaluation is not None:
        spec["rollout"] = {"evaluation": evaluation}
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "ModelTier",
            "metadata": {"name": name, "annotations": {ENGINE_ANNOTATION: engine}}, "spec": spec}
