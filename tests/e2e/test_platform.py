"""End-to-end on a cluster with the platform: prediction through the web app, metrics, dashboard, and a zero-downtime
retraining started by an alert through the web app's relay, as Alertmanager starts one."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.conftest import AIRFLOW_URL, ISVC_READY, TITANIC_URL, kubectl, monitoring_missing_reason, secret_value, \
    service_proxy_get
from tests.monitoring.payloads import alert_payload

PASSENGER = {"Name": "Cumings, Mrs. John Bradley", "Sex": "female", "Age": 38, "Pclass": 1, "SibSp": 1,
             "Parch": 0, "Fare": 71.28, "Embarked": "C", "Cabin": "C85"}


def post(path: str, body: dict, headers: dict | None = None) -> dict:
    request = urllib.request.Request(TITANIC_URL + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def predict_through_the_web_app() -> dict:
    """POST to the web app's JSON API (through Traefik on kind; the model server is cluster-local: no Ingress)."""
    return post("/api/predict", {"instances": [PASSENGER]})


def served_version() -> str:
    isvc = json.loads(kubectl("-n", "mlops", "get", "inferenceservice", "titanic", "-o", "json"))
    return isvc["spec"]["predictor"]["model"]["storageUri"].rsplit("/", 1)[1]


def test_web_ui_answers():
    with urllib.request.urlopen(TITANIC_URL + "/", timeout=30) as response:
        assert response.status == 200
        assert "titanic" in response.read().decode().lower()


def test_prediction_through_the_web_app_returns_the_served_model_version():
    answer = predict_through_the_web_app()
    prediction = answer["predictions"][0]
    assert prediction["survived"] in (0, 1) and 0 <= prediction["probability"] <= 1
    assert served_version() in json.dumps(answer)


def test_explanation_through_the_web_app_adds_up_to_the_prediction():
    """KServe's :explain through the real InferenceService (transformer -> predictor pods)."""
    explained, predicted = post("/api/explain", {"instances": [PASSENGER]}), predict_through_the_web_app()
    [e], [p] = explained["explanations"], predicted["predictions"]
    assert abs(e["base"] + sum(e["contributions"].values()) - e["probability"]) <= 1e-6
    assert abs(e["probability"] - p["probability"]) <= 1e-5 and explained["model_version"] == served_version()
    assert e["contributions"]["Sex"] > 0  # a first-class woman


def test_prometheus_has_titanic_series():
    if reason := monitoring_missing_reason():
        pytest.skip(reason)
    predict_through_the_web_app()
    time.sleep(35)  # one scrape interval
    result = service_proxy_get("monitoring", "kps-prometheus:9090", "/api/v1/query?query=count%20by%20(__name__)%20({__name__%3D~%22titanic_.%2B%22})")
    names = {r["metric"]["__name__"] for r in result["data"]["result"]}
    assert {"titanic_model_info", "titanic_web_predictions_total"} <= names, names


def test_grafana_has_the_dashboard():
    if reason := monitoring_missing_reason():
        pytest.skip(reason)
    search = service_proxy_get("monitoring", "monitoring-grafana:80", "/api/search?query=Titanic")
    assert any("titanic" in d["title"].lower() for d in search), search


def airflow_run_state(run_id: str) -> str | None:
    """The run's state from Airflow's API when AIRFLOW_URL is given (fail fast instead of waiting for a version)."""
    if not AIRFLOW_URL:
        return None
    login = {"username": secret_value("airflow", "airflow-admin", "username"),
             "password": secret_value("airflow", "airflow-admin", "password")}
    request = urllib.request.Request(AIRFLOW_URL + "/auth/token", data=json.dumps(login).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        token = json.load(response)["access_token"]
    request = urllib.request.Request(f"{AIRFLOW_URL}/api/v2/dags/titanic_training/dagRuns/{run_id}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["state"]


def test_drift_alert_retrains_and_deploys_a_new_version_without_failed_predictions():
    """Alertmanager's notification (same body, same token) → the web app's relay → a DAG run in Airflow → step
    pods → the deploy step patches the InferenceService → KServe rolls the predictor; predictions never fail."""
    before = served_version()
    failures, answers, stop = [], [], threading.Event()

    def keep_predicting():
        while not stop.is_set():
            try:
                answers.append(predict_through_the_web_app())
            except Exception as exc:  # every failure during the rollout is the finding
                failures.append(repr(exc))
            time.sleep(0.5)

    thread = threading.Thread(target=keep_predicting, daemon=True)
    thread.start()
    try:
        token = secret_value("mlops", "titanic-secrets", "ALERT_WEBHOOK_TOKEN")
        answer = post("/hooks/alertmanager", alert_payload(feature="Fare"), {"Authorization": f"Bearer {token}"})
        assert answer.get("triggered") is True, answer
        run_id, deadline, state = answer["dag_run_id"], time.monotonic() + 3600, None
        while served_version() == before and time.monotonic() < deadline:
            state = airflow_run_state(run_id)
            assert state != "failed", f"run {run_id} failed: see the Airflow UI and `kubectl -n mlops get pods`"
            time.sleep(10)
        kubectl("-n", "mlops", "wait", "inferenceservice/titanic", ISVC_READY, "--timeout=600s", timeout=620)
        time.sleep(10)
    finally:
        stop.set()
        thread.join()
    assert served_version() != before, f"no new version within the deadline (run state {state})"
    assert answers and not failures, failures[:5]
