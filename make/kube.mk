# Local Kubernetes for tests and development: a real control plane built from pinned Go modules, with a kwok
# fake node sized like the kind node. Included by the Makefile. `eval "$(make -s kube-up)"` points kubectl,
# helm and every cluster target at it (KUBECONFIG, KUBE_CONTEXT).

KUBE_DIR ?= $(CURDIR)/.kube-local## certificates, etcd data and logs of `make kube-up`
KUBE_BINS := kube-apiserver kube-controller-manager kube-scheduler kubectl
ETCD := $(LOCALBIN)/etcd
KWOK := $(LOCALBIN)/kwok

##@ Local Kubernetes

.PHONY: kube-up
kube-up: venv kube-tools ## Start etcd, kube-apiserver, controller-manager, scheduler and a kwok node on loopback; prints `export` lines.
	@$(PY) -m tests.kube up --dir $(KUBE_DIR)

.PHONY: kube-down
kube-down: ## Stop the control plane of kube-up and delete its directory.
	@[ ! -x $(PY) ] || $(PY) -m tests.kube down --dir $(KUBE_DIR)

.PHONY: kube-tools
kube-tools: kube-bins etcd kwok ## Build the control plane (k8s.io/kubernetes v$(KUBE_VERSION), etcd, kwok) into ./bin, only what is missing.

.PHONY: kube-bins etcd kwok
kube-bins:
	@missing=""; for c in $(KUBE_BINS); do [ -x $(LOCALBIN)/$$c-v$(KUBE_VERSION) ] || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then echo "go build k8s.io/kubernetes v$(KUBE_VERSION):$$missing (cold: ~20 min)" >&2; \
	  hack/kube/build.sh $(LOCALBIN) $(KUBE_VERSION) $$missing; fi; \
	for c in $(KUBE_BINS); do ln -sf $$c-v$(KUBE_VERSION) $(LOCALBIN)/$$c; done
etcd:
	@[ -x $(ETCD)-$(ETCD_VERSION) ] || { echo "go build etcd $(ETCD_VERSION)" >&2; mkdir -p $(LOCALBIN); \
	  cd hack/etcd && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $(ETCD)-$(ETCD_VERSION) .; }
	@ln -sf etcd-$(ETCD_VERSION) $(ETCD)
kwok:
	$(call go-install-tool,$(KWOK),sigs.k8s.io/kwok/cmd/kwok,$(KWOK_VERSION))
