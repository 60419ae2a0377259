"""Load shedding under the image's gunicorn: a worker serving MAX_IN_FLIGHT requests queues MAX_QUEUED more for up to
QUEUE_TIMEOUT seconds and answers the rest with 503 at once."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from webapp.shedding import InFlight

from .conftest import VALID
from .server import gunicorn
from .test_gunicorn import _samples

GUARD = 30.0  # seconds before a broken test gives up instead of hanging; nothing is timed


class _HeldTransformer(BaseHTTPRequestHandler):
    """Holds every prediction until the test releases them, then answers a valid one."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.arrived:
            self.server.held += 1
            self.server.arrived.notify_all()
        self.server.release.wait(GUARD)
        body = json.dumps({"predictions": [{"survived": 1, "probability": 0.9}], "model_version": "v1"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def _held_transformer():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HeldTransformer)
    server.daemon_threads, server.held = True, 0
    server.arrived, server.release = threading.Condition(), threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _web_app(in_flight: int, queued: int, queue_timeout: float = GUARD, threads: int = 10):
    """One gunicorn worker in front of a transformer that holds its requests: (transformer, url, predict)."""
    with _held_transformer() as transformer, gunicorn(
            {"KSERVE_URL": f"http://127.0.0.1:{transformer.server_address[1]}", "WEBAPP_MAX_IN_FLIGHT": str(in_flight),
             "WEBAPP_MAX_QUEUED": str(queued), "WEBAPP_QUEUE_TIMEOUT": str(queue_timeout)},
            workers=1, threads=threads) as url:
        yield transformer, url, lambda: requests.post(f"{url}/api/predict", json=VALID, timeout=GUARD)


def _occupy(pool: ThreadPoolExecutor, predict, transformer, n: int) -> list:
    """`n` requests held at the transformer, so the worker's `n` slots are busy."""
    futures = [pool.submit(predict) for _ in range(n)]
    with transformer.arrived:
        assert transformer.arrived.wait_for(lambda: transformer.held == n, GUARD)
    return futures


def _queued(url: str) -> float:
    return _samples(requests.get(f"{url}/metrics", timeout=GUARD).text)[("titanic_web_queued_requests", ())]


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + GUARD
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_a_busy_worker_sheds_the_excess_with_503_and_serves_again_after_the_burst():
    with _web_app(in_flight=2, queued=0, threads=4) as (transformer, url, predict):
        with ThreadPoolExecutor(8) as pool:
            admitted = _occupy(pool, predict, transformer, 2)
            # The worker serves its 2 requests (held at the transformer): a burst of 6 more is shed, not queued.
            burst = list(pool.map(lambda _: predict(), range(6)))
            assert [r.status_code for r in burst] == [503] * 6
            assert all(r.json()["reason"] == "overloaded" and r.headers["Retry-After"] == "1" for r in burst)
            assert requests.get(f"{url}/healthz", timeout=GUARD).status_code == 200  # probes are never shed
            page = requests.post(url, data={k: str(v) for k, v in VALID.items()}, timeout=GUARD)
            assert page.status_code == 503 and "busy" in page.text
            assert transformer.held == 2  # nothing shed reached the transformer
            transformer.release.set()
            assert [f.result().status_code for f in admitted] == [200, 200]

        after = predict()
        assert after.status_code == 200 and after.json()["predictions"] == [{"survived": 1, "probability": 0.9}]
        samples = _samples(requests.get(f"{url}/metrics", timeout=GUARD).text)
        assert samples[("titanic_web_shed_requests_total", ())] == 7


def test_a_burst_waits_in_the_bounded_queue_and_is_served_when_slots_free():
    with _web_app(in_flight=2, queued=2) as (transformer, url, predict):
        with ThreadPoolExecutor(8) as pool:
            admitted = _occupy(pool, predict, transformer, 2)
            queued = [pool.submit(predict) for _ in range(2)]
            _wait_until(lambda: _queued(url) == 2, "2 queued requests")
            # Both slots busy and the queue full: the next ones are shed at once, and never reach the transformer.
            burst = list(pool.map(lambda _: predict(), range(3)))
            assert [r.status_code for r in burst] == [503] * 3
            assert transformer.held == 2 and _queued(url) == 2
            transformer.release.set()
            assert [f.result().status_code for f in admitted + queued] == [200] * 4

        assert transformer.held == 4 and _queued(url) == 0
        samples = _samples(requests.get(f"{url}/metrics", timeout=GUARD).text)
        assert samples[("titanic_web_shed_requests_total", ())] == 3


def test_a_queued_request_is_shed_when_no_slot_frees_within_the_queue_timeout():
    with _web_app(in_flight=1, queued=4, queue_timeout=0.2) as (transformer, url, predict):
        with ThreadPoolExecutor(2) as pool:
            (held,) = _occupy(pool, predict, transformer, 1)
            # Room in the queue, so only the timeout can shed it: the one slot stays held throughout.
            late = predict()
            assert late.status_code == 503 and late.json()["reason"] == "overloaded"
            assert transformer.held == 1 and _queued(url) == 0
            transformer.release.set()
            assert held.result().status_code == 200


def test_in_flight_admits_in_order_and_bounds_the_queue():
    slots = InFlight(limit=1, queued=1, timeout=GUARD)
    assert slots.enter()
    waiter = ThreadPoolExecutor(1).submit(slots.enter)
    _wait_until(lambda: slots.waiting == 1, "the waiter")
    assert not slots.enter()  # the queue (1) is full: shed at once
    slots.leave()
    assert waiter.result(GUARD) is True and slots.count == 1 and slots.waiting == 0
    slots.leave()
    assert slots.count == 0
    assert InFlight(limit=1).enter() is True
    no_queue = InFlight(limit=1)
    no_queue.enter()
    assert not no_queue.enter()
