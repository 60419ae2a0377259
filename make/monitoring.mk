# Monitoring: the drift -> alert -> retraining loop on a running cluster. Included by the Makefile.

##@ Monitoring

KUBECTL ?= kubectl## kubectl of the cluster made by `make cluster-up`
DRIFT_DEMO_URL ?= http://titanic.localhost/api/predict## web app prediction API behind the ingress
DRIFT_DEMO_STREAM ?= shifted## shifted (all 1st class, 10x fares) or normal (training passengers: heals the drift)
DRIFT_DEMO_ROUNDS ?= 1## how often the stream of 889 passengers is replayed
DRIFT_DEMO_WAIT ?= 1200## seconds drift-demo waits for TitanicFeatureDrift to fire (0: do not wait)
DRIFT_DEMO_CSV ?=## passengers to replay (default: the test dataset, from ../shared or fetched once: tests/inputs.py)
MONITORING_NAMESPACE ?= monitoring## namespace of kube-prometheus-stack
PROMETHEUS_SERVICE ?= kps-prometheus:9090## Prometheus Service, reached through the API server's service proxy

# PromQL over the API server's service proxy: no port-forward, no credentials beyond kubectl's.
prom-query = $(KUBECTL) get --raw "/api/v1/namespaces/$(MONITORING_NAMESPACE)/services/$(PROMETHEUS_SERVICE)/proxy/api/v1/query?query=$(1)"

.PHONY: drift-demo
drift-demo: venv ## Send shifted passengers through the ingress, then wait for TitanicFeatureDrift and the retraining run it triggers.
	@csv="$(DRIFT_DEMO_CSV)"; [ -n "$$csv" ] || csv=$$($(PY) -m tests.inputs --path data/titanic/train.csv); \
	$(PY) -m tests.monitoring.drift --url "$(DRIFT_DEMO_URL)" --csv "$$csv" \
	  --stream $(DRIFT_DEMO_STREAM) --rounds $(DRIFT_DEMO_ROUNDS)
	@echo "PSI per feature now (alert threshold: chart value prometheusRule.driftPsiThreshold):"
	@sleep 35; $(call prom-query,max%20by%20(feature)%20(titanic_feature_drift_psi)) | \
	  $(PY) -c 'import sys; from tests.monitoring.drift import print_psi; print_psi(sys.stdin)'
	@[ "$(DRIFT_DEMO_STREAM)" = shifted ] && [ "$(DRIFT_DEMO_WAIT)" -gt 0 ] || exit 0; \
	echo "Waiting up to $(DRIFT_DEMO_WAIT)s for TitanicFeatureDrift to fire (it must hold for prometheusRule.driftFor)..."; \
	deadline=$$(( $$(date +%s) + $(DRIFT_DEMO_WAIT) )); \
	until $(call prom-query,ALERTS%7Balertname%3D%22TitanicFeatureDrift%22%2Calertstate%3D%22firing%22%7D) | grep -q '"alertname"'; do \
	  [ $$(date +%s) -lt $$deadline ] || { echo "TitanicFeatureDrift did not fire within $(DRIFT_DEMO_WAIT)s" >&2; exit 1; }; \
	  sleep 20; done; \
	echo "TitanicFeatureDrift is firing; Alertmanager sends it to the web app relay. Retraining runs:"; \
	sleep 60; $(KUBECTL) -n $(AIRFLOW_NAMESPACE) exec $(AIRFLOW_SCHEDULER) -c scheduler -- \
	  airflow dags list-runs $(TRAIN_DAG) --output table | head -n 8; \
	echo "Decisions of the relay: kubectl -n mlops logs deploy/titanic-webapp | grep alert; heal with DRIFT_DEMO_STREAM=normal."
