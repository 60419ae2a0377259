"""Load shedding: a worker admits at most MAX_IN_FLIGHT requests at once and answers the rest 503 at once.

gunicorn's gthread worker hands its connections to its threads through an unbounded queue: under more load than
the transformer can serve, requests would wait there until clients time out, and every request would be late.
A bounded count per worker instead answers the excess in a millisecond with 503 and Retry-After, so the
requests it admits stay fast. The worker needs threads beyond the bound to answer them (gunicorn threads >
MAX_IN_FLIGHT; the chart refuses anything else).
"""

from __future__ import annotations

import threading

from flask import Flask, current_app, g, jsonify, render_template, request

from . import _wants_json
from .metrics import count_shed

# Probes and static files answer while the app sheds: a shed /healthz would take the pod out of its Service.
EXEMPT = frozenset({"api.healthz", "static"})
RETRY_AFTER_SECONDS = 1
MESSAGE = "The web app is busy with other requests; try again in a second."


class InFlight:
    """Requests this worker process is serving, at most `limit`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.count >= self.limit:
                return False
            self.count += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.count -= 1


def _admit():
    if request.endpoint in EXEMPT:
        return None
    if current_app.extensions["in_flight"].enter():
        g.admitted = True
        return None
    count_shed()
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if _wants_json():
        return jsonify({"error": MESSAGE, "reason": "overloaded"}), 503, headers
    return render_template("error.html", code=503, title="Busy", message=MESSAGE), 503, headers


def _release(_exc: BaseException | None) -> None:
    if g.pop("admitted", False):
        current_app.extensions["in_flight"].leave()


def init_app(app: Flask) -> None:
    """Count admitted requests per process (a gunicorn worker builds its own app) and shed above MAX_IN_FLIGHT."""
    app.extensions["in_flight"] = InFlight(int(app.config["MAX_IN_FLIGHT"]))
    app.before_request(_admit)
    app.teardown_request(_release)
