"""`make images` builds the router and operator images, and they run as the chart runs them.

Built with podman and runc on the local Debian base (`make base-image`: these machines
reach no image registry; set SHOAL_IMAGE_BASE to build on another base). Skipped only
where no container engine is installed; scripts/install-test-deps.sh installs podman.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.api.modeltier import DEFAULT_ROUTER_IMAGE
from shoal.cli import _read_documents, render_documents
from shoal.devcluster.cluster import free_port
from shoal.devcluster.install import render_chart
from shoal.devcluster.tools import ensure_tools
from shoal.testing.fake_engine import start_fake_engine

ROOT = Path(__file__).resolve().parents[2]
PODMAN = shutil.which("podman")
LOCAL_BASE = "localhost/debian-python:bookworm"
# runc: crun refuses hybrid cgroup hierarchies; lower limits than the host's defaults.
RUN = ["--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]

pytestmark = pytest.mark.skipif(PODMAN is None, reason="no container engine (podman) is installed")


def _make(*targets: str, **variables: str) -> None:
    argv = ["make", *targets, f"PYTHON={sys.executable}", *(f"{k}={v}" for k, v in variables.items())]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _image_refs() -> dict[str, str]:
    out = subprocess.run(["make", "-s", "image-refs"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {ref.rsplit("/", 1)[1].split(":")[0].removeprefix("shoal-"): ref for ref in out.split()}


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Build the router and operator images as `make images` does; their references."""
    base = os.environ.get("SHOAL_IMAGE_BASE")
    if base is None:
        _make("base-image")
        base = LOCAL_BASE
    _make("image-router", "image-operator", BASE_IMAGE=base)
    return _image_refs()


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"shoal-image-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run([PODMAN, *RUN, "rm", "-f", "-t", "2", name], capture_output=True, check=False)


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PODMAN, *RUN, *args], capture_output=True, text=True, timeout=timeout, check=False)


def _router_container() -> tuple[dict[str, Any], dict[str, Any]]:
    """The example small tier's router container and pod security context, as rendered."""
    manifests = render_documents(_read_documents([str(ROOT / "examples" / "modeltier-small.yaml")]), "default")
    pod = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "router"), pod["securityContext"]


def _user_flags(pod_security: dict[str, Any], container_security: dict[str, Any]) -> list[str]:
    user = container_security.get("runAsUser", pod_security.get("runAsUser"))
    group = container_security.get("runAsGroup", pod_security.get("runAsGroup", user))
    flags = ["--user", f"{user}:{group}", "--cap-drop=ALL", "--security-opt=no-new-privileges"]
    if container_security.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    return flags


def _wait_ready(url: str, container: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError) as error:
            last = error
        time.sleep(0.2)
    logs = _podman("logs", container).stdout + _podman("logs", container).stderr
    raise AssertionError(f"{url} not ready within {deadline_s}s (last: {last!r}); container log:\n{logs[-3000:]}")


def test_router_image_serves_a_request_through_to_a_fake_engine_on_the_host_network(images, tmp_path, container_name):
    assert images["router"] == DEFAULT_ROUTER_IMAGE  # what the operator renders into every pod
    router, pod_security = _router_container()
    assert router["securityContext"]["readOnlyRootFilesystem"] is True
    port = free_port()
    with start_fake_engine(model="support-8b", reply="Hello from the host.") as engine:
        config = {
            "version": 1, "modelTier": "small", "localTier": "small",
            "tiers": [{"name": "small", "kind": "local", "url": engine.base_url, "model": "support-8b"}],
            "engine": {"metricsUrl": f"{engine.root}/metrics", "scrapeIntervalSeconds": 0.5},
        }
        folder = tmp_path / "router"
        folder.mkdir()
        (folder / "router.json").write_text(json.dumps(config))
        folder.chmod(0o755)
        (folder / "router.json").chmod(0o644)
        tmp_path.chmod(0o755)
        args = [a for a in router["args"] if a != "--port"]  # the rendered arguments, our port
        args = args[: args.index("8080")] + args[args.index("8080") + 1:] if "8080" in args else args
        started = _podman("run", "-d", "--name", container_name, "--network=host", *LIMITS,
                          *_user_flags(pod_security, router["securityContext"]),
                          "-v", f"{folder}:/etc/shoal/router:ro", images["router"],
                          *args, "--host", "127.0.0.1", "--port", str(port))
        assert started.returncode == 0, started.stderr
        _wait_ready(f"http://127.0.0.1:{port}/readyz", container_name)

        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions", headers={"Content-Type": "application/json"},
            data=json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
            tier = response.headers["x-shoal-tier"]
        assert (tier, body["choices"][0]["message"]["content"]) == ("small", "Hello from the host.")
        assert engine.stats()["requests"] == 1

    # As the pod runs it: the pod's non-root user, nothing writable on the root filesystem.
    assert _podman("exec", container_name, "id", "-u").stdout.strip() == str(pod_security["runAsUser"])
    write = _podman("exec", container_name, "python3", "-c", "open('/usr/local/written', 'w')")
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    inspect = json.loads(_podman("image", "inspect", images["router"]).stdout)[0]
    assert inspect["Config"]["User"] == "65532:65532"


def test_operator_image_prints_shoal_version_as_non_root_with_a_read_only_root(images):
    deployment = next(o for o in render_chart(ensure_tools()) if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (operator,) = pod["containers"]
    assert operator["image"] == images["operator"]
    flags = _user_flags(pod["securityContext"], operator["securityContext"])
    assert "--read-only" in flags and "--user" in flags
    ran = _podman("run", "--rm", "--network=host", *LIMITS, *flags, images["operator"], "version")
    assert ran.returncode == 0, ran.stderr
    here = subprocess.run([sys.executable, "-m", "shoal.cli", "version"], capture_output=True, text=True, check=True)
    assert ran.stdout.strip() == here.stdout.strip() == "shoal 0.1.0"
    whoami = _podman("run", "--rm", *LIMITS, *flags, "--entrypoint", "id", images["operator"], "-u")
    assert whoami.stdout.strip() == "65532"
