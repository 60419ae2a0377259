"""Titanic web app: a prediction form and JSON API in front of the KServe transformer.

`flask --app webapp run` for development; `gunicorn -c python:webapp.gunicorn_conf
'webapp:create_app()'` in the image.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from pipeline.log import configure_logging
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

# Web-only knobs; override with WEBAPP_<NAME> environment variables (JSON values) or test_config.
DEFAULTS: dict[str, Any] = {
    "KSERVE_CONNECT_TIMEOUT": 1.0,  # seconds to open a connection to the transformer
    "KSERVE_READ_TIMEOUT": 5.0,  # seconds to wait for a prediction
    "KSERVE_POOL_SIZE": 40,  # pooled keep-alive connections per process (>= MAX_IN_FLIGHT, the requests that call it)
    "KSERVE_PROTOCOL": "v1",  # "v1" (KServe V1) or "v2" (Open Inference Protocol)
    "MAX_CONTENT_LENGTH": 64 * 1024,  # bytes; larger bodies get 413 before they are read
    "MAX_INSTANCES": 100,  # passengers per API request
    # Requests one gunicorn worker serves at once; MAX_QUEUED more wait up to QUEUE_TIMEOUT seconds for one of
    # them, the rest get 503 at once (the sum < gunicorn threads; webapp/shedding.py).
    "MAX_IN_FLIGHT": 40,
    "MAX_QUEUED": 40,
    "QUEUE_TIMEOUT": 0.5,
}


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; `test_config` overrides config keys, and `SETTINGS` may carry a Settings."""
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    if test_config is None:
        app.config.from_prefixed_env("WEBAPP")
    else:
        app.config.from_mapping(test_config)
    # The one Settings object; the relay blueprint reads it from here too.
    settings = app.config["SETTINGS"] = app.config.get("SETTINGS") or Settings()
    configure_logging(settings.log_level)

    from . import api, kserve_client, metrics, relay, shedding, views

    kserve_client.init_app(app)
    metrics.init_app(app)
    shedding.init_app(app)
    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(relay.bp)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _wants_json() -> bool:
    return request.path.startswith(("/api/", "/hooks/")) or request.accept_mimetypes.best == "application/json"


def _http_error(exc: HTTPException):
    messages = {413: "The request body is too large."}
    message = messages.get(exc.code or 500, exc.description)
    if _wants_json():
        return jsonify({"error": message}), exc.code
    return render_template("error.html", code=exc.code, title=exc.name, message=message), exc.code


def _unexpected_error(exc: Exception):
    # Logged once here, with the traceback; the client only ever sees a plain message.
    logger.exception("unhandled error on %s %s", request.method, request.path)
    message = "Something went wrong on our side."
    if _wants_json():
        return jsonify({"error": message}), 500
    return render_template("error.html", code=500, title="Internal error", message=message), 500
