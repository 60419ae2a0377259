"""Load shedding: a worker serves at most MAX_IN_FLIGHT requests at once; up to MAX_QUEUED more wait at most
QUEUE_TIMEOUT seconds for a free slot, and the rest are answered 503 at once.

gunicorn's gthread worker hands its connections to its threads through an unbounded queue: under more load than
the transformer can serve, requests would wait there until clients time out, and every request would be late.
A bounded count per worker instead answers the excess in a millisecond with 503 and Retry-After, so the
requests it admits stay fast. The short, bounded wait (HAProxy's `maxconn` with `timeout queue`) absorbs a burst
or a stall of a shared node shorter than QUEUE_TIMEOUT without an error; only a lasting overload is shed.
The worker needs threads beyond both (gunicorn threads > MAX_IN_FLIGHT + MAX_QUEUED; the chart refuses anything
else) to answer the shed requests.
"""

from __future__ import annotations

import threading

from flask import Flask, current_app, g, jsonify, render_template, request

from . import _wants_json
from .metrics import QUEUED, count_shed

# Probes and static files answer while the app sheds: a shed /healthz would take the pod out of its Service.
EXEMPT = frozenset({"api.healthz", "static"})
RETRY_AFTER_SECONDS = 1
MESSAGE = "The web app is busy with other requests; try again in a second."


class InFlight:
    """Requests this worker process is serving, at most `limit`; at most `queued` more wait up to `timeout` s."""

    def __init__(self, limit: int, queued: int = 0, timeout: float = 0.0):
        self.limit, self.queued, self.timeout = limit, queued, timeout
        self.count = self.waiting = 0
        self._free = threading.Condition()

    def enter(self) -> bool:
        with self._free:
            # A newcomer queues behind the waiters (Condition wakes them in order) rather than overtaking them.
            if self.count < self.limit and not self.waiting:
                self.count += 1
                return True
            if self.waiting >= self.queued:
                return False
            self.waiting += 1
            QUEUED.inc()
            try:
                admitted = self._free.wait_for(lambda: self.count < self.limit, self.timeout)
            finally:
                self.waiting -= 1
                QUEUED.dec()
            if admitted:
                self.count += 1
            return admitted

    def leave(self) -> None:
        with self._free:
            self.count -= 1
            self._free.notify()


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
    """Count admitted requests per process (a gunicorn worker builds its own app) and shed what cannot wait."""
    config = app.config
    app.extensions["in_flight"] = InFlight(int(config["MAX_IN_FLIGHT"]), int(config["MAX_QUEUED"]),
                                           float(config["QUEUE_TIMEOUT"]))
    app.before_request(_admit)
    app.teardown_request(_release)
