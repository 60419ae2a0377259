"""Load shedding under the image's gunicorn: a worker serving MAX_IN_FLIGHT requests answers more with 503 at once."""

from __future__ import annotations

import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

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


def test_a_busy_worker_sheds_the_excess_with_503_and_serves_again_after_the_burst():
    with _held_transformer() as transformer, gunicorn(
            {"KSERVE_URL": f"http://127.0.0.1:{transformer.server_address[1]}", "WEBAPP_MAX_IN_FLIGHT": "2"},
            workers=1, threads=4) as url:

        def predict():
            return requests.post(f"{url}/api/predict", json=VALID, timeout=GUARD)

        with ThreadPoolExecutor(8) as pool:
            admitted = [pool.submit(predict) for _ in range(2)]
            with transformer.arrived:
                assert transformer.arrived.wait_for(lambda: transformer.held == 2, GUARD)
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
