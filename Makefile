# The two commands a newcomer runs (see README.md).
PYTHON ?= python3

.PHONY: up test down crds images image-refs wheels base-image image-operator image-router image-eval

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

## Container images, tagged with the chart's version (what the chart and the operator's
## defaults refer to). Built with podman and runc; the wheels are built here first and
## installed offline in the images, so the builds need no network.
VERSION := $(shell sed -n 's/^version: *//p' charts/shoal/Chart.yaml)
REGISTRY ?= ghcr.io/shoal-dev
# A normal registry: python:3.11-slim and vLLM's image. Offline machines: `make base-image`
# and BASE_IMAGE=localhost/debian-python:bookworm (EVAL_BASE_IMAGE too, for an eval image
# without vLLM that evaluates endpoints only).
BASE_IMAGE ?= docker.io/library/python:3.11-slim
EVAL_BASE_IMAGE ?= docker.io/vllm/vllm-openai:v0.11.0
LOCAL_BASE_IMAGE ?= localhost/debian-python:bookworm
PODMAN ?= podman --runtime runc
BUILD_FLAGS ?= --network=host --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 --layers

image-refs:
	@for image in operator router eval; do echo $(REGISTRY)/shoal-$$image:$(VERSION); done

# A fixed SOURCE_DATE_EPOCH makes the shoal wheel byte-identical for identical sources, so
# an unchanged tree hits the image layer cache (see WHEELS_DIGEST).
wheels:
	SOURCE_DATE_EPOCH=315532800 $(PYTHON) -m pip wheel --quiet --disable-pip-version-check --find-links build/wheels \
		--wheel-dir build/wheels . orjson uvloop

# The wheels reach the build through a bind mount, which the layer cache does not see: their
# digest, passed as a build argument, is what makes a changed wheel rebuild the layer.
WHEELS_DIGEST = $$(cat build/wheels/*.whl | sha256sum | cut -c1-16)

image-operator image-router: wheels
	$(PODMAN) build $(BUILD_FLAGS) --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg WHEELS_DIGEST=$(WHEELS_DIGEST) \
		-f images/$(@:image-%=%)/Dockerfile -t $(REGISTRY)/shoal-$(@:image-%=%):$(VERSION) .

image-eval: wheels
	$(PODMAN) build $(BUILD_FLAGS) --build-arg BASE_IMAGE=$(EVAL_BASE_IMAGE) --build-arg WHEELS_DIGEST=$(WHEELS_DIGEST) \
		-f images/eval/Dockerfile -t $(REGISTRY)/shoal-eval:$(VERSION) .

images: image-operator image-router image-eval

## A Debian bookworm base with Python for machines that reach no image registry
## (mmdebstrap from the Debian mirror, then imported); skipped when it exists.
base-image:
	@$(PODMAN) image exists $(LOCAL_BASE_IMAGE) || { mkdir -p build && \
		mmdebstrap --variant=minbase --include=python3,python3-pip,ca-certificates bookworm build/base.tar && \
		$(PODMAN) import build/base.tar $(LOCAL_BASE_IMAGE) && rm -f build/base.tar; }
