# Web app: Tailwind CSS build, local run, image. Included by the Makefile.

##@ Web

WEBAPP_DIR := $(CURDIR)/webapp
WEBAPP_CSS := $(WEBAPP_DIR)/static/app.css
WEBAPP_PORT ?= 8000## port of `make web-run`

.PHONY: css
css: $(WEBAPP_CSS) ## Compile webapp/static/app.css with the pinned Tailwind CLI (npm, no CDN).

# npm ci installs exactly package-lock.json; the check keeps it equal to versions.env.
$(WEBAPP_DIR)/node_modules/.installed: $(WEBAPP_DIR)/package.json $(WEBAPP_DIR)/package-lock.json versions.env
	@command -v npm >/dev/null || { echo "npm is missing: apt-get install nodejs npm" >&2; exit 1; }
	@for pkg in tailwindcss @tailwindcss/cli; do \
	  pinned=$$(node -p "require('$(WEBAPP_DIR)/package.json').devDependencies['$$pkg']"); \
	  [ "$$pinned" = "$(TAILWINDCSS_VERSION)" ] || { echo "webapp/package.json pins $$pkg $$pinned, versions.env says $(TAILWINDCSS_VERSION)" >&2; exit 1; }; \
	done
	cd $(WEBAPP_DIR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

$(WEBAPP_CSS): $(WEBAPP_DIR)/node_modules/.installed $(WEBAPP_DIR)/assets/app.css $(wildcard $(WEBAPP_DIR)/templates/*.html) $(wildcard $(WEBAPP_DIR)/*.py)
	cd $(WEBAPP_DIR) && ./node_modules/.bin/tailwindcss -i assets/app.css -o static/app.css --minify

# The suite renders pages and drives a browser against the compiled CSS.
test: css
bench bench-soak: css

.PHONY: web-run
web-run: venv css ## Serve the web app with gunicorn on WEBAPP_PORT (needs the services' and KSERVE_URL environment).
	mkdir -p $(SERVICES_DIR)/prometheus
	PROMETHEUS_MULTIPROC_DIR=$(SERVICES_DIR)/prometheus $(VENV)/bin/gunicorn -c python:webapp.gunicorn_conf \
	  --bind 127.0.0.1:$(WEBAPP_PORT) 'webapp:create_app()'

DOCKER ?= docker## container image builder

.PHONY: webapp-image
webapp-image: ## Build titanic-webapp:$(IMG_TAG): gunicorn + the app, Tailwind CSS compiled in a node stage.
	$(DOCKER_BUILD) -f images/webapp/Dockerfile -t titanic-webapp:$(IMG_TAG) \
	  --build-arg PYTHON_BASE_IMAGE=$(PYTHON_BASE_IMAGE) --build-arg NODE_IMAGE=$(NODE_IMAGE) .
