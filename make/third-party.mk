# The upstream images KServe's control plane needs, built here for machines that reach no container registry (a
# real local node: `make local-cluster-up`), from pinned sources and tagged with the names the rendered upstream
# charts use, so the charts install unchanged: the controller, KServe's agent and kube-rbac-proxy from the Go module
# proxy, the storage initializer from PyPI. Not cert-manager: the Go module proxy does not serve its commands
# (README). Included by the Makefile.

KSERVE_CONTROLLER := $(LOCALBIN)/kserve-controller
KSERVE_AGENT := $(LOCALBIN)/kserve-agent
KUBE_RBAC_PROXY := $(LOCALBIN)/kube-rbac-proxy
# The KServe images carry the chart's version; kube-rbac-proxy is the kserve-resources chart's rbacProxyImage.
# The agent is the sidecar KServe injects into a predictor without storageUri (a multi-model server: ours until the
# first model is deployed); the chart names it in its inferenceservice-config ConfigMap.
KSERVE_CONTROLLER_IMAGE := kserve/kserve-controller:$(KSERVE_CHART_VERSION)
KSERVE_AGENT_IMAGE := kserve/agent:$(KSERVE_CHART_VERSION)
STORAGE_INITIALIZER_IMAGE := kserve/storage-initializer:$(KSERVE_CHART_VERSION)
KUBE_RBAC_PROXY_IMAGE := quay.io/brancz/kube-rbac-proxy:$(KUBE_RBAC_PROXY_VERSION)
THIRD_PARTY_LOCAL_IMAGES := $(KSERVE_CONTROLLER_IMAGE) $(KUBE_RBAC_PROXY_IMAGE) $(STORAGE_INITIALIZER_IMAGE) \
  $(KSERVE_AGENT_IMAGE)
THIRD_PARTY_BUILD := $(CURDIR)/build/third-party

##@ Third-party images built here (no registry)

.PHONY: third-party-images-local
third-party-images-local: kserve-controller kserve-agent kube-rbac-proxy ## Build the KServe controller, agent, kube-rbac-proxy and storage initializer images the engine (DOCKER) lacks; prints each.
	@mkdir -p $(THIRD_PARTY_BUILD) && $(resolve-base-images) > $(THIRD_PARTY_BUILD)/base-images.mk
	@DOCKER="$(DOCKER)" BUILD_FLAGS="$(BUILD_FLAGS)" BUILD_DIR=$(THIRD_PARTY_BUILD) \
	  PYTHON_BASE_IMAGE=$$(sed -n 's/^PYTHON_BASE_IMAGE=//p' $(THIRD_PARTY_BUILD)/base-images.mk) \
	  KSERVE_VERSION=$(KSERVE_CHART_VERSION) KSERVE_CONTROLLER_BIN=$(KSERVE_CONTROLLER)-$(KSERVE_CHART_VERSION) \
	  KSERVE_AGENT_BIN=$(KSERVE_AGENT)-$(KSERVE_CHART_VERSION) \
	  KUBE_RBAC_PROXY_BIN=$(KUBE_RBAC_PROXY)-$(KUBE_RBAC_PROXY_VERSION) \
	  KSERVE_CONTROLLER_IMAGE=$(KSERVE_CONTROLLER_IMAGE) KSERVE_AGENT_IMAGE=$(KSERVE_AGENT_IMAGE) \
	  KUBE_RBAC_PROXY_IMAGE=$(KUBE_RBAC_PROXY_IMAGE) STORAGE_INITIALIZER_IMAGE=$(STORAGE_INITIALIZER_IMAGE) \
	  hack/third-party-images.sh
	@rm -rf $(THIRD_PARTY_BUILD)

.PHONY: third-party-images-local-list
third-party-images-local-list: ## Print the images of third-party-images-local, one per line (what local-cluster-load-third-party loads).
	@printf '%s\n' $(THIRD_PARTY_LOCAL_IMAGES)

.PHONY: local-cluster-load-third-party
local-cluster-load-third-party: ## Copy the images of third-party-images-local into the node of local-cluster-up (docker save | ctr import).
	@mkdir -p $(CLUSTER_BUILD)
	$(call docker-save,$(THIRD_PARTY_LOCAL_IMAGES),$(CLUSTER_BUILD)/third-party-local.tar)
	$(PY) -m tests.node load --dir $(LOCAL_CLUSTER_DIR) $(CLUSTER_BUILD)/third-party-local.tar
	rm -f $(CLUSTER_BUILD)/third-party-local.tar

.PHONY: test-third-party-images
test-third-party-images: venv versitygw helm test-inputs ## Build (third-party-images-local) and test the third-party images: non-root, pinned versions, an S3 download. Needs DOCKER=...; not in `make test`.
	DOCKER="$(DOCKER)" $(VENV)/bin/pytest tests/images/test_third_party_images.py -p no:cacheprovider $(PYTEST_ARGS)

# KServe's go.mod has replace directives: built in the wrapper module hack/kserve, whose go.mod must require the
# chart's version. Static, as upstream's Dockerfiles build them; the target names the binary, KSERVE_CMD its cmd/.
.PHONY: kserve-controller kserve-agent kube-rbac-proxy
kserve-controller: KSERVE_CMD := manager
kserve-agent: KSERVE_CMD := agent
kserve-controller kserve-agent:
	@[ -x $(LOCALBIN)/$@-$(KSERVE_CHART_VERSION) ] || { \
	  grep -qx 'require github.com/kserve/kserve $(KSERVE_CHART_VERSION)' hack/kserve/go.mod || { \
	    echo "hack/kserve/go.mod does not require kserve $(KSERVE_CHART_VERSION) (KSERVE_CHART_VERSION)" >&2; exit 1; }; \
	  echo "go build github.com/kserve/kserve/cmd/$(KSERVE_CMD) $(KSERVE_CHART_VERSION) (cold: ~7 min)" >&2; \
	  mkdir -p $(LOCALBIN); \
	  cd hack/kserve && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
	    -o $(LOCALBIN)/$@-$(KSERVE_CHART_VERSION) github.com/kserve/kserve/cmd/$(KSERVE_CMD); }
	@ln -sf $@-$(KSERVE_CHART_VERSION) $(LOCALBIN)/$@
# Version-stamped as kube-rbac-proxy's own Makefile does (`--version` prints it).
kube-rbac-proxy:
	@[ -x $(KUBE_RBAC_PROXY)-$(KUBE_RBAC_PROXY_VERSION) ] || { \
	  grep -qx 'require github.com/brancz/kube-rbac-proxy $(KUBE_RBAC_PROXY_VERSION)' hack/kube-rbac-proxy/go.mod || { \
	    echo "hack/kube-rbac-proxy/go.mod does not require $(KUBE_RBAC_PROXY_VERSION) (KUBE_RBAC_PROXY_VERSION)" >&2; exit 1; }; \
	  echo "go build github.com/brancz/kube-rbac-proxy $(KUBE_RBAC_PROXY_VERSION) (cold: ~4 min)" >&2; \
	  mkdir -p $(LOCALBIN); cd hack/kube-rbac-proxy && CGO_ENABLED=0 go build -trimpath \
	    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_RBAC_PROXY_VERSION) \
	      -X k8s.io/component-base/version/verflag.programName=kube-rbac-proxy" \
	    -o $(KUBE_RBAC_PROXY)-$(KUBE_RBAC_PROXY_VERSION) github.com/brancz/kube-rbac-proxy/cmd/kube-rbac-proxy; }
	@ln -sf kube-rbac-proxy-$(KUBE_RBAC_PROXY_VERSION) $(KUBE_RBAC_PROXY)
