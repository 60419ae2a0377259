"""Model-server latency and throughput: ONNX Runtime against the scikit-learn path, measured in the same run.

A model is trained by the real steps (ingest -> features -> train) on local services, then:
- compute: the predictor's forest evaluation for 1 and 1,000 passengers, in process;
- hop: one passenger's feature vector sent to the predictor over localhost HTTP (V1);
- chain: one raw passenger through transformer -> predictor (validate, features, drift, predict);
- throughput: predictions/s through the chain with 8 concurrent clients;
- transformer_compute: schema.validate and features.transform per call (the chain's floor).
Each figure is taken with `--runtime onnx` and `--runtime sklearn`; ratios are sklearn / onnx.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from http.client import HTTPConnection
from pathlib import Path

import numpy as np

from bench.environment import isolated_settings, run_clients
from pipeline import features, schema
from pipeline.serving import artifacts
from pipeline.serving.onnx_export import build_runner
from pipeline.steps import features as features_step
from pipeline.steps import ingest, train
from tests.conftest import TRAIN_CSV
from tests.fixtures.serving import launch
from tests.serving.passengers import instances, random_passengers

CLIENTS = 8
THROUGHPUT_SECONDS = 10.0
LATENCY_REQUESTS = 400
TARGETS = {"compute_1_ms": 0.1, "compute_1000_ms": 10.0, "chain_p50_ms": 6.0, "chain_p99_ms": 12.0,
           "throughput_per_s": 300}


def _percentiles(samples: list[float]) -> dict:
    ms = np.asarray(samples) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "n": len(ms)}


def _timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` after a warm-up."""
    for _ in range(min(20, repeats)):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _compute(model: artifacts.ModelArtifacts) -> dict:
    X = features.transform(schema.validate(random_passengers(1000, seed=1), require_id=False).valid)
    cols_1000 = {c: X[c].to_numpy() for c in model.feature_columns}
    cols_1 = {c: v[:1] for c, v in cols_1000.items()}
    out = {}
    for runtime in ("onnx", "sklearn"):
        runner = build_runner(model.pipeline, model.numeric_features, model.categorical_features, runtime)
        out[runtime] = {"one_ms": round(_timed(lambda: runner.predict_proba(cols_1), 300 if runtime == "onnx" else 50) * 1e3, 4),
                        "thousand_ms": round(_timed(lambda: runner.predict_proba(cols_1000), 30 if runtime == "onnx" else 10) * 1e3, 3)}
    out["ratio_one"] = round(out["sklearn"]["one_ms"] / out["onnx"]["one_ms"], 1)
    out["ratio_thousand"] = round(out["sklearn"]["thousand_ms"] / out["onnx"]["thousand_ms"], 1)
    return out


def _transformer_compute() -> dict:
    """Where a lone request's transformer time goes: validate and transform cost per call, not per row."""
    import pandas as pd

    one = pd.DataFrame(instances(random_passengers(1, seed=3)))
    eight = pd.DataFrame(instances(random_passengers(8, seed=4)))
    out = {}
    for label, frame in (("one", one), ("eight", eight)):
        valid = schema.validate(frame, require_id=False).valid
        out[f"validate_{label}_ms"] = round(_timed(lambda: schema.validate(frame, require_id=False), 200) * 1e3, 3)
        out[f"transform_{label}_ms"] = round(_timed(lambda: features.transform(valid), 200) * 1e3, 3)
    return out


class _Client:
    """Keep-alive HTTP/1.1 client (one connection per thread, as a pooled web app client would)."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.conn = HTTPConnection(host, int(port), timeout=30)

    def post(self, path: str, body: bytes) -> int:
        self.conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        response.read()
        return response.status


def _latency(url: str, path: str, bodies: list[bytes]) -> dict:
    client = _Client(url)
    for body in bodies[:30]:
        assert client.post(path, body) == 200
    samples = []
    for i in range(LATENCY_REQUESTS):
        started = time.perf_counter()
        status = client.post(path, bodies[i % len(bodies)])
        samples.append(time.perf_counter() - started)
        assert status == 200
    return _percentiles(samples)


def _throughput(url: str, path: str, bodies: list[bytes]) -> dict:
    done, errors = [0] * CLIENTS, [0] * CLIENTS

    def work(k: int, stop: threading.Event) -> None:
        client = _Client(url)
        i = k
        while not stop.is_set():
            if client.post(path, bodies[i % len(bodies)]) == 200:
                done[k] += 1
            else:
                errors[k] += 1
            i += CLIENTS

    elapsed = run_clients(CLIENTS, work, THROUGHPUT_SECONDS)
    return {"predictions_per_s": round(sum(done) / elapsed, 1), "errors": sum(errors), "clients": CLIENTS}


def _servers(settings, uri: str, runtime: str, log_dir: Path) -> dict:
    name = settings.model_name
    predictor = launch("predictor", settings, ["--model_uri", uri, "--runtime", runtime], log_dir)
    transformer = None
    try:
        transformer = launch("transformer", settings, ["--model_uri", uri, "--predictor_host",
                                                       predictor.url.removeprefix("http://")], log_dir)
        raw = random_passengers(200, seed=2)
        X = features.transform(schema.validate(raw, require_id=False).valid)
        vectors = [json.dumps({"instances": [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}]}).encode()
                   for row in X.to_dict("records")]
        chain_bodies = [json.dumps({"instances": [inst]}).encode() for inst in instances(raw)]
        path = f"/v1/models/{name}:predict"
        return {"hop": _latency(predictor.url, path, vectors),
                "chain": _latency(transformer.url, path, chain_bodies),
                "throughput": _throughput(transformer.url, path, chain_bodies)}
    finally:
        if transformer:
            transformer.stop()
        predictor.stop()


def run() -> dict:
    with isolated_settings() as settings, tempfile.TemporaryDirectory() as tmp:
        ingest.run(settings, source=str(TRAIN_CSV))
        feature_set = features_step.run(settings)["feature_set"]
        trained = train.run(settings, feature_set=feature_set, n_iter=10, cv=3, seed=42)
        model = artifacts.load(settings, model_uri=trained["artifact_uri"], with_model=True)
        result = {"model": {"version": model.version, "params": model.metadata.get("params")},
                  "compute": _compute(model), "transformer_compute": _transformer_compute()}
        for runtime in ("onnx", "sklearn"):
            result[runtime] = _servers(settings, trained["artifact_uri"], runtime, Path(tmp))
        onnx, sk = result["onnx"], result["sklearn"]
        result["onnx_speedup"] = {  # how many times better than scikit-learn
            "hop_p50": round(sk["hop"]["p50_ms"] / onnx["hop"]["p50_ms"], 1),
            "chain_p50": round(sk["chain"]["p50_ms"] / onnx["chain"]["p50_ms"], 2),
            "chain_p99": round(sk["chain"]["p99_ms"] / onnx["chain"]["p99_ms"], 2),
            "throughput": round(onnx["throughput"]["predictions_per_s"] / sk["throughput"]["predictions_per_s"], 2),
        }
        result["targets"] = TARGETS
        return result
