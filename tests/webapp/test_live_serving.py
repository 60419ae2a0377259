"""The web app against the real KServe transformer + predictor processes (serving fixture)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from prometheus_client import REGISTRY

from pipeline import features
from tests.conftest import TRAIN_CSV
from webapp import api, views
from webapp.passenger import FIELDS

from .conftest import VALID, make_app

pytestmark = pytest.mark.integration


@pytest.fixture
def app(model_server):
    return make_app(model_server.transformer_url)


def _passengers(n: int) -> list[dict]:
    frame = pd.read_csv(TRAIN_CSV).sample(n=n, random_state=7)[list(FIELDS)]
    frame = frame.astype(object).where(frame.notna(), None)
    rows = frame.to_dict("records")
    rows.append({**VALID, "Age": None, "Fare": None, "Embarked": None, "Cabin": None})  # unknowns imputed
    return rows


def _expected(model_server, instances: list[dict]) -> np.ndarray:
    """The model's own predict_proba on the same raw passengers (the training feature code)."""
    x = features.transform(pd.DataFrame(instances, columns=list(FIELDS)))
    return model_server.model.predict_proba(x)[:, 1]


def test_api_predictions_match_the_models_predict_proba(app, model_server):
    instances = _passengers(30)
    response = app.test_client().post("/api/predict", json=instances)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["model_version"] == model_server.model_version
    got = np.array([p["probability"] for p in body["predictions"]])
    expected = _expected(model_server, instances)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    decided = np.abs(expected - 0.5) > 1e-5  # ONNX and sklearn may split an exact 0.5 tie differently
    assert all(p["survived"] == int(e > 0.5) for p, e, d in zip(body["predictions"], expected, decided) if d)


def test_api_accepts_one_passenger_object(app, model_server):
    response = app.test_client().post("/api/predict", json=VALID)
    assert response.status_code == 200
    (prediction,) = response.json["predictions"]
    assert prediction["probability"] == pytest.approx(float(_expected(model_server, [VALID])[0]), abs=1e-5)


def test_form_shows_outcome_probability_and_version_and_counts_it(app, model_server):
    expected = float(_expected(model_server, [VALID])[0])
    outcome = "survived" if expected > 0.5 else "died"
    before = REGISTRY.get_sample_value("titanic_web_predictions_total", {"outcome": outcome}) or 0
    response = app.test_client().post("/", data={k: str(v) for k, v in VALID.items()})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f'data-survived="{int(expected > 0.5)}"' in html
    assert re.search(r'id="result-label">(Survived|Did not survive)<', html)
    assert f'id="result-probability">{expected * 100:.1f}%<' in html
    assert f'id="result-version">{model_server.model_version}<' in html
    assert REGISTRY.get_sample_value("titanic_web_predictions_total", {"outcome": outcome}) == before + 1


def test_api_explain_adds_up_to_the_api_prediction_of_the_same_passengers(app, model_server):
    instances = _passengers(30)
    client = app.test_client()
    explained, predicted = client.post("/api/explain", json=instances), client.post("/api/predict", json=instances)
    assert explained.status_code == predicted.status_code == 200, explained.json
    assert explained.json["model_version"] == predicted.json["model_version"] == model_server.model_version
    expected = _expected(model_server, instances)
    for e, p, x in zip(explained.json["explanations"], predicted.json["predictions"], expected, strict=True):
        assert set(e["contributions"]) == set(features.FEATURE_COLUMNS)
        assert e["base"] + sum(e["contributions"].values()) == pytest.approx(e["probability"], abs=1e-6)
        assert e["probability"] == pytest.approx(x, abs=1e-9)  # the same sklearn forest
        assert e["probability"] == pytest.approx(p["probability"], abs=1e-5)  # the ONNX answer of :predict
        if abs(x - 0.5) > 1e-5:
            assert e["survived"] == p["survived"] == int(x > 0.5)
    bad = client.post("/api/explain", json={**VALID, "Age": 150})
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "Age"


def test_form_shows_what_moved_the_prediction_in_plain_words(app, model_server):
    woman = {**VALID, "Sex": "female", "Pclass": 1, "Name": "Allen, Miss. Elisabeth Walton"}
    html = app.test_client().post("/", data={k: str(v) for k, v in woman.items() if v is not None}).get_data(as_text=True)
    shown = re.findall(r'data-factor="(\w+)" data-points="(-?[\d.]+)"', html)
    assert len(shown) == 5 and [abs(float(p)) for _, p in shown] == sorted((abs(float(p)) for _, p in shown), reverse=True)
    points = dict(shown)
    assert float(points["Sex"]) > 0 and re.search(r">female</span>\s*<span[^>]*>\+\d+ points<", html)
    assert "1st class" in html or "Pclass" not in points


def test_readyz_when_the_model_is_loaded(app):
    response = app.test_client().get("/readyz")
    assert response.status_code == 200 and response.json == {"ready": True, "kserve": "ready"}


def _no_local_validation(raw, instance=0):
    """Pass values through unchecked, so the transformer's own 400 is what the user sees."""
    return {f: raw.get(f) for f in FIELDS}, []


def test_transformer_field_errors_are_shown_next_to_the_field(app, monkeypatch):
    monkeypatch.setattr(views, "validate_form", lambda form: _no_local_validation(form))
    before = REGISTRY.get_sample_value("titanic_web_inference_errors_total", {"reason": "rejected"}) or 0
    response = app.test_client().post("/", data={**{k: str(v) for k, v in VALID.items()}, "Age": "very old"})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert re.search(r'data-error-for="Age">.*?<span>[^<]*\S[^<]*</span>', html, re.DOTALL), html[-3000:]
    assert REGISTRY.get_sample_value("titanic_web_inference_errors_total", {"reason": "rejected"}) == before + 1


def test_transformer_field_errors_in_the_api_name_instance_and_field(app, monkeypatch):
    monkeypatch.setattr(api, "validate_many", lambda raws: ([_no_local_validation(r)[0] for r in raws], []))
    response = app.test_client().post("/api/predict", json=[VALID, {**VALID, "Pclass": 7}])
    assert response.status_code == 400
    errors = response.json["errors"]
    assert {"instance": 1, "field": "Pclass"} in [{k: e[k] for k in ("instance", "field")} for e in errors]


def test_server_timing_separates_model_server_and_web_time(app):
    response = app.test_client().post("/api/predict", json=VALID)
    timing = dict(part.strip().split(";dur=") for part in response.headers["Server-Timing"].split(","))
    assert set(timing) == {"kserve", "web"}
    assert float(timing["kserve"]) > 0 and float(timing["web"]) >= 0


def test_open_inference_protocol_v2_gives_the_same_predictions(model_server):
    instances = _passengers(10)
    v1 = make_app(model_server.transformer_url).test_client().post("/api/predict", json=instances)
    v2_app = make_app(model_server.transformer_url, KSERVE_PROTOCOL="v2")
    v2 = v2_app.test_client().post("/api/predict", json=instances)
    assert v2.status_code == 200, v2.json
    assert v2.json["model_version"] == model_server.model_version
    np.testing.assert_allclose([p["probability"] for p in v2.json["predictions"]],
                               [p["probability"] for p in v1.json["predictions"]], atol=1e-9)
    assert [p["survived"] for p in v2.json["predictions"]] == [p["survived"] for p in v1.json["predictions"]]
    assert v2_app.test_client().get("/readyz").status_code == 200
