# Model server: the KServe predictor + transformer image and local runs. Included by the Makefile.

SERVE_MODEL_VERSION ?= production## model version `make serve-local` loads through the registry (id, production or latest)
PREDICTOR_PORT ?= 8085## port of the local predictor
TRANSFORMER_PORT ?= 8080## port of the local transformer (= KSERVE_URL of the web app)

##@ Serving

.PHONY: model-server-image
model-server-image: ## Build titanic-model-server:$(IMG_TAG), one image for the predictor and the transformer.
	$(DOCKER_BUILD) -f images/model-server/Dockerfile -t titanic-model-server:$(IMG_TAG) \
	  --build-arg PYTHON_BASE_IMAGE=$(PYTHON_BASE_IMAGE) .

.PHONY: serve-local
serve-local: venv ## Run predictor + transformer locally on SERVE_MODEL_VERSION (needs the services' environment); Ctrl-C stops both.
	@trap 'kill $$pid 2>/dev/null' EXIT INT TERM; \
	$(PY) -m pipeline.serving predictor --model_version $(SERVE_MODEL_VERSION) --http_port $(PREDICTOR_PORT) --enable_grpc false & pid=$$!; \
	$(PY) -m pipeline.serving transformer --model_version $(SERVE_MODEL_VERSION) --http_port $(TRANSFORMER_PORT) \
	  --enable_grpc false --predictor_host 127.0.0.1:$(PREDICTOR_PORT)
