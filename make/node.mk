# A real single-node Kubernetes on this machine: the control plane of `make kube-up` plus a real node (kubelet,
# kube-proxy, containerd, runc, the CNI bridge, CoreDNS), everything built here from pinned Go modules and
# Debian packages. Included by the Makefile. Needs root. `eval "$(make -s local-cluster-up)"` points kubectl,
# helm and every cluster target at it; `make local-cluster-down` stops it and removes all it made.

LOCAL_CLUSTER_DIR ?= $(CURDIR)/.local-cluster## certificates, data, images and logs of `make local-cluster-up`
NODE_KUBE_BINS := kubelet kube-proxy
CONTAINERD_BINS := containerd ctr containerd-shim-runc-v2
COREDNS := $(LOCALBIN)/coredns
PAUSE := $(LOCALBIN)/pause
# runc and the CNI plugins run the pods; conntrack and socat are what kube-proxy and port-forward call;
# nft deletes the tables iptables-nft leaves behind (iptables cannot); busybox-static is the one binary of
# the test image (tests/node).
NODE_DEB_PACKAGES := runc containernetworking-plugins conntrack socat iptables nftables busybox-static

##@ Local Kubernetes with a real node

.PHONY: local-cluster-up
local-cluster-up: venv kube-tools node-tools node-deps ## Start the control plane and a real node (containerd, kubelet, kube-proxy, CoreDNS); prints `export` lines. Root only.
	@$(PY) -m tests.node up --dir $(LOCAL_CLUSTER_DIR)

.PHONY: local-cluster-down
local-cluster-down: ## Stop the cluster of local-cluster-up and remove all it made (processes, bridge, iptables chains, mounts, host dirs).
	@[ ! -x $(PY) ] || $(PY) -m tests.node down --dir $(LOCAL_CLUSTER_DIR)

.PHONY: local-cluster-load
local-cluster-load: ## Copy the project images (LOAD_IMAGES, tag IMG_TAG) into the node's containerd (docker save | ctr import).
	@mkdir -p $(CLUSTER_BUILD)
	for img in $(LOAD_IMAGES); do \
	  { $(call docker-save,$$img:$(IMG_TAG),$(CLUSTER_BUILD)/$$img.tar); } && \
	  $(PY) -m tests.node load --dir $(LOCAL_CLUSTER_DIR) $(CLUSTER_BUILD)/$$img.tar && \
	  echo "loaded $$img:$(IMG_TAG)" >&2; rc=$$?; rm -f $(CLUSTER_BUILD)/$$img.tar; [ $$rc = 0 ] || exit $$rc; done

.PHONY: test-node
test-node: node-deps venv kube-tools node-tools ## Run tests/node (a real node up, pods, logs/exec, ClusterIP, DNS, then down leaves the machine as it was). Not part of `make test`.
	TITANIC_NODE_TEST=1 $(VENV)/bin/pytest tests/node $(PYTEST_ARGS)

.PHONY: node-tools
node-tools: node-kube-bins containerd coredns pause ## Build the node's binaries into ./bin (kubelet, kube-proxy, containerd $(CONTAINERD_VERSION), CoreDNS $(COREDNS_VERSION), pause $(PAUSE_VERSION)), only what is missing.

.PHONY: node-deps
node-deps: ## Install the node's missing Debian packages with apt (runc, CNI plugins, conntrack, socat, iptables, nftables, busybox-static).
	@missing=""; for p in $(NODE_DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	if [ -n "$$missing" ]; then echo "apt-get install$$missing" >&2; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

.PHONY: node-kube-bins containerd coredns pause
node-kube-bins:
	@missing=""; for c in $(NODE_KUBE_BINS); do [ -x $(LOCALBIN)/$$c-v$(KUBE_VERSION) ] || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then echo "go build k8s.io/kubernetes v$(KUBE_VERSION):$$missing" >&2; \
	  hack/kube/build.sh $(LOCALBIN) $(KUBE_VERSION) $$missing; fi; \
	for c in $(NODE_KUBE_BINS); do ln -sf $$c-v$(KUBE_VERSION) $(LOCALBIN)/$$c; done
# containerd's own Makefile builds with these tags: no btrfs headers needed, no urfave/cli docs generator.
containerd:
	@missing=""; for c in $(CONTAINERD_BINS); do [ -x $(LOCALBIN)/$$c-$(CONTAINERD_VERSION) ] || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then echo "go install containerd $(CONTAINERD_VERSION):$$missing (cold: ~3 min)" >&2; \
	  mkdir -p $(LOCALBIN); tmp=$$(mktemp -d); pkgs=""; \
	  for c in $$missing; do pkgs="$$pkgs github.com/containerd/containerd/v2/cmd/$$c@$(CONTAINERD_VERSION)"; done; \
	  GOBIN=$$tmp go install -tags "no_btrfs urfave_cli_no_docs" -trimpath -ldflags "-s -w" $$pkgs; \
	  for c in $$missing; do mv $$tmp/$$c $(LOCALBIN)/$$c-$(CONTAINERD_VERSION); done; rm -rf $$tmp; fi; \
	for c in $(CONTAINERD_BINS); do ln -sf $$c-$(CONTAINERD_VERSION) $(LOCALBIN)/$$c; done
coredns:
	@[ -x $(COREDNS)-$(COREDNS_VERSION) ] || { echo "go build coredns $(COREDNS_VERSION) (cold: ~2 min)" >&2; mkdir -p $(LOCALBIN); \
	  cd hack/coredns && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $(COREDNS)-$(COREDNS_VERSION) .; }
	@ln -sf coredns-$(COREDNS_VERSION) $(COREDNS)
# Kubernetes' build/pause/Makefile: the same C file and flags, built with the machine's gcc instead of kube-cross.
pause:
	@[ -x $(PAUSE)-$(PAUSE_VERSION) ] || { echo "gcc -static pause $(PAUSE_VERSION)" >&2; mkdir -p $(LOCALBIN); \
	  dir=$$(cd hack/kube && go mod download -json k8s.io/kubernetes | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	  gcc -Os -Wall -Werror -static -DVERSION=v$(PAUSE_VERSION) -o $(PAUSE)-$(PAUSE_VERSION) $$dir/build/pause/linux/pause.c; \
	  strip $(PAUSE)-$(PAUSE_VERSION); }
	@ln -sf pause-$(PAUSE_VERSION) $(PAUSE)

##@ The platform on the local cluster

LOCAL_PLATFORM_MIN_FREE_GIB ?= 12## free disk space local-platform-up requires before it builds anything
LOCAL_IMAGES := titanic-pipeline titanic-model-server titanic-webapp## the project images the local platform runs (Airflow runs on the host)

.PHONY: local-platform-up
local-platform-up: venv airflow-venv ## The platform on the local cluster: images built and loaded, KServe, `make deploy`, data services and Airflow on the host, a first DAG run of real step pods; prints `export` lines. Root only.
	@# images, build cache and the node's containerd take ~10 GiB; a fuller disk makes the kubelet delete images
	@avail=$$(df -Pk . | awk 'NR==2 {print $$4}'); [ "$$avail" -ge $$(($(LOCAL_PLATFORM_MIN_FREE_GIB) * 1048576)) ] || { \
	  echo "error: local-platform-up needs $(LOCAL_PLATFORM_MIN_FREE_GIB) GiB free on $$(df -P . | awk 'NR==2 {print $$6}'), has $$((avail / 1048576)) GiB" >&2; exit 1; }
	@$(MAKE) --no-print-directory local-cluster-up >/dev/null
	@{ $(MAKE) --no-print-directory images IMAGE_TARGETS="$(LOCAL_IMAGES:titanic-%=%-image)" && \
	  $(MAKE) --no-print-directory local-cluster-load LOAD_IMAGES="$(LOCAL_IMAGES)" && \
	  $(MAKE) --no-print-directory third-party-images-local local-cluster-load-third-party; } >&2
	@$(PY) -m tests.local_platform up --dir $(LOCAL_CLUSTER_DIR) --image-tag $(IMG_TAG) $(if $(CHARTS_DIR),--charts-dir $(CHARTS_DIR))

.PHONY: local-platform-down
local-platform-down: ## Stop the local platform (Airflow, the data services) and the local cluster; the machine is as before.
	@[ ! -x $(PY) ] || $(PY) -m tests.local_platform down --dir $(LOCAL_CLUSTER_DIR)
	@$(MAKE) --no-print-directory local-cluster-down

.PHONY: test-local-platform
test-local-platform: ## Bring the local platform up, run tests/e2e against it, and take it down again (also on failure). Root only; DOCKER=... builds the images.
	@trap '$(MAKE) --no-print-directory local-platform-down' EXIT; set -e; \
	exports=$$($(MAKE) -s --no-print-directory local-platform-up | grep '^export '); echo "$$exports"; eval "$$exports"; \
	$(VENV)/bin/pytest tests/e2e -p no:cacheprovider $(PYTEST_ARGS)
