# Airflow: the pipeline and Airflow images, and training runs on the cluster.

KUBECTL ?= kubectl## kubectl used to reach the Airflow scheduler
AIRFLOW_NAMESPACE ?= airflow## namespace of the Airflow release
AIRFLOW_SCHEDULER ?= deploy/airflow-scheduler## scheduler workload; its container runs the Airflow CLI with DB access
TRAIN_DAG ?= titanic_training## DAG that `make train` triggers
TRAIN_CONF ?= {}## DAG run conf, e.g. TRAIN_CONF='{"min_accuracy": 0.8}'
TRAIN_TIMEOUT ?= 3600## seconds `make train` follows a run before giving up
TRAIN_POLL ?= 15## seconds between two state checks of the run
TRAIN_REQUIRE_DEPLOY ?=## non-empty: a run whose model the quality gate rejects fails (first-model: nothing to wait for)
DOCKER ?= docker## container image builder
AIRFLOW_BASE_IMAGE ?= apache/airflow:$(AIRFLOW_VERSION)## base of titanic-airflow (`make images` passes a local stand-in when it cannot be pulled)

# The Airflow CLI inside the scheduler: no port-forward and no credentials needed.
AIRFLOW_CLI = $(KUBECTL) -n $(AIRFLOW_NAMESPACE) exec $(AIRFLOW_SCHEDULER) -c scheduler -- airflow

##@ Deploy

.PHONY: pipeline-image
pipeline-image: ## Build titanic-pipeline:$(IMG_TAG), the image of the step pods.
	$(DOCKER_BUILD) -f images/pipeline/Dockerfile -t titanic-pipeline:$(IMG_TAG) \
	  --build-arg PYTHON_BASE_IMAGE=$(PYTHON_BASE_IMAGE) --build-arg GIT_COMMIT=$(IMG_TAG) .

.PHONY: airflow-image
airflow-image: ## Build titanic-airflow:$(IMG_TAG): official Airflow + pinned cncf-kubernetes provider + dags/.
	$(DOCKER_BUILD) -f images/airflow/Dockerfile -t titanic-airflow:$(IMG_TAG) \
	  --build-arg AIRFLOW_BASE_IMAGE=$(AIRFLOW_BASE_IMAGE) --build-arg AIRFLOW_VERSION=$(AIRFLOW_VERSION) \
	  --build-arg AIRFLOW_PROVIDER_CNCF_K8S_VERSION=$(AIRFLOW_PROVIDER_CNCF_K8S_VERSION) \
	  --build-arg IMG_TAG=$(IMG_TAG) .

.PHONY: train
train: ## Trigger the titanic_training DAG on the cluster and follow the run to its end (TRAIN_CONF='{...}').
	@run_id="make-train-$$(date -u +%Y%m%dT%H%M%S)"; \
	$(AIRFLOW_CLI) dags unpause $(TRAIN_DAG) >/dev/null; \
	$(AIRFLOW_CLI) dags trigger $(TRAIN_DAG) --run-id "$$run_id" --conf '$(TRAIN_CONF)' >/dev/null; \
	echo "triggered $(TRAIN_DAG) run $$run_id; following it (Airflow UI: make airflow)"; \
	deadline=$$(( $$(date +%s) + $(TRAIN_TIMEOUT) )); last=""; \
	while :; do \
	  state=$$($(AIRFLOW_CLI) dags state $(TRAIN_DAG) "$$run_id" | tail -n 1 | cut -d, -f1); \
	  [ "$$state" = "$$last" ] || { echo "$$(date -u +%H:%M:%S) run $$run_id: $$state"; last=$$state; }; \
	  case "$$state" in success|failed) break;; esac; \
	  if [ $$(date +%s) -ge $$deadline ]; then echo "gave up after $(TRAIN_TIMEOUT)s; the run continues in Airflow" >&2; exit 1; fi; \
	  sleep $(TRAIN_POLL); \
	done; \
	tasks=$$($(AIRFLOW_CLI) tasks states-for-dag-run $(TRAIN_DAG) "$$run_id" -o plain); \
	echo "$$tasks"; \
	if [ "$$state" != success ]; then echo "run $$run_id failed; failed step pods are kept: kubectl -n mlops get pods" >&2; exit 1; fi; \
	if echo "$$tasks" | grep -Eq '\bdeploy\b.*\bskipped\b'; then echo "the quality gate rejected the model: production model unchanged"; \
	  if [ -n "$(TRAIN_REQUIRE_DEPLOY)" ]; then echo "no model was deployed, so none will be served: see the evaluate step's log" >&2; exit 3; fi; fi
