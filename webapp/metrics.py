"""Prometheus metrics of the web app, served at /metrics on the app's own port.

Under gunicorn every worker is a process: with PROMETHEUS_MULTIPROC_DIR set (the image and
`webapp.gunicorn_conf` set it) prometheus_client writes values to files there and /metrics
aggregates all workers; without it (flask run, tests) the default registry is used.
"""

from __future__ import annotations

import os
import time

from flask import Flask, g, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app, multiprocess
from werkzeug.middleware.dispatcher import DispatcherMiddleware

PREDICTIONS = Counter(
    "titanic_web_predictions_total",
    "Predictions returned to users, by predicted outcome (survived/died).",
    ["outcome"],
)
REQUEST_DURATION = Histogram(
    "titanic_web_request_duration_seconds",
    "Time to handle an HTTP request, by Flask endpoint and method.",
    ["endpoint", "method"],
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
INFERENCE_ERRORS = Counter(
    "titanic_web_inference_errors_total",
    "Calls to the model server that gave no prediction: unreachable, timeout, server_error,"
    " bad_response (unexpected body) or rejected (400 from the transformer).",
    ["reason"],
)
SHED = Counter(
    "titanic_web_shed_requests_total",
    "Requests answered 503 \"overloaded\": the worker served MAX_IN_FLIGHT requests and its queue was full or the"
    " request waited QUEUE_TIMEOUT seconds for a slot.",
)
QUEUED = Gauge(
    "titanic_web_queued_requests",
    "Requests waiting for a free slot of their worker (at most MAX_QUEUED per worker, each up to QUEUE_TIMEOUT s).",
    multiprocess_mode="livesum",
)

OUTCOMES = ("survived", "died")
# The method label takes only these values: the token comes from the client, and every new
# value would create a new set of histogram series.
METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})
ERROR_REASONS = ("unreachable", "timeout", "server_error", "bad_response", "rejected")


def _metrics_app():
    # The variable is prometheus_client's own switch (read at its import), not app config.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return make_wsgi_app(registry)
    return make_wsgi_app()


def _start_timer() -> None:
    g.request_started = time.perf_counter()


def _server_timing(response):
    """`Server-Timing: kserve;dur=…, web;dur=…` (ms): what the model server took and what this app added.

    Browsers' developer tools show it, and `make bench` reads it to isolate the web hop's own cost.
    """
    started = g.get("request_started")
    if started is not None:
        total = (time.perf_counter() - started) * 1000
        kserve = g.get("kserve_seconds", 0.0) * 1000
        parts = [f"kserve;dur={kserve:.2f}"] if "kserve_seconds" in g else []
        response.headers["Server-Timing"] = ", ".join(parts + [f"web;dur={total - kserve:.2f}"])
    return response


def _observe(_exc: BaseException | None) -> None:
    started = g.pop("request_started", None)
    if started is not None:
        method = request.method if request.method in METHODS else "other"
        REQUEST_DURATION.labels(request.endpoint or "unmatched", method).observe(time.perf_counter() - started)


def init_app(app: Flask) -> None:
    """Time every request and mount /metrics beside the app (one port, no second server)."""
    # Series that exist from the start at 0, so rate() and alert ratios work before the first error.
    for outcome in OUTCOMES:
        PREDICTIONS.labels(outcome)
    for reason in ERROR_REASONS:
        INFERENCE_ERRORS.labels(reason)
    app.before_request(_start_timer)
    app.after_request(_server_timing)
    app.teardown_request(_observe)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/metrics": _metrics_app()})  # type: ignore[method-assign]


def count_predictions(predictions: list[dict]) -> None:
    for prediction in predictions:
        PREDICTIONS.labels("survived" if prediction.get("survived") else "died").inc()


def count_error(reason: str) -> None:
    INFERENCE_ERRORS.labels(reason).inc()


def count_shed() -> None:
    SHED.inc()
