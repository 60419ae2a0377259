"""Explanations and the model page against their budgets (issue 14).

- explain: one raw passenger through transformer -> predictor `:explain`, beside `:predict` of the same chain
  (sequential keep-alive requests), and the TreeSHAP computation alone, in process;
- model_page: `/model` and the two-version comparison, with 50 versions in the registry (Flask test client).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.environment import isolated_settings
from bench.serving import _latency, _timed
from pipeline import features, registry, schema
from pipeline.explain import Explainer
from pipeline.serving import artifacts
from pipeline.steps import features as features_step
from pipeline.steps import ingest, train
from pipeline.store import postgres, s3
from tests.conftest import TRAIN_CSV
from tests.fixtures.serving import launch
from tests.serving.passengers import instances, random_passengers

VERSIONS = 50
TARGETS = {"explain_p50_ms": 20.0, "explain_p99_ms": 50.0, "model_page_ms": 100.0}


def _chain(settings, uri: str, log_dir: Path) -> dict:
    predictor = launch("predictor", settings, ["--model_uri", uri], log_dir)
    transformer = None
    try:
        transformer = launch("transformer", settings, ["--model_uri", uri, "--predictor_host",
                                                       predictor.url.removeprefix("http://")], log_dir)
        bodies = [json.dumps({"instances": [i]}).encode() for i in instances(random_passengers(200, seed=2))]
        name = settings.model_name
        return {"predict": _latency(transformer.url, f"/v1/models/{name}:predict", bodies),
                "explain": _latency(transformer.url, f"/v1/models/{name}:explain", bodies)}
    finally:
        if transformer:
            transformer.stop()
        predictor.stop()


def _model_page(settings, trained: dict) -> dict:
    """50 versions (the real one's metadata copied), then the pages' median render time."""
    from webapp import create_app

    meta = s3.get_bytes(s3.client(settings), settings.bucket_models, f"{settings.model_name}/{trained['version']}/metadata.json")
    conn = postgres.connect(settings)
    try:
        row = registry.get(conn, settings.model_name, trained["version"])
        for k in range(VERSIONS - 1):
            version = f"{trained['version']}-{k:02d}"
            s3.put_bytes(s3.client(settings), settings.bucket_models, f"{settings.model_name}/{version}/metadata.json", meta)
            registry.register(conn, settings.model_name, version, artifact_uri=f"{row['artifact_uri']}-{k:02d}",
                              metrics=row["metrics"], params=row["params"], feature_set=row["feature_set"],
                              lineage=row["lineage"])
            registry.set_status(conn, settings.model_name, version, "rejected", "bench")
    finally:
        conn.close()
    client = create_app({"SETTINGS": settings}).test_client()
    compare = f"/model/versions?v={trained['version']}&v={trained['version']}-00"
    for path in ("/model", compare):
        assert client.get(path).status_code == 200, path
    return {"versions": VERSIONS,
            "model_ms": round(_timed(lambda: client.get("/model"), 30) * 1e3, 2),
            "compare_ms": round(_timed(lambda: client.get(compare), 30) * 1e3, 2)}


def run() -> dict:
    with isolated_settings() as settings, tempfile.TemporaryDirectory() as tmp:
        ingest.run(settings, source=str(TRAIN_CSV))
        feature_set = features_step.run(settings)["feature_set"]
        started = time.perf_counter()
        trained = train.run(settings, feature_set=feature_set, n_iter=10, cv=3, seed=42)
        train_s = time.perf_counter() - started
        model = artifacts.load(settings, model_uri=trained["artifact_uri"], with_model=True)
        X = features.transform(schema.validate(random_passengers(100, seed=1), require_id=False).valid)
        explainer = Explainer(model.pipeline)
        rows = [X.iloc[[i]] for i in range(len(X))]
        compute = [_timed(lambda r=r: explainer.explain(r), 3) for r in rows[:50]]
        result = {"model": {"version": model.version, "params": model.metadata.get("params")},
                  "train_seconds_with_global_importance": round(train_s, 1),
                  "explain_compute_one_ms": round(float(np.median(compute)) * 1e3, 2),
                  "chain": _chain(settings, trained["artifact_uri"], Path(tmp)),
                  "model_page": _model_page(settings, trained)}
        result["targets"] = TARGETS
        return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2, default=str))
