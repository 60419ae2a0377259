"""End-to-end on the cluster of `make cluster-up`: ingress prediction, metrics, dashboard, zero-downtime retraining."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request

from tests.e2e.conftest import INGRESS_URL, REPO, kubectl, service_proxy_get

PASSENGER = {"Name": "Cumings, Mrs. John Bradley", "Sex": "female", "Age": 38, "Pclass": 1, "SibSp": 1,
             "Parch": 0, "Fare": 71.28, "Embarked": "C", "Cabin": "C85"}


def predict_through_ingress() -> dict:
    """POST to the web app's JSON API through Traefik (the model server is cluster-local: no Ingress of its own)."""
    body = json.dumps({"instances": [PASSENGER]}).encode()
    request = urllib.request.Request(INGRESS_URL + "/api/predict", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def served_version() -> str:
    isvc = json.loads(kubectl("-n", "mlops", "get", "inferenceservice", "titanic", "-o", "json"))
    return isvc["spec"]["predictor"]["model"]["storageUri"].rsplit("/", 1)[1]


def test_web_ui_answers_through_the_ingress():
    with urllib.request.urlopen(INGRESS_URL + "/", timeout=30) as response:
        assert response.status == 200
        assert "titanic" in response.read().decode().lower()


def test_prediction_through_the_ingress_returns_a_model_version():
    answer = predict_through_ingress()
    prediction = answer["predictions"][0]
    assert prediction["survived"] in (0, 1) and 0 <= prediction["probability"] <= 1
    assert served_version() in json.dumps(answer)


def test_prometheus_has_titanic_series():
    predict_through_ingress()
    time.sleep(35)  # one scrape interval
    result = service_proxy_get("monitoring", "kps-prometheus:9090", "/api/v1/query?query=count%20by%20(__name__)%20({__name__%3D~%22titanic_.%2B%22})")
    names = {r["metric"]["__name__"] for r in result["data"]["result"]}
    assert {"titanic_model_info", "titanic_web_predictions_total"} <= names, names


def test_grafana_has_the_dashboard():
    search = service_proxy_get("monitoring", "monitoring-grafana:80", "/api/search?query=Titanic")
    assert any("titanic" in d["title"].lower() for d in search), search


def test_retraining_deploys_a_new_version_without_failed_predictions():
    before = served_version()
    failures, answers, stop = [], [], threading.Event()

    def keep_predicting():
        while not stop.is_set():
            try:
                answers.append(predict_through_ingress())
            except Exception as exc:  # every failure during the rollout is the finding
                failures.append(repr(exc))
            time.sleep(0.5)

    thread = threading.Thread(target=keep_predicting, daemon=True)
    thread.start()
    try:
        subprocess.run(["make", "--no-print-directory", "train"], cwd=REPO, check=True, timeout=3600)
        kubectl("-n", "mlops", "wait", "inferenceservice/titanic", "--for=condition=Ready", "--timeout=600s", timeout=620)
        time.sleep(10)
    finally:
        stop.set()
        thread.join()
    assert served_version() != before
    assert answers and not failures, failures[:5]
