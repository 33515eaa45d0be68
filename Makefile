# The two commands a newcomer runs (see README.md).
PYTHON ?= python3

.PHONY: up test down crds

## Install Shoal and start it on a local control plane (real kube-apiserver, scheduler,
## controller-manager, etcd and kwok GPU nodes built from Go modules on first use), with
## real router sidecars and engines behind the pods (SmolLM2-135M on CPU for the small tier).
up:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	PYTHON=$(PYTHON) bash scripts/install-small-model.sh
	$(PYTHON) -m shoal.cli dev up

## Install the test dependencies and run every test (unit, integration and e2e).
test:
	bash scripts/install-test-deps.sh
	$(PYTHON) -m pytest

down:
	$(PYTHON) -m shoal.cli dev down

## Regenerate the CRDs (and the chart's copy) from the API models.
crds:
	$(PYTHON) -m shoal.cli crds --out crds/ --out charts/shoal/crds/
