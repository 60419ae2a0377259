# Building the project images anywhere, a machine without a container registry included: the base images
# (official, or local stand-ins), the CA bundle of the build's HTTPS, a private Docker engine, and the tests of the
# built images. Included by the Makefile; the image targets are in airflow.mk, serving.mk, web.mk, `images` in cluster.mk.

BASE_IMAGES ?= auto## bases of `make images`: auto (official ones that can be pulled, local stand-ins of the others), official, local
BASE_IMAGES_DIR ?= $(CURDIR)/build/base-images## scratch space of the stand-ins (debootstrap root filesystem), removed afterwards
STANDIN_DEBIAN_MIRROR ?=## Debian mirror of the stand-ins (.../debian); empty: debootstrap's default
LOCAL_DOCKER_DIR ?= $(CURDIR)/build/docker## data, runtime files and socket of the private engine of `make local-docker-up`
# Build stages get the machine's CA bundle as a BuildKit secret (RUN --mount=type=secret,id=ca: never in a layer)
# when the machine trusts CAs of its own, such as an intercepting proxy's: `BUILD_CA_BUNDLE=` builds without it.
BUILD_CA_BUNDLE ?= $(if $(wildcard /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt),$(wildcard /etc/ssl/certs/ca-certificates.crt))
BUILD_NETWORK ?=## network of the build steps; empty: the engine's default, or host when it has no bridge (hack/local-docker.sh)

comma := ,
# Every image build: BuildKit (RUN --mount needs it; Debian's docker 20.10 client does not default to it), the CA
# secret, and host networking on an engine without a bridge network (builds there fail: "network bridge not found").
BUILD_FLAGS = $(if $(BUILD_CA_BUNDLE),--secret id=ca$(comma)src=$(BUILD_CA_BUNDLE)) \
  $(if $(BUILD_NETWORK),--network $(BUILD_NETWORK),$$($(DOCKER) network inspect bridge >/dev/null 2>&1 || echo --network host))
DOCKER_BUILD = DOCKER_BUILDKIT=1 $(DOCKER) build $(BUILD_FLAGS)

# Debian packages of a private engine and of the stand-ins: Debian's Docker (20.10: dockerd with BuildKit, its
# containerd, runc, tini) unless the machine has a dockerd already, and debootstrap.
IMAGE_DEB_PACKAGES = debootstrap $(if $(wildcard /usr/sbin/dockerd /usr/bin/dockerd),,docker.io)

##@ Images

# The base images to build from, as NAME=image lines (make syntax): `make images` writes them to
# $(BASE_IMAGES_RESOLVED) and its sub-makes read that file (BASE_IMAGES_FILE); `make -n images` shows the pins.
resolve-base-images = DOCKER="$(DOCKER)" BASE_IMAGES=$(BASE_IMAGES) BASE_IMAGES_DIR=$(BASE_IMAGES_DIR) \
  BUILD_FLAGS="$(BUILD_FLAGS)" PYTHON_BASE_IMAGE=$(PYTHON_BASE_IMAGE) NODE_IMAGE=$(NODE_IMAGE) \
  AIRFLOW_BASE_IMAGE=$(AIRFLOW_BASE_IMAGE) STANDIN_DEBIAN_SUITE=$(STANDIN_DEBIAN_SUITE) \
  STANDIN_DEBIAN_MIRROR="$(STANDIN_DEBIAN_MIRROR)" STANDIN_NODE_VERSION=$(STANDIN_NODE_VERSION) \
  STANDIN_NPM_VERSION=$(STANDIN_NPM_VERSION) AIRFLOW_VERSION=$(AIRFLOW_VERSION) \
  AIRFLOW_PROVIDER_CNCF_K8S_VERSION=$(AIRFLOW_PROVIDER_CNCF_K8S_VERSION) PIP_VERSION=$(PIP_VERSION) hack/base-images.sh
BASE_IMAGES_RESOLVED := $(CURDIR)/build/base-images.mk
ifdef BASE_IMAGES_FILE
-include $(BASE_IMAGES_FILE)
endif

.PHONY: base-images
base-images: ## Print the base images `make images` builds from (official ones; stand-ins, built here, for those that cannot be pulled).
	@$(resolve-base-images)

.PHONY: image-deps
image-deps: ## Install the missing Debian packages of local image builds with apt (debootstrap; docker.io unless a dockerd exists).
	@missing=""; for p in $(IMAGE_DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	if [ -n "$$missing" ]; then echo "apt-get install$$missing" >&2; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

.PHONY: local-docker-up local-docker-down local-docker-clean
local-docker-up: image-deps ## Start a private dockerd in $(LOCAL_DOCKER_DIR) (no bridge, no iptables); prints the DOCKER=... of `make images`. Root.
	@hack/local-docker.sh up $(LOCAL_DOCKER_DIR)
local-docker-down: ## Stop the private dockerd: no process, mount or runtime file left; its images and build cache stay.
	@hack/local-docker.sh down $(LOCAL_DOCKER_DIR)
local-docker-clean: ## Stop the private dockerd and delete $(LOCAL_DOCKER_DIR), its images and build cache too.
	@hack/local-docker.sh purge $(LOCAL_DOCKER_DIR)

##@ Test

.PHONY: test-images
test-images: venv ## Build the images (make images) and test them: no build CA in any layer, uid 1000, read-only root. Needs a Docker engine (DOCKER=...). Not part of `make test`.
	DOCKER="$(DOCKER)" $(VENV)/bin/pytest tests/images/test_built_images.py -p no:cacheprovider $(PYTEST_ARGS)
