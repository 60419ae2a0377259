"""The predictor and transformer as real processes: V1, V2, train/serve parity, Redis lookup, 400s, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from pipeline import features, schema
from tests.serving.passengers import instances, random_passengers, train_rows

MAX_DELTA = 1e-5

ROSE = {"Name": "Dewitt Bukater, Miss. Rose", "Sex": "female", "Age": 17, "Pclass": 1, "SibSp": 0, "Parch": 1,
        "Fare": 211.5, "Embarked": "S", "Cabin": "B58"}


def _v1(url: str, name: str, instances: list[dict], **kw) -> requests.Response:
    return requests.post(f"{url}/v1/models/{name}:predict", json={"instances": instances}, timeout=30, **kw)


def _expected(model, raw) -> np.ndarray:
    return model.predict_proba(features.transform(schema.validate(raw, require_id=False).valid))[:, 1]


def test_v1_through_the_transformer(model_server):
    r = _v1(model_server.transformer_url, model_server.settings.model_name, [ROSE])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == model_server.model_version
    [prediction] = body["predictions"]
    assert set(prediction) == {"survived", "probability"}
    assert prediction["survived"] in (0, 1) and 0 <= prediction["probability"] <= 1
    assert prediction["survived"] == int(prediction["probability"] > 0.5)


def test_train_serve_parity_for_all_891_passengers(model_server):
    raw = train_rows()
    predictions = []
    for start in range(0, len(raw), 100):  # the transformer's cap of instances per request
        r = _v1(model_server.transformer_url, model_server.settings.model_name, instances(raw.iloc[start:start + 100]))
        assert r.status_code == 200, r.text[:500]
        predictions += r.json()["predictions"]
    got = np.array([p["probability"] for p in predictions])
    expected = _expected(model_server.model, raw)
    assert len(got) == 891
    assert np.abs(got - expected).max() <= MAX_DELTA
    decided = np.abs(expected - 0.5) >= 1e-6
    survived = np.array([p["survived"] for p in predictions])
    assert (survived[decided] == (expected[decided] > 0.5)).all()


def test_v2_through_the_transformer(model_server):
    raw = random_passengers(5, seed=11)
    inst = instances(raw)
    inputs = []
    for field in schema.INSTANCE_FIELDS:
        values = [i.get(field) for i in inst]  # Ticket is optional: sent as nulls
        numeric = field in ("Age", "Pclass", "SibSp", "Parch", "Fare")
        inputs.append({"name": field, "shape": [5], "datatype": "FP64" if numeric else "BYTES",
                       "data": [None if v is None else (float(v) if numeric else str(v)) for v in values]})
    r = requests.post(f"{model_server.transformer_url}/v2/models/{model_server.settings.model_name}/infer",
                      json={"inputs": inputs}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == model_server.model_version
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    np.testing.assert_allclose(outputs["probability"], _expected(model_server.model, raw), atol=MAX_DELTA)
    assert outputs["survived"] == [int(p > 0.5) for p in outputs["probability"]]


def test_predictor_answers_v1_and_v2_with_feature_vectors(model_server):
    raw = random_passengers(4, seed=5)
    X = features.transform(schema.validate(raw, require_id=False).valid)
    expected = model_server.model.predict_proba(X)[:, 1]
    name = model_server.settings.model_name
    rows = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()} for row in X.to_dict("records")]
    r1 = _v1(model_server.predictor_url, name, rows)
    assert r1.status_code == 200, r1.text
    assert r1.json()["model_version"] == model_server.model_version
    np.testing.assert_allclose([p["probability"] for p in r1.json()["predictions"]], expected, atol=MAX_DELTA)
    inputs = [{"name": c, "shape": [4], "datatype": "FP64" if c in features.NUMERIC_FEATURES else "BYTES",
               "data": [row[c] for row in rows]} for c in features.FEATURE_COLUMNS]
    r2 = requests.post(f"{model_server.predictor_url}/v2/models/{name}/infer", json={"inputs": inputs}, timeout=30)
    assert r2.status_code == 200, r2.text
    assert r2.json()["model_version"] == model_server.model_version
    out = {o["name"]: o["data"] for o in r2.json()["outputs"]}
    np.testing.assert_allclose(out["probability"], expected, atol=MAX_DELTA)
    # V2 metadata and readiness of the OIP
    assert requests.get(f"{model_server.predictor_url}/v2/models/{name}/ready", timeout=5).json()["ready"] is True


def test_lookup_by_passenger_id_uses_the_online_store(model_server):
    raw = train_rows()
    chosen = raw[raw["PassengerId"].isin(["1", "2", "62", "891"])]
    by_id = _v1(model_server.transformer_url, model_server.settings.model_name,
                [{"PassengerId": int(p)} for p in chosen["PassengerId"]] + [ROSE])
    assert by_id.status_code == 200, by_id.text
    got = [p["probability"] for p in by_id.json()["predictions"]]
    np.testing.assert_allclose(got[:4], _expected(model_server.model, chosen), atol=MAX_DELTA)
    np.testing.assert_allclose(got[4], _expected(model_server.model, __import__("pandas").DataFrame([ROSE]))[0],
                               atol=MAX_DELTA)


def test_unknown_passenger_id_is_a_400_naming_the_field(model_server):
    r = _v1(model_server.transformer_url, model_server.settings.model_name, [ROSE, {"PassengerId": 99999}])
    assert r.status_code == 400
    assert r.json()["errors"] == [{"instance": 1, "field": "PassengerId",
                                   "message": "no stored features for passenger 99999 in the online store"}]


@pytest.mark.parametrize("bad, field, text", [
    ({"Age": -3}, "Age", "must be between 0 and 100"),
    ({"Sex": "robot"}, "Sex", "must be one of"),
    ({"Pclass": 4}, "Pclass", "must be one of"),
    ({"Name": None}, "Name", "is required"),
    ({"Fare": "cheap"}, "Fare", "must be a number"),
])
def test_invalid_instance_is_a_400_naming_field_and_index(model_server, bad, field, text):
    r = _v1(model_server.transformer_url, model_server.settings.model_name, [ROSE, ROSE, {**ROSE, **bad}])
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"].startswith(f"instance 2: {field}: ")
    [error] = body["errors"]
    assert error["instance"] == 2 and error["field"] == field and text in error["message"]


def test_malformed_requests_are_400(model_server):
    name = model_server.settings.model_name
    assert requests.post(f"{model_server.transformer_url}/v1/models/{name}:predict", json={"instances": []},
                         timeout=10).status_code == 400
    assert requests.post(f"{model_server.transformer_url}/v1/models/{name}:predict", json={"rows": [ROSE]},
                         timeout=10).status_code == 400
    r = _v1(model_server.transformer_url, name, [ROSE, "not an object"])
    assert r.status_code == 400 and "instance 1" in r.json()["error"]


def test_too_many_instances_is_a_413_naming_the_limit(model_server):
    name = model_server.settings.model_name
    assert _v1(model_server.transformer_url, name, [ROSE] * 100).status_code == 200
    r = _v1(model_server.transformer_url, name, [ROSE] * 101)
    assert r.status_code == 413
    assert r.json() == {"error": "at most 100 instances per request, got 101", "max_instances": 100}
    v2 = {"inputs": [{"name": f, "shape": [101], "datatype": "BYTES", "data": [str(ROSE[f])] * 101} for f in ROSE]}
    r = requests.post(f"{model_server.transformer_url}/v2/models/{name}/infer", json=v2, timeout=30)
    assert r.status_code == 413 and r.json()["max_instances"] == 100


def test_oversized_body_is_a_413_naming_the_limit_also_when_chunked(model_server):
    url = f"{model_server.transformer_url}/v1/models/{model_server.settings.model_name}:predict"
    limit = model_server.settings.transformer_max_body_bytes
    big = b'{"instances": [' + b" " * limit + b"]}"
    r = requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413
    assert r.json() == {"error": f"request body larger than {limit} bytes", "max_body_bytes": limit}
    # Without Content-Length (chunked transfer) the bytes received are counted.
    chunks = (big[i:i + 8192] for i in range(0, len(big), 8192))
    r = requests.post(url, data=chunks, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["max_body_bytes"] == limit
    # The transformer still serves afterwards.
    assert _v1(model_server.transformer_url, model_server.settings.model_name, [ROSE]).status_code == 200


def test_the_largest_request_the_web_app_forwards_is_accepted(model_server):
    """100 passengers with the longest non-ASCII names and cabins the web app accepts (~62 KB as it
    receives them): forwarded with JSON escapes they weigh ~155 KB, under the transformer's cap."""
    from webapp.passenger import MAX_CABIN, MAX_NAME

    passenger = {**ROSE, "Name": "Dé, Mr. " + "é" * (MAX_NAME - 8), "Cabin": "é" * MAX_CABIN}
    r = _v1(model_server.transformer_url, model_server.settings.model_name, [passenger] * 100)
    assert len(r.request.body) > 64 * 1024
    assert r.status_code == 200, r.text[:300]


def test_metrics_on_the_same_port_as_kserve(model_server):
    _v1(model_server.transformer_url, model_server.settings.model_name, [ROSE])
    accuracy = model_server.trained.metadata["metrics"]["accuracy"]
    for url in (model_server.transformer_url, model_server.predictor_url):
        text = requests.get(f"{url}/metrics", timeout=10).text
        assert f'titanic_model_info{{version="{model_server.model_version}"}} 1.0' in text
        line = next(l for l in text.splitlines() if l.startswith("titanic_model_accuracy{"))
        assert abs(float(line.split()[-1]) - accuracy) < 1e-9
        assert "request_predict_seconds_bucket" in text  # KServe's own histogram
    assert "titanic_drift_detected" in requests.get(f"{model_server.transformer_url}/metrics", timeout=10).text


def test_concurrent_requests_are_answered_each_on_their_own(model_server):
    """Concurrent requests share validate/transform calls; answers and 400s must stay per request."""
    from concurrent.futures import ThreadPoolExecutor

    raw = random_passengers(24, seed=21)
    inst = instances(raw)
    expected = _expected(model_server.model, raw)
    name = model_server.settings.model_name

    def call(k: int):
        if k % 3 == 2:  # every third request is invalid at its own index 1
            return k, _v1(model_server.transformer_url, name, [inst[k], {**inst[k], "SibSp": -1}])
        return k, _v1(model_server.transformer_url, name, [inst[k]])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(24)))
    for k, r in answers:
        if k % 3 == 2:
            assert r.status_code == 400 and r.json()["errors"][0]["instance"] == 1, r.text
            assert r.json()["errors"][0]["field"] == "SibSp"
        else:
            assert r.status_code == 200, r.text
            assert abs(r.json()["predictions"][0]["probability"] - expected[k]) <= MAX_DELTA


def test_id_bearing_raw_instances_are_validated_per_request(model_server):
    """validate's duplicate-PassengerId rule applies within one request, never across coalesced ones."""
    from pipeline.serving.transformer import InvalidInstances, TitanicTransformer
    from pipeline.serving.artifacts import ModelArtifacts

    t = TitanicTransformer("titanic", ModelArtifacts("v", "test", model_server.trained.metadata, None))
    a, b = {**ROSE, "PassengerId": 5}, {**ROSE, "PassengerId": 5}
    first, second, third = t.features_of_many([[a], [b], [a, b]])
    assert len(first) == 1 and len(second) == 1
    assert isinstance(third, InvalidInstances) and third.errors[0]["instance"] == 1
    assert third.errors[0]["field"] == "PassengerId"


def test_transformer_speaks_v2_to_the_predictor(model_server, tmp_path):
    """--predictor_protocol v2: the transformer sends one tensor per feature and reads the V2 answer."""
    from tests.fixtures.serving import start_transformer

    transformer = start_transformer(model_server.trained, model_server.predictor, tmp_path,
                                    "--predictor_protocol", "v2")
    try:
        raw = random_passengers(30, seed=9)
        r = _v1(transformer.url, model_server.settings.model_name, instances(raw))
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == model_server.model_version
        np.testing.assert_allclose([p["probability"] for p in r.json()["predictions"]],
                                   _expected(model_server.model, raw), atol=MAX_DELTA)
        empty = requests.post(f"{transformer.url}/v2/models/{model_server.settings.model_name}/infer",
                              json={"inputs": []}, timeout=10)
        assert empty.status_code == 400
    finally:
        transformer.stop()
