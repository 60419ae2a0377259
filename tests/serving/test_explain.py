"""`:explain` through the real KServe model servers: exact, additive contributions per input feature."""

from __future__ import annotations

import numpy as np
import requests

from pipeline import features
from tests.serving.passengers import instances, random_passengers, train_rows

ADDITIVE = 1e-6  # issue 14: base + sum(contributions) == probability within this
PARITY = 1e-5  # the predictor's probabilities come from ONNX Runtime (float32 thresholds), explanations from sklearn


def _call(url: str, name: str, verb: str, rows: list[dict]) -> dict:
    r = requests.post(f"{url}/v1/models/{name}:{verb}", json={"instances": rows}, timeout=60)
    assert r.status_code == 200, r.text[:500]
    return r.json()


def _check(model_server, raw) -> None:
    name, url = model_server.settings.model_name, model_server.transformer_url
    for start in range(0, len(raw), 100):  # the transformer's cap of instances per request
        rows = instances(raw.iloc[start:start + 100])
        explained = _call(url, name, "explain", rows)
        predicted = _call(url, name, "predict", rows)
        assert explained["model_version"] == predicted["model_version"] == model_server.model_version
        for e, p in zip(explained["explanations"], predicted["predictions"], strict=True):
            assert set(e["contributions"]) == set(features.FEATURE_COLUMNS)  # input features, not encoder columns
            assert abs(e["base"] + sum(e["contributions"].values()) - e["probability"]) <= ADDITIVE
            assert abs(e["probability"] - p["probability"]) <= PARITY


def test_explanations_add_up_to_the_prediction_for_every_train_row(model_server):
    _check(model_server, train_rows())


def test_explanations_add_up_for_random_passengers(model_server):
    _check(model_server, random_passengers(500, seed=11))


def test_explanation_names_what_drives_a_prediction(model_server):
    """A first-class woman and a third-class man: Sex pushes them apart, with the same base for both."""
    woman = {"Name": "Dewitt Bukater, Miss. Rose", "Sex": "female", "Age": 17, "Pclass": 1, "SibSp": 0, "Parch": 1,
             "Fare": 211.5, "Embarked": "S", "Cabin": "B58"}
    man = {**woman, "Name": "Dawson, Mr. Jack", "Sex": "male", "Age": 20, "Pclass": 3, "Parch": 0, "Fare": 7.25,
           "Cabin": ""}
    w, m = _call(model_server.transformer_url, model_server.settings.model_name, "explain", [woman, man])["explanations"]
    assert w["base"] == m["base"] and 0 < w["base"] < 1
    assert w["contributions"]["Sex"] > 0 > m["contributions"]["Sex"]
    assert w["probability"] > 0.5 > m["probability"]


def test_explain_on_the_predictor_directly_takes_feature_vectors(model_server):
    raw = random_passengers(3, seed=5)
    from pipeline import schema
    X = features.transform(schema.validate(raw, require_id=False).valid)
    rows = [{c: (None if isinstance(v, float) and np.isnan(v) else v) for c, v in row.items()}
            for row in X[features.FEATURE_COLUMNS].to_dict("records")]
    body = _call(model_server.predictor_url, model_server.settings.model_name, "explain", rows)
    expected = model_server.model.predict_proba(X)[:, 1]
    got = np.array([e["probability"] for e in body["explanations"]])
    assert np.abs(got - expected).max() <= ADDITIVE  # the same sklearn forest: exact


def test_explain_rejects_a_bad_instance_naming_the_field(model_server):
    r = requests.post(f"{model_server.transformer_url}/v1/models/{model_server.settings.model_name}:explain",
                      json={"instances": [{"Sex": "female", "Pclass": 7}]}, timeout=30)
    assert r.status_code == 400 and "Pclass" in r.text
