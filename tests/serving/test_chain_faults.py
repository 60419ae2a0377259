"""Real servers stopped under the serving chain (web app -> transformer -> predictor): what callers see, and recovery.

- Redis stops: passengers sent with their fields are still predicted, id-only requests get a 503 naming the
  feature store, and the lookups work again by themselves once Redis is back.
- The predictor is SIGKILLed under 8 concurrent clients: the transformer and the web app answer 503 within their
  timeouts (no hang, no 500), and 200 again once a predictor is back on its port.
- Postgres stops: web predictions go on, the model page says the registry is unavailable, the Alertmanager relay
  answers 503 (Alertmanager retries) and neither records nor claims anything.

Redis and Postgres are a private set (tests/services.py), so the session's servers stay up.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid

import pytest
import requests

from tests import services as local_services
from tests.conftest import VERSITYGW, make_settings
from tests.fixtures.serving import launch, start_predictor, start_transformer
from tests.serving.test_server import ROSE
from tests.webapp.conftest import VALID, closed_port_url, make_app
from tests.webapp.server import gunicorn

pytestmark = pytest.mark.integration


def _predict(url: str, name: str, instances: list[dict]) -> requests.Response:
    return requests.post(f"{url}/v1/models/{name}:predict", json={"instances": instances}, timeout=30)


def test_redis_down_full_passengers_predicted_id_lookups_503_then_recovered(model_server, private_services, tmp_path):
    from pipeline.store.feature_store import FeatureStore

    trained = model_server.trained
    # the session's current feature set, copied into the private Redis the transformer reads
    online = trained.settings.model_copy(update={"redis_url": private_services.redis_url})
    FeatureStore(online).write(FeatureStore(trained.settings).read(trained.feature_set), trained.feature_set)
    transformer = launch("transformer", trained.settings,
                         ["--model_uri", trained.artifact_uri, "--predictor_host",
                          model_server.predictor.url.removeprefix("http://")],
                         tmp_path, extra_env={"REDIS_URL": private_services.redis_url})
    name, by_id = trained.settings.model_name, [{"PassengerId": 1}]
    try:
        assert _predict(transformer.url, name, by_id).status_code == 200
        with local_services.stopped(private_services, "redis", VERSITYGW):
            full = _predict(transformer.url, name, [ROSE])
            started = time.monotonic()
            lookup = _predict(transformer.url, name, by_id)
            mixed = _predict(transformer.url, name, [ROSE, {"PassengerId": 2}])
            assert time.monotonic() - started < 5  # Redis refused: no waiting on it
        assert full.status_code == 200 and full.json()["predictions"][0]["survived"] in (0, 1)
        for r in (lookup, mixed):
            assert r.status_code == 503, r.text
            assert "feature store (Redis) unavailable" in r.json()["error"]
        # Redis is back (with its data): the transformer's client reconnects by itself, no restart
        deadline = time.monotonic() + 10
        while (r := _predict(transformer.url, name, by_id)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 200, r.text
    finally:
        transformer.stop()


CLIENTS = 8
TRANSFORMER_TIMEOUT = 2  # --predictor_request_timeout_seconds
WEB_READ_TIMEOUT = 5.0  # the web app's KSERVE_READ_TIMEOUT (its default)


def test_predictor_killed_under_load_503s_within_timeouts_then_recovers(trained_model, tmp_path):
    predictor = start_predictor(trained_model, tmp_path)
    transformer = start_transformer(trained_model, predictor, tmp_path,
                                    "--predictor_request_timeout_seconds", str(TRANSFORMER_TIMEOUT))
    name = trained_model.settings.model_name
    results: list[tuple[str, float, int | str, float]] = []  # (target, sent at, status or exception, seconds)
    stop = threading.Event()
    try:
        with gunicorn({"KSERVE_URL": transformer.url, "MODEL_NAME": name}) as web:
            targets = {"web": (f"{web}/api/predict", VALID), "transformer": (
                f"{transformer.url}/v1/models/{name}:predict", {"instances": [ROSE]})}

            def client(target: str) -> None:
                url, body = targets[target]
                with requests.Session() as session:
                    while not stop.is_set():
                        sent = time.monotonic()
                        try:
                            outcome = session.post(url, json=body, timeout=30).status_code
                        except requests.RequestException as exc:
                            outcome = type(exc).__name__
                        results.append((target, sent, outcome, time.monotonic() - sent))
                        if outcome != 200:  # a client backs off a little; a spin of instant 503s starves the restart
                            time.sleep(0.05)

            threads = [threading.Thread(target=client, args=("web" if i % 2 else "transformer",)) for i in range(CLIENTS)]
            for t in threads:
                t.start()
            try:
                time.sleep(1.5)
                killed_at = time.monotonic()
                predictor.proc.kill()
                predictor.proc.wait(timeout=10)
                time.sleep(3)
                restarted_at = time.monotonic()
                predictor = start_predictor(trained_model, tmp_path, port=predictor.port)
                back_at = time.monotonic()
                time.sleep(1.5)
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=60)
    finally:
        transformer.stop()
        predictor.stop()

    assert not any(t.is_alive() for t in threads)
    before = [r for r in results if r[1] + r[3] < killed_at]  # answered before the kill
    assert {r[2] for r in before} == {200}, collections.Counter((r[0], r[2]) for r in before)
    outage = [r for r in results if killed_at + 0.2 < r[1] < restarted_at]
    for target in targets:
        seen = [r for r in outage if r[0] == target]
        assert seen and {r[2] for r in seen} == {503}, (target, {r[2] for r in seen})
        limit = TRANSFORMER_TIMEOUT if target == "transformer" else WEB_READ_TIMEOUT
        assert max(r[3] for r in seen) < limit + 1, target  # answered, not hung
    odd = [(r[0], round(r[1] - killed_at, 2), r[2], round(r[3], 2)) for r in results if r[2] not in (200, 503)]
    assert not odd, odd  # no 500, no client timeout, from start to end
    after = [r for r in results if r[1] > back_at + 0.5]
    assert after and {r[2] for r in after} == {200}, {r[2] for r in after}


def _firing() -> dict:
    return {"version": "4", "status": "firing", "groupKey": "{}:{alertname=\"TitanicFeatureDrift\"}",
            "alerts": [{"status": "firing", "labels": {"alertname": "TitanicFeatureDrift", "feature": "Age"},
                        "annotations": {}, "startsAt": "2026-12-02T03:00:00Z", "fingerprint": "f1"}]}


def test_postgres_down_predictions_go_on_model_page_and_relay_say_so(model_server, private_services):
    import redis

    from pipeline.store import postgres

    settings = make_settings(private_services, uuid.uuid4().hex[:10]).model_copy(update={
        "kserve_url": model_server.transformer_url, "alert_webhook_token": "secret",
        "airflow_api_url": closed_port_url(),  # never reached: nothing may be triggered without its record
    })
    postgres.connect(settings).close()  # migrated, as a running deployment is
    client = make_app(settings.kserve_url, SETTINGS=settings).test_client()
    hook = {"json": _firing(), "headers": {"Authorization": "Bearer secret"}}
    with local_services.stopped(private_services, "postgres", VERSITYGW):
        prediction = client.post("/api/predict", json=VALID)
        page = client.get("/model")
        relay = client.post("/hooks/alertmanager", **hook)
    assert prediction.status_code == 200 and prediction.json["model_version"] == model_server.model_version
    assert page.status_code == 200 and "model registry (Postgres) cannot be read" in page.get_data(as_text=True)
    assert relay.status_code == 503, relay.json
    assert "Postgres" in relay.json["error"]

    from webapp.relay import cooldown_key

    assert redis.Redis.from_url(settings.redis_url).get(cooldown_key(settings)) is None  # the retry may trigger
    conn = postgres.connect(settings)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM retrain_triggers")
        assert cur.fetchone()[0] == 0
    conn.close()
    assert "cannot be read" not in client.get("/model").get_data(as_text=True)  # back by itself
