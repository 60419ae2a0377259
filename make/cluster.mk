# Cluster: the kind cluster, the upstream platform (Helm), the project images and chart. Included by the Makefile.
# Every step is idempotent: `make cluster-up` can be re-run at any point and converges.

KIND_CLUSTER ?= titanic## name of the kind cluster
KUBE_CONTEXT ?= kind-$(KIND_CLUSTER)## kubeconfig context every cluster command uses
OBJECT_STORE ?= seaweedfs## S3 storage: seaweedfs (default) or minio (last community image, archived upstream)
CLUSTER_BUILD ?= $(CURDIR)/build/cluster## generated files of cluster-up (credentials values, image archives); never committed
WAIT_TIMEOUT ?= 600s## how long each install step waits for its pods
ISVC_TIMEOUT ?= 1200s## how long cluster-up waits for the InferenceService after the first training run
GRAFANA_PORT ?= 3000## local port of `make grafana`
AIRFLOW_PORT ?= 8080## local port of `make airflow`
S3_CONSOLE_PORT ?= 8333## local port of `make s3-console`
DEPLOY_ARGS ?=## extra arguments for the chart's helm upgrade, e.g. DEPLOY_ARGS='--set webapp.replicas=2'

CHARTS_DIR ?=## a folder of unpacked upstream charts (<name>/Chart.yaml) to install instead of their repositories (offline tests)
CHART_MIRROR ?=## one Helm repository URL serving every upstream chart under its own name, for `upstream-charts` (a mirror)

KUBECTL_BIN := $(LOCALBIN)/kubectl
KUBECTL = $(KUBECTL_BIN) --context $(KUBE_CONTEXT)
HELM_UP = $(HELM) --kube-context $(KUBE_CONTEXT) upgrade --install --wait --timeout $(WAIT_TIMEOUT)
# The upstream charts of cluster-up: where each comes from and its pinned version (versions.env).
UPSTREAM_CHARTS := cert-manager traefik kserve-crd kserve-resources cloudnative-pg valkey seaweedfs kube-prometheus-stack airflow
CHART_REF_cert-manager := cert-manager --repo https://charts.jetstack.io
CHART_REF_traefik := traefik --repo https://traefik.github.io/charts
CHART_REF_kserve-crd := oci://ghcr.io/kserve/charts/kserve-crd
CHART_REF_kserve-resources := oci://ghcr.io/kserve/charts/kserve-resources
CHART_REF_cloudnative-pg := cloudnative-pg --repo https://cloudnative-pg.github.io/charts
CHART_REF_valkey := valkey --repo https://valkey.io/valkey-helm/
CHART_REF_seaweedfs := seaweedfs --repo https://seaweedfs.github.io/seaweedfs/helm
CHART_REF_kube-prometheus-stack := kube-prometheus-stack --repo https://prometheus-community.github.io/helm-charts
CHART_REF_airflow := airflow --repo https://airflow.apache.org
CHART_VERSION_cert-manager := $(CERT_MANAGER_CHART_VERSION)
CHART_VERSION_traefik := $(TRAEFIK_CHART_VERSION)
CHART_VERSION_kserve-crd := $(KSERVE_CHART_VERSION)
CHART_VERSION_kserve-resources := $(KSERVE_CHART_VERSION)
CHART_VERSION_cloudnative-pg := $(CNPG_CHART_VERSION)
CHART_VERSION_valkey := $(VALKEY_CHART_VERSION)
CHART_VERSION_seaweedfs := $(SEAWEEDFS_CHART_VERSION)
CHART_VERSION_kube-prometheus-stack := $(KPS_CHART_VERSION)
CHART_VERSION_airflow := $(AIRFLOW_CHART_VERSION)
# upstream NAME: the chart from its repository at the pinned version, or the unpacked copy $(CHARTS_DIR)/NAME when
# CHARTS_DIR is set (offline tests; a test checks each copy's Chart.yaml has the pinned version).
upstream = $(if $(CHARTS_DIR),$(CHARTS_DIR)/$(1),$(CHART_REF_$(1)) --version $(CHART_VERSION_$(1)))
VALUES := $(CURDIR)/charts/values
PROJECT_IMAGES := titanic-pipeline titanic-model-server titanic-webapp titanic-airflow

ifeq ($(OBJECT_STORE),minio)
S3_SERVICE := minio## S3 host of the chosen object store, and its console
S3_ENDPOINT_IN_CLUSTER := minio.data.svc.cluster.local:9000
S3_CONSOLE := svc/minio $(S3_CONSOLE_PORT):9001
else
S3_SERVICE := seaweedfs
S3_ENDPOINT_IN_CLUSTER := seaweedfs-all-in-one.data.svc.cluster.local:8333
S3_CONSOLE := svc/seaweedfs-all-in-one $(S3_CONSOLE_PORT):8333
endif

# secret-get NAMESPACE NAME KEY: a value of an existing Secret (empty when absent), so re-runs reuse credentials.
# --ignore-not-found: only "absent" is empty; any other error (API unreachable, forbidden) stops the recipe
# with kubectl's message instead of silently generating new credentials over the existing ones.
secret-get = $$($(KUBECTL) -n $(1) get secret $(2) --ignore-not-found -o jsonpath='{.data.$(3)}' | base64 -d)
# A new random credential (hex: safe in URLs and connection strings).
random = $$(openssl rand -hex $(1))
# apply-secret NAMESPACE NAME ARGS: create or update a generic Secret from --from-literal ARGS.
apply-secret = $(KUBECTL) -n $(1) create secret generic $(2) $(3) --dry-run=client -o yaml | $(KUBECTL) apply -f - >/dev/null

##@ Cluster

.PHONY: cluster-up
cluster-up: ## Create the kind cluster and install everything: platform, images, project chart, dataset, first model.
	$(MAKE) --no-print-directory cluster-create
	$(MAKE) --no-print-directory load-third-party
	$(MAKE) --no-print-directory namespaces
	$(MAKE) --no-print-directory cert-manager
	$(MAKE) --no-print-directory ingress
	$(MAKE) --no-print-directory kserve
	$(MAKE) --no-print-directory credentials
	$(MAKE) --no-print-directory postgres
	$(MAKE) --no-print-directory postgres-ready
	$(MAKE) --no-print-directory redis
	$(MAKE) --no-print-directory object-store
	$(MAKE) --no-print-directory monitoring
	$(MAKE) --no-print-directory airflow-install
	$(MAKE) --no-print-directory images
	$(MAKE) --no-print-directory load
	$(MAKE) --no-print-directory deploy
	$(MAKE) --no-print-directory dataset
	$(MAKE) --no-print-directory first-model
	$(MAKE) --no-print-directory urls

.PHONY: cluster-down
cluster-down: kind ## Delete the kind cluster (and everything in it).
	$(KIND) delete cluster --name $(KIND_CLUSTER)

.PHONY: cluster-create
cluster-create: kind kubectl helm ## Create the kind cluster from kind-config.yaml unless it exists.
	@command -v docker >/dev/null || { echo "Docker is required (see README: Running the platform)" >&2; exit 1; }
	if ! $(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config kind-config.yaml --image $(KIND_NODE_IMAGE) --wait 180s; fi

.PHONY: namespaces
namespaces: kubectl ## Create the platform's namespaces (Pod Security labels included).
	$(KUBECTL) apply -f manifests/namespaces.yaml

.PHONY: cert-manager
cert-manager: ## Install cert-manager (KServe's webhook certificates).
	$(HELM_UP) cert-manager $(call upstream,cert-manager) \
	  -n cert-manager --create-namespace -f $(VALUES)/cert-manager.yaml

.PHONY: ingress
ingress: ## Install Traefik, the ingress controller on host ports 80/443.
	$(HELM_UP) traefik $(call upstream,traefik) \
	  -n traefik --create-namespace -f $(VALUES)/traefik.yaml

.PHONY: kserve
kserve: ## Install the KServe CRDs and controller in Standard (raw Deployment) mode.
	$(HELM_UP) kserve-crd $(call upstream,kserve-crd) \
	  -n kserve --create-namespace
	$(HELM_UP) kserve-resources $(call upstream,kserve-resources) \
	  -n kserve -f $(VALUES)/kserve-resources.yaml

# Generated once, kept in the cluster (the Secrets below are the source of truth), reused on every re-run: Postgres roles, S3 keys, Airflow secrets, the
# Alertmanager webhook token. The project chart gets the same values through $(CLUSTER_BUILD)/credentials.yaml.
# S3 has two SeaweedFS identities: read-write (step pods, hook Jobs) and read-only (web app, transformer, KServe's
# storage initializer). MinIO (OBJECT_STORE=minio) runs with its root identity only: there both pairs are the same.
.PHONY: credentials
credentials: ## Generate the platform's credentials as Secrets (only those missing) and the chart's credentials values.
	@mkdir -p $(CLUSTER_BUILD) && chmod 700 $(CLUSTER_BUILD)
	@pg=$(call secret-get,data,pg-titanic,password); pg=$${pg:-$(call random,24)}; \
	pga=$(call secret-get,data,pg-airflow,password); pga=$${pga:-$(call random,24)}; \
	ak=$(call secret-get,data,minio-root,MINIO_ROOT_USER); ak=$${ak:-$(call random,10)}; \
	sk=$(call secret-get,data,minio-root,MINIO_ROOT_PASSWORD); sk=$${sk:-$(call random,20)}; \
	rk=$(call secret-get,data,s3-reader,accessKey); rk=$${rk:-$(call random,10)}; \
	rs=$(call secret-get,data,s3-reader,secretKey); rs=$${rs:-$(call random,20)}; \
	ap=$(call secret-get,airflow,airflow-admin,password); ap=$${ap:-$(call random,16)}; \
	tok=$(call secret-get,monitoring,titanic-alertmanager-token,token); tok=$${tok:-$(call random,24)}; \
	fernet=$(call secret-get,airflow,airflow-fernet,fernet-key); fernet=$${fernet:-$$(openssl rand -base64 32 | tr '+/' '-_')}; \
	api=$(call secret-get,airflow,airflow-api-secret,api-secret-key); api=$${api:-$(call random,24)}; \
	jwt=$(call secret-get,airflow,airflow-jwt,jwt-secret); jwt=$${jwt:-$(call random,32)}; \
	$(call apply-secret,data,pg-titanic,--type=kubernetes.io/basic-auth --from-literal=username=titanic --from-literal=password=$$pg); \
	$(call apply-secret,data,pg-airflow,--type=kubernetes.io/basic-auth --from-literal=username=airflow --from-literal=password=$$pga); \
	$(call apply-secret,data,s3-reader,--from-literal=accessKey=$$rk --from-literal=secretKey=$$rs); \
	s3conf='{"identities":[{"name":"titanic","credentials":[{"accessKey":"'"$$ak"'","secretKey":"'"$$sk"'"}],"actions":["Admin","Read","Write","List","Tagging"]},'; \
	s3conf="$$s3conf"'{"name":"titanic-reader","credentials":[{"accessKey":"'"$$rk"'","secretKey":"'"$$rs"'"}],"actions":["Read","List"]}]}'; \
	$(call apply-secret,data,seaweedfs-s3-config,--from-literal=seaweedfs_s3_config="$$s3conf"); \
	$(call apply-secret,data,minio-root,--from-literal=MINIO_ROOT_USER=$$ak --from-literal=MINIO_ROOT_PASSWORD=$$sk); \
	$(call apply-secret,airflow,airflow-metadata,--from-literal=connection=postgresql://airflow:$$pga@pg-rw.data.svc.cluster.local:5432/airflow); \
	$(call apply-secret,airflow,airflow-fernet,--from-literal=fernet-key=$$fernet); \
	$(call apply-secret,airflow,airflow-api-secret,--from-literal=api-secret-key=$$api); \
	$(call apply-secret,airflow,airflow-jwt,--from-literal=jwt-secret=$$jwt); \
	$(call apply-secret,airflow,airflow-admin,--from-literal=username=admin --from-literal=password=$$ap); \
	$(call apply-secret,monitoring,titanic-alertmanager-token,--from-literal=token=$$tok); \
	$(if $(filter minio,$(OBJECT_STORE)),rk=$$ak; rs=$$sk;) \
	umask 077; printf 'credentials:\n  databasePassword: "%s"\n  s3AccessKey: "%s"\n  s3SecretKey: "%s"\n  s3ReadAccessKey: "%s"\n  s3ReadSecretKey: "%s"\n  airflowPassword: "%s"\n  alertmanagerToken: "%s"\n' \
	  "$$pg" "$$ak" "$$sk" "$$rk" "$$rs" "$$ap" "$$tok" > $(CLUSTER_BUILD)/credentials.yaml; \
	echo "credentials ready (Secrets in data, airflow, monitoring; chart values in $(CLUSTER_BUILD)/credentials.yaml)"

.PHONY: postgres
postgres: ## Install the CloudNativePG operator and the Postgres Cluster "pg" (databases titanic and airflow).
	$(HELM_UP) cnpg $(call upstream,cloudnative-pg) \
	  -n cnpg-system --create-namespace -f $(VALUES)/cloudnative-pg.yaml
	$(KUBECTL) apply -f manifests/postgres-cluster.yaml

.PHONY: postgres-ready
postgres-ready: ## Wait until the Postgres Cluster "pg" is Ready (its instance pods run and the databases exist).
	$(KUBECTL) -n data wait cluster/pg --for=condition=Ready --timeout=$(WAIT_TIMEOUT)

.PHONY: redis
redis: ## Install Valkey (official chart and image; Redis protocol) for the online feature store.
	$(HELM_UP) valkey $(call upstream,valkey) \
	  -n data -f $(VALUES)/valkey.yaml

.PHONY: object-store
object-store: ## Install the S3 storage: SeaweedFS (default) or OBJECT_STORE=minio.
ifeq ($(OBJECT_STORE),minio)
	@echo "OBJECT_STORE=minio: the MinIO community edition is archived upstream; this image gets no security fixes." >&2
	$(KUBECTL) apply -f manifests/minio.yaml
	$(KUBECTL) -n data rollout status deploy/minio --timeout=$(WAIT_TIMEOUT)
else
	$(HELM_UP) seaweedfs $(call upstream,seaweedfs) \
	  -n data -f $(VALUES)/seaweedfs.yaml
endif

.PHONY: monitoring
monitoring: ## Install kube-prometheus-stack (Prometheus, Alertmanager -> web app webhook, Grafana).
	$(HELM_UP) monitoring $(call upstream,kube-prometheus-stack) \
	  -n monitoring -f $(VALUES)/kube-prometheus-stack.yaml

.PHONY: airflow-install
airflow-install: ## Install Airflow (official chart, LocalExecutor, the titanic-airflow image, CNPG database).
	$(MAKE) --no-print-directory airflow-image
	$(MAKE) --no-print-directory load LOAD_IMAGES=titanic-airflow
	$(HELM_UP) airflow $(call upstream,airflow) -n airflow \
	  -f $(VALUES)/airflow.yaml --set defaultAirflowTag=$(IMG_TAG) --set airflowVersion=$(AIRFLOW_VERSION) \
	  --set-string createUserJob.defaultUser.password="$(call secret-get,airflow,airflow-admin,password)"

##@ Deploy

IMAGE_TARGETS ?= pipeline-image model-server-image webapp-image airflow-image## the image targets `make images` runs
.PHONY: images
images: ## Build the project images (pipeline, model server, web app, Airflow) tagged $(IMG_TAG), from the base images of base-images.
	@mkdir -p $(dir $(BASE_IMAGES_RESOLVED)) && $(resolve-base-images) > $(BASE_IMAGES_RESOLVED) && sed 's/^/base image: /' $(BASE_IMAGES_RESOLVED)
	$(MAKE) --no-print-directory $(IMAGE_TARGETS) BASE_IMAGES_FILE=$(BASE_IMAGES_RESOLVED)

LOAD_IMAGES ?= $(PROJECT_IMAGES)## images `make load` copies into the kind node
# docker save IMAGE FILE: --platform (one platform of a multi-platform store) needs daemon API >= 1.48; older
# daemons (Debian's 20.10 is 1.41) refuse the flag and have single-platform stores anyway.
docker-save = if [ "$$(printf '%s\n1.48\n' "$$($(DOCKER) version -f '{{.Server.APIVersion}}')" | sort -V | head -n1)" = 1.48 ]; \
  then $(DOCKER) save --platform linux/$$($(DOCKER) version -f '{{.Server.Arch}}') -o $(2) $(1); else $(DOCKER) save -o $(2) $(1); fi

.PHONY: load
load: kind ## Copy the project images into the kind node (docker save | kind load image-archive: works with containerd stores).
	@mkdir -p $(CLUSTER_BUILD)
	for img in $(LOAD_IMAGES); do \
	  $(call docker-save,$$img:$(IMG_TAG),$(CLUSTER_BUILD)/$$img.tar); \
	  $(KIND) load image-archive $(CLUSTER_BUILD)/$$img.tar --name $(KIND_CLUSTER); \
	  rm -f $(CLUSTER_BUILD)/$$img.tar; done

# Pulled once on the laptop (its Docker login and cache) instead of ~20 anonymous pulls from the node, which
# Docker Hub limits per IP.
.PHONY: load-third-party
load-third-party: kind helm ## Pull the upstream images of cluster-up (see third-party-images) and load them into the kind node.
	images=$$($(list-third-party-images)); \
	for img in $$images; do $(DOCKER) image inspect $$img >/dev/null 2>&1 || $(DOCKER) pull -q $$img; done; \
	$(KIND) load docker-image --name $(KIND_CLUSTER) $$images

# The charts whose images third-party-images lists: all upstream charts but Airflow's (it runs titanic-airflow),
# or, with CHARTS_DIR, those found there.
IMAGE_CHARTS = $(filter-out airflow,$(if $(CHARTS_DIR),$(filter $(UPSTREAM_CHARTS),$(notdir $(patsubst %/Chart.yaml,%,$(wildcard $(CHARTS_DIR)/*/Chart.yaml)))),$(UPSTREAM_CHARTS)))

# Besides image: lines, the images KServe's controller injects into InferenceService pods: the "image" of the agent
# and storageInitializer entries of its inferenceservice-config ConfigMap (a data key at two spaces, up to the next).
list-third-party-images = { { $(foreach c,$(IMAGE_CHARTS),$(HELM) template $(c) $(call upstream,$(c)) \
  --kube-version $(KUBE_VERSION) $(addprefix -f ,$(wildcard $(VALUES)/$(c).yaml)) &&) true; } \
  | sed -nE 's/^[[:space:]]*(- )?image: *"?([^" ]+)"?[[:space:]]*$$/\2/p; s/.*--prometheus-config-reloader=([^" ]+).*/\1/p; \
    /^  (agent|storageInitializer): \|-$$/,/^ {0,2}[^ ]/s/^ *"image" *: *"([^"]+)".*/\1/p'; \
  echo $(POSTGRES_IMAGE); } | sort -u

.PHONY: third-party-images
third-party-images: helm ## Print the upstream images of cluster-up: the pinned charts rendered with our values.
	@$(list-third-party-images)

.PHONY: deploy
deploy: helm $(CLUSTER_BUILD)/credentials.yaml ## Install or upgrade the project chart (release titanic in mlops); keeps the served model version.
	$(HELM_UP) --atomic titanic charts/titanic -n mlops -f $(CLUSTER_BUILD)/credentials.yaml \
	  --set image.tag=$(IMG_TAG) --set config.s3Endpoint=$(S3_ENDPOINT_IN_CLUSTER) \
	  --set config.datasetSha256=$(DATASET_SHA256) $(DEPLOY_ARGS)

# The chart's credentials values come from the Secrets of `make credentials` (generated there when missing).
$(CLUSTER_BUILD)/credentials.yaml:
	$(MAKE) --no-print-directory credentials

# The CSV is downloaded on the laptop, checked against DATASET_SHA256, and streamed into a one-off pod of the
# pipeline image that checks it again and writes it to s3://raw/titanic/train.csv with the project's settings.
DATASET_CACHE := $(CURDIR)/.cache/titanic-train.csv
UPLOAD_OVERRIDES = {"spec":{"restartPolicy":"Never","automountServiceAccountToken":false,\
"securityContext":{"runAsNonRoot":true,"runAsUser":1000,"seccompProfile":{"type":"RuntimeDefault"}},\
"containers":[{"name":"upload","image":"titanic-pipeline:$(IMG_TAG)","imagePullPolicy":"IfNotPresent","stdin":true,"stdinOnce":true,\
"command":["python","-c","import hashlib,io,sys;from minio import Minio;from pipeline.settings import Settings;s=Settings();d=sys.stdin.buffer.read();assert hashlib.sha256(d).hexdigest()==s.dataset_sha256;c=Minio(s.s3_endpoint,access_key=s.s3_access_key,secret_key=s.s3_secret_key,secure=s.s3_secure,region=s.s3_region);c.put_object(s.bucket_raw,s.dataset_url.split(chr(47),3)[3],io.BytesIO(d),len(d));print(len(d),s.dataset_url)"],\
"envFrom":[{"configMapRef":{"name":"titanic-config"}},{"secretRef":{"name":"titanic-secrets"}}],\
"resources":{"requests":{"cpu":"50m","memory":"128Mi"},"limits":{"memory":"256Mi"}},\
"securityContext":{"allowPrivilegeEscalation":false,"readOnlyRootFilesystem":true,"capabilities":{"drop":["ALL"]}}}]}}

.PHONY: dataset
dataset: ## Download the dataset (sha256-checked) and upload it to s3://raw/titanic/train.csv.
	@mkdir -p $(dir $(DATASET_CACHE))
	[ -f $(DATASET_CACHE) ] || curl -fsSL "$(DATASET_URL)" -o $(DATASET_CACHE)
	echo "$(DATASET_SHA256)  $(DATASET_CACHE)" | sha256sum -c -
	$(KUBECTL) -n mlops delete pod dataset-upload --ignore-not-found
	$(KUBECTL) -n mlops run dataset-upload -i --rm --restart=Never --image=titanic-pipeline:$(IMG_TAG) \
	  --overrides='$(UPLOAD_OVERRIDES)' < $(DATASET_CACHE)

# Not --for=condition=Ready: kubectl ignores conditions while status.observedGeneration < metadata.generation, and
# KServe's Standard mode puts the predictor Deployment's observedGeneration there (found on a real KServe 0.20:
# it stays behind forever, so the wait never ended).
ISVC_READY = --for=jsonpath='{.status.conditions[?(@.type=="Ready")].status}'=True

.PHONY: first-model
first-model: ## Run titanic_training once (make train) and wait until the InferenceService serves the model.
	$(MAKE) --no-print-directory train KUBECTL="$(KUBECTL)" TRAIN_REQUIRE_DEPLOY=1
	$(KUBECTL) -n mlops wait inferenceservice/titanic $(ISVC_READY) --timeout=$(ISVC_TIMEOUT)

.PHONY: urls
urls: ## Print where everything is reached and how to get the credentials.
	@echo ""
	@echo "Titanic MLOps is up (kind cluster $(KIND_CLUSTER), context $(KUBE_CONTEXT))."
	@echo "  Web UI          http://titanic.localhost/   (Traefik ingress on 127.0.0.1:80)"
	@echo "  Airflow UI      make airflow     -> http://127.0.0.1:$(AIRFLOW_PORT)/  user admin, password: make credentials-show"
	@echo "  Grafana         make grafana     -> http://127.0.0.1:$(GRAFANA_PORT)/  user admin, password printed by the target"
	@echo "  S3 ($(S3_SERVICE))  make s3-console  -> http://127.0.0.1:$(S3_CONSOLE_PORT)/  keys: make credentials-show"
	@echo "  Prometheus      $(KUBECTL) -n monitoring port-forward svc/kps-prometheus 9090:9090"
	@echo "  Model           $(KUBECTL) -n mlops port-forward svc/titanic-transformer 8081:80"
	@echo "  Retrain         make train        Status: make status        Logs: make logs"

.PHONY: credentials-show
credentials-show: kubectl ## Print the generated credentials of the project (Airflow, S3, Postgres).
	@echo "AIRFLOW admin / $(call secret-get,mlops,titanic-secrets,AIRFLOW_PASSWORD)"
	@echo "S3 access key $(call secret-get,mlops,titanic-secrets,S3_ACCESS_KEY) secret key $(call secret-get,mlops,titanic-secrets,S3_SECRET_KEY)"
	@echo "DATABASE_URL $(call secret-get,mlops,titanic-secrets,DATABASE_URL)"

.PHONY: status
status: kubectl ## Show the platform's pods, the InferenceService, the Helm releases and the web app's /readyz (the whole chain).
	$(KUBECTL) get pods -A -o wide
	$(KUBECTL) -n mlops get inferenceservice,ingress
	$(HELM) --kube-context $(KUBE_CONTEXT) list -A
# /readyz from inside the pod: the API server's service proxy drops the body of a 503, which says which link is down.
	@printf 'web app /readyz: '; $(KUBECTL) -n mlops exec deploy/titanic-webapp -c webapp -- python -c \
	  "import http.client as h; c = h.HTTPConnection('127.0.0.1', 8000, timeout=5); c.request('GET', '/readyz'); r = c.getresponse(); print(r.status, r.read().decode())"

.PHONY: logs
logs: kubectl ## Tail the logs of the web app, the predictor and the transformer.
	$(KUBECTL) -n mlops logs deploy/titanic-webapp --tail=50
	$(KUBECTL) -n mlops logs -l serving.kserve.io/inferenceservice=titanic -c kserve-container --tail=50 --prefix

.PHONY: grafana
grafana: kubectl ## Port-forward Grafana to localhost:$(GRAFANA_PORT) (prints the admin password).
	@echo "Grafana: http://127.0.0.1:$(GRAFANA_PORT)/  admin / $(call secret-get,monitoring,monitoring-grafana,admin-password)"
	$(KUBECTL) -n monitoring port-forward svc/monitoring-grafana $(GRAFANA_PORT):80

.PHONY: airflow
airflow: kubectl ## Port-forward the Airflow UI/API to localhost:$(AIRFLOW_PORT).
	@echo "Airflow: http://127.0.0.1:$(AIRFLOW_PORT)/  admin / $(call secret-get,mlops,titanic-secrets,AIRFLOW_PASSWORD)"
	$(KUBECTL) -n airflow port-forward svc/airflow-api-server $(AIRFLOW_PORT):8080

.PHONY: s3-console
s3-console: kubectl ## Port-forward the S3 store (SeaweedFS S3 API / MinIO console) to localhost:$(S3_CONSOLE_PORT).
	$(KUBECTL) -n data port-forward $(S3_CONSOLE)

##@ Test

.PHONY: upstream-charts
upstream-charts: helm ## Download every upstream chart at its pinned version, unpacked, into CHARTS_DIR (offline tests elsewhere).
	@[ -n "$(CHARTS_DIR)" ] || { echo "set CHARTS_DIR=<folder>" >&2; exit 1; }
	mkdir -p $(CHARTS_DIR)
	$(foreach c,$(UPSTREAM_CHARTS),[ -f $(CHARTS_DIR)/$(c)/Chart.yaml ] || \
	  $(HELM) pull $(if $(CHART_MIRROR),$(c) --repo $(CHART_MIRROR),$(CHART_REF_$(c))) --version $(CHART_VERSION_$(c)) \
	    --untar --untardir $(CHARTS_DIR);)

.PHONY: lint-charts
lint-charts: venv tools ## Lint and validate the charts offline: helm lint, kubeconform -strict, kube-score, object assertions.
	$(VENV)/bin/pytest tests/charts $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: venv ## Run tests/e2e against the cluster of `make cluster-up` (skipped when none is reachable).
	KUBE_CONTEXT=$(KUBE_CONTEXT) KUBECTL=$(KUBECTL_BIN) $(VENV)/bin/pytest tests/e2e -m cluster $(PYTEST_ARGS)

##@ Dependencies

.PHONY: kubectl
kubectl: ## kubectl client (release binary from dl.k8s.io, KUBECTL_VERSION; built from the pinned module when unreachable).
	@[ -x "$(KUBECTL_BIN)-$(KUBECTL_VERSION)" ] || { mkdir -p $(LOCALBIN); \
	  os=$$(uname -s | tr A-Z a-z); arch=$$(uname -m | sed 's/x86_64/amd64/;s/aarch64/arm64/'); \
	  if curl -fsSL --max-time 120 -o $(KUBECTL_BIN)-$(KUBECTL_VERSION).part \
	       https://dl.k8s.io/release/$(KUBECTL_VERSION)/bin/$$os/$$arch/kubectl; then \
	    chmod +x $(KUBECTL_BIN)-$(KUBECTL_VERSION).part && mv $(KUBECTL_BIN)-$(KUBECTL_VERSION).part $(KUBECTL_BIN)-$(KUBECTL_VERSION); \
	  else rm -f $(KUBECTL_BIN)-$(KUBECTL_VERSION).part; echo "dl.k8s.io unreachable: building kubectl from k8s.io/kubernetes" >&2; \
	    hack/kube/build.sh $(LOCALBIN) $(KUBE_VERSION) kubectl; fi; }
	@ln -sf kubectl-$(KUBECTL_VERSION) $(KUBECTL_BIN)
