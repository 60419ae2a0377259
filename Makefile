# Titanic MLOps: every operation of the project. `make` (or `make help`) lists the targets.
include versions.env

SHELL := /usr/bin/env bash
.SHELLFLAGS := -ec -o pipefail
.DEFAULT_GOAL := help

LOCALBIN ?= $(CURDIR)/bin## pinned tools live here as <tool>-<version> with a symlink
VENV ?= $(CURDIR)/.venv## the project's virtualenv (pipeline, serving, webapp, tests)
AIRFLOW_VENV ?= $(CURDIR)/.venv-airflow## Airflow cannot share a venv with kserve (psutil pins)
SERVICES_DIR ?= $(CURDIR)/.services## data and pids of `make services-up`
PY := $(VENV)/bin/python
PYTEST_ARGS ?=## extra arguments for pytest, e.g. PYTEST_ARGS='-k ingest -x'
PIP_VERSION ?= 25.3## pip used inside the venvs (the bundled 23.2 backtracks badly on Airflow)
# Tag of the project images: the commit (+ a hash of uncommitted changes); computed once, shared with sub-makes.
ifeq ($(origin IMG_TAG),undefined)
IMG_TAG := $(shell hack/image-tag.sh)
endif
export IMG_TAG

export PATH := $(LOCALBIN):$(PATH)

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: venv
venv: $(VENV)/.installed ## Create .venv with the project (editable) and every extra.

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip==$(PIP_VERSION)
	$(VENV)/bin/pip install -q -e '.[all,dev]'
	touch $@

.PHONY: airflow-venv
airflow-venv: $(AIRFLOW_VENV)/.installed ## Create .venv-airflow with the pinned Airflow and cncf-kubernetes provider.

$(AIRFLOW_VENV)/.installed: versions.env
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q --upgrade pip==$(PIP_VERSION)
	$(AIRFLOW_VENV)/bin/pip install -q "apache-airflow==$(AIRFLOW_VERSION)" \
	  "apache-airflow-providers-cncf-kubernetes==$(AIRFLOW_PROVIDER_CNCF_K8S_VERSION)" \
	  "pytest==9.2.0" "pytest-timeout==2.4.0" "pyyaml==6.0.4" "jsonschema==4.26.0" "kubernetes-validate==1.37.0"
	touch $@

.PHONY: system-deps
system-deps: ## Install missing Debian/Ubuntu packages (redis-server, promtool, a Chromium unless one exists) with apt.
	@missing=""; for p in redis-server prometheus; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v chromium >/dev/null || command -v google-chrome >/dev/null || missing="$$missing chromium"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	if [ -n "$$missing" ]; then echo "apt-get install$$missing" >&2; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

.PHONY: services-up
services-up: venv versitygw ## Start Postgres, Redis and an S3 server locally; `eval "$(make -s services-up)"` exports their settings.
	@$(PY) -m tests.services up --dir $(SERVICES_DIR) --versitygw $(VERSITYGW)

.PHONY: services-down
services-down: ## Stop the services started by services-up and delete their data.
	@[ ! -x $(PY) ] || $(PY) -m tests.services down --dir $(SERVICES_DIR)

.PHONY: migrate
migrate: venv ## Apply database migrations (needs the services' environment).
	$(PY) -m pipeline migrate

.PHONY: train-local
train-local: venv ## Run migrate -> ingest -> features -> train -> evaluate -> deploy(local) against local services.
	src="$${DATASET_URL:-}"; [ -n "$$src" ] || src=$$($(PY) -m tests.inputs --path data/titanic/train.csv); \
	$(PY) -m pipeline run-all --source "$$src" --sha256 "$(DATASET_SHA256)"

##@ Test

.PHONY: test
test: system-deps venv tools test-inputs airflow-venv kube-tools ## Run the whole test suite against real local services (started and stopped by the tests).
	$(VENV)/bin/pytest tests --ignore=tests/dags --ignore=tests/node --ignore=tests/images/test_built_images.py --ignore=tests/images/test_third_party_images.py $(PYTEST_ARGS)  # make test-node, test-images, test-third-party-images
	$(AIRFLOW_VENV)/bin/pytest tests/dags -p no:cacheprovider --confcutdir=tests/dags $(PYTEST_ARGS)  # tests/conftest.py needs the main venv

.PHONY: test-inputs
test-inputs: venv helm ## Fetch the pinned test inputs (dataset, CRDs, upstream charts) that ../shared lacks into build/test-inputs, once.
	@$(PY) -m tests.inputs

.PHONY: bench
bench: system-deps venv versitygw ## Run the benchmarks (not part of `make test`) and print their numbers.
	$(PY) -m bench

.PHONY: bench-soak
bench-soak: system-deps venv versitygw ## Soak (10 min at 70% of capacity) and overload (1 min at 2x) web app -> transformer -> predictor.
	BENCH_SOAK=1 $(PY) -m bench soak

##@ Dependencies

.PHONY: tools
tools: versitygw helm kubeconform kube-score prometheus alertmanager ## Install every pinned Go tool the tests need into ./bin.

VERSITYGW := $(LOCALBIN)/versitygw
HELM := $(LOCALBIN)/helm
KUBECONFORM := $(LOCALBIN)/kubeconform
KUBE_SCORE := $(LOCALBIN)/kube-score
KIND := $(LOCALBIN)/kind
PROMETHEUS := $(LOCALBIN)/prometheus
ALERTMANAGER := $(LOCALBIN)/alertmanager

.PHONY: versitygw helm kubeconform kube-score kind
versitygw: ## S3 server for local runs and tests (Apache-2.0).
	$(call go-install-tool,$(VERSITYGW),github.com/versity/versitygw/cmd/versitygw,$(VERSITYGW_VERSION))
helm: ## Helm client.
	$(call go-install-tool,$(HELM),helm.sh/helm/v3/cmd/helm,$(HELM_VERSION))
kubeconform: ## Offline manifest validation.
	$(call go-install-tool,$(KUBECONFORM),github.com/yannh/kubeconform/cmd/kubeconform,$(KUBECONFORM_VERSION))
kube-score: ## Static analysis of rendered manifests.
	$(call go-install-tool,$(KUBE_SCORE),github.com/zegl/kube-score/cmd/kube-score,$(KUBE_SCORE_VERSION))
kind: ## kind CLI for the local cluster.
	$(call go-install-tool,$(KIND),sigs.k8s.io/kind,$(KIND_VERSION))

# `go install` refuses both modules (a replace directive; an unbuilt UI to embed): hack/prometheus/build.sh.
.PHONY: prometheus alertmanager
prometheus: ## Prometheus server of the monitoring loop test (API only, no UI assets).
	@[ -x $(PROMETHEUS)-$(PROMETHEUS_VERSION) ] || { echo "go build prometheus $(PROMETHEUS_VERSION)" >&2; \
	  hack/prometheus/build.sh $(PROMETHEUS)-$(PROMETHEUS_VERSION) github.com/prometheus/prometheus \
	    $(PROMETHEUS_MODULE_VERSION) prometheus $(PROMETHEUS_VERSION:v%=%); }
	@ln -sf prometheus-$(PROMETHEUS_VERSION) $(PROMETHEUS)
alertmanager: ## Alertmanager of the monitoring loop test (API only, no UI).
	@[ -x $(ALERTMANAGER)-$(ALERTMANAGER_VERSION) ] || { echo "go build alertmanager $(ALERTMANAGER_VERSION)" >&2; \
	  hack/prometheus/build.sh $(ALERTMANAGER)-$(ALERTMANAGER_VERSION) github.com/prometheus/alertmanager \
	    $(ALERTMANAGER_VERSION) alertmanager; }
	@ln -sf alertmanager-$(ALERTMANAGER_VERSION) $(ALERTMANAGER)

# go-install-tool installs $(2)@$(3) as $(1)-$(3) only when that pinned binary is missing,
# and points the $(1) symlink at it, so a version bump reinstalls.
define go-install-tool
@[ -x "$(1)-$(3)" ] || { echo "go install $(2)@$(3)" >&2; mkdir -p $(LOCALBIN); \
  tmp=$$(mktemp -d); GOBIN=$$tmp go install $(2)@$(3); mv $$tmp/$$(basename $(1)) $(1)-$(3); rm -rf $$tmp; }; \
  ln -sf $$(basename $(1))-$(3) $(1)
endef

include $(wildcard make/*.mk)
