"""Web hop overhead: web app (gunicorn, 2 workers) -> transformer -> predictor, against the transformer alone.

Browser-less: 8 concurrent keep-alive clients POST one passenger at a time, first straight to
the transformer's V1 endpoint, then to the web app's /api/predict, which calls that same
transformer. Reported: the difference of the two latency distributions, and the web app's
own time per request from its `Server-Timing` header (total minus the KServe call), which is
what the hop adds without the noise of a CPU-bound model server sharing the 2 cores
(target: p99 <= 5 ms). A single-client run shows the hop without queueing.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import requests

from bench.environment import isolated_settings
from tests.webapp.conftest import VALID
from tests.webapp.server import gunicorn

CLIENTS = 8
REQUESTS = 800  # per run, split over the clients
WARMUP = 40


def _load(url: str, body, clients: int, per_client: int) -> dict:
    """Latencies (ms) of `clients` threads, each with its own keep-alive session, and requests/s."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    web_own: list[float] = []  # the web app's own time per request, from its Server-Timing header
    failures = []
    start = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        session = requests.Session()
        for _ in range(WARMUP // clients + 1):  # connection set up and caches warm before timing
            session.post(url, json=body, timeout=10)
        start.wait()
        for _ in range(per_client):
            t0 = time.perf_counter()
            response = session.post(url, json=body, timeout=10)
            latencies[i].append((time.perf_counter() - t0) * 1000)
            timing = _server_timing(response.headers.get("Server-Timing", ""))
            if "web" in timing:
                web_own.append(timing["web"])
            if response.status_code != 200:
                failures.append(response.status_code)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = np.array([x for xs in latencies for x in xs])
    if failures:
        raise RuntimeError(f"{len(failures)} requests to {url} failed: {sorted(set(failures))}")
    out = {
        "requests": int(flat.size),
        "p50_ms": round(float(np.percentile(flat, 50)), 2),
        "p99_ms": round(float(np.percentile(flat, 99)), 2),
        "mean_ms": round(float(flat.mean()), 2),
        "requests_per_s": round(flat.size / wall, 1),
    }
    if web_own:
        out["web_own_p50_ms"] = round(float(np.percentile(web_own, 50)), 2)
        out["web_own_p99_ms"] = round(float(np.percentile(web_own, 99)), 2)
    return out


def _server_timing(header: str) -> dict[str, float]:
    """`kserve;dur=1.2, web;dur=0.4` -> {"kserve": 1.2, "web": 0.4}."""
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if rest:
            out[name] = float(rest)
    return out


def measure(transformer_url: str, model_name: str, web_env: dict[str, str]) -> dict:
    """Both paths at 1 and 8 clients; the web app runs as in the image (gunicorn, 2 workers x 4 threads)."""
    direct_url = f"{transformer_url}/v1/models/{model_name}:predict"
    results: dict = {}
    with gunicorn({**web_env, "KSERVE_URL": transformer_url}, workers=2) as web:
        web_url = f"{web}/api/predict"
        for clients in (1, CLIENTS):
            per_client = REQUESTS // clients
            direct = _load(direct_url, {"instances": [VALID]}, clients, per_client)
            via_web = _load(web_url, VALID, clients, per_client)
            results[f"clients_{clients}"] = {
                "transformer_direct": direct,
                "via_web": via_web,
                "web_added_p50_ms": round(via_web["p50_ms"] - direct["p50_ms"], 2),
                "web_added_p99_ms": round(via_web["p99_ms"] - direct["p99_ms"], 2),
            }
    results["target_web_added_p99_ms"] = 5.0
    at_8 = results[f"clients_{CLIENTS}"]
    # Server-side: the app's own time per request (parsing, validation, JSON, metrics), without the model server.
    at_8["web_own_p99_within_target"] = at_8["via_web"]["web_own_p99_ms"] <= 5.0
    return results


def _train(settings) -> SimpleNamespace:
    """A production model in the isolated services, the way `run-all` makes one (small search)."""
    from pipeline.steps import deploy, evaluate, features, ingest, train
    from tests.conftest import TRAIN_CSV, TRAIN_SHA256
    from tests.fixtures.training import SEARCH

    ingest.run(settings, source=str(TRAIN_CSV), sha256=TRAIN_SHA256)
    built = features.run(settings)
    trained = train.run(settings, feature_set=built["feature_set"], **SEARCH)
    if evaluate.run(settings, version=trained["version"])["approved"]:
        deploy.run(settings, trained["version"], target="local")
    return SimpleNamespace(settings=settings, artifact_uri=trained["artifact_uri"], version=trained["version"])


def run() -> dict:
    from tests.conftest import settings_env
    from tests.fixtures.serving import start_predictor, start_transformer

    with isolated_settings() as settings, tempfile.TemporaryDirectory(prefix="bench-web-") as logs:
        trained = _train(settings)
        predictor = start_predictor(trained, Path(logs))
        try:
            transformer = start_transformer(trained, predictor, Path(logs))
            try:
                results = measure(transformer.url, settings.model_name, settings_env(settings))
            finally:
                transformer.stop()
        finally:
            predictor.stop()
    results["model_version"] = trained.version
    for clients in ("clients_1", f"clients_{CLIENTS}"):
        r = results[clients]
        print(f"web bench {clients}: transformer p50 {r['transformer_direct']['p50_ms']} ms p99 "
              f"{r['transformer_direct']['p99_ms']} ms {r['transformer_direct']['requests_per_s']} req/s | via web p50 "
              f"{r['via_web']['p50_ms']} ms p99 {r['via_web']['p99_ms']} ms {r['via_web']['requests_per_s']} req/s | "
              f"end-to-end difference p50 {r['web_added_p50_ms']} ms p99 {r['web_added_p99_ms']} ms | "
              f"web app's own time p50 {r['via_web']['web_own_p50_ms']} ms p99 {r['via_web']['web_own_p99_ms']} ms",
              file=sys.stderr)
    return results
