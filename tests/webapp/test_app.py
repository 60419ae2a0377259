"""The app without a model server: pages, validation, 413, KServe down/hung, metrics."""

from __future__ import annotations

import json
import re
import time

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from webapp.passenger import FIELDS

from .conftest import VALID, make_app


def _form(**overrides):
    return {k: str(v) for k, v in {**VALID, **overrides}.items()}


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _field_errors(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-error-for="(\w+)">.*?<span>(.*?)</span>', html, re.DOTALL))


def test_form_page_has_every_field_and_the_compiled_css(down_app):
    client = down_app.test_client()
    html = client.get("/").get_data(as_text=True)
    for field in FIELDS:
        assert f'name="{field}"' in html
    assert 'href="/static/app.css"' in html
    assert "cdn.tailwindcss.com" not in html and "<script" not in html
    css = client.get("/static/app.css")
    assert css.status_code == 200, "run `make css` (the Tailwind build) before the tests"
    # Classes used only by the templates must be in the compiled file (the template scan worked).
    body = css.get_data(as_text=True)
    for cls in (".bg-emerald-600", ".bg-rose-600", ".lg\\:col-span-3", ".peer-checked\\:bg-sky-50"):
        assert cls in body, cls


@pytest.mark.parametrize(
    "field, value",
    [("Name", ""), ("Sex", "other"), ("Age", "200"), ("Pclass", "5"), ("SibSp", "-1"), ("Parch", "x"),
     ("Fare", "-1"), ("Embarked", "Z"), ("Cabin", "x" * 41), ("SibSp", "inf"), ("Fare", "Infinity"), ("Parch", "3000000000")],
)
def test_form_validation_message_next_to_the_field(down_app, field, value):
    response = down_app.test_client().post("/", data=_form(**{field: value}))
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    errors = _field_errors(html)
    assert list(errors) == [field]
    # The message sits after its own input and before the next field's input.
    positions = [html.index(f'name="{f}"') for f in FIELDS]
    at = FIELDS.index(field)
    error_at = html.index(f'data-error-for="{field}"')
    assert positions[at] < error_at < (positions[at + 1] if at + 1 < len(FIELDS) else len(html))
    if field not in ("Sex", "Pclass"):
        assert re.search(rf'id="{field}"[^>]*aria-invalid="true"', html, re.DOTALL)


def test_user_input_is_escaped(down_app):
    evil = '<script>alert("x")</script>'
    html = down_app.test_client().post("/", data=_form(Name=evil, Cabin=evil[:40], Age="x")).get_data(as_text=True)
    assert evil not in html
    assert "&lt;script&gt;" in html


def test_kserve_down_gives_503_page_and_counts_the_error(down_app):
    before = _sample("titanic_web_inference_errors_total", reason="unreachable")
    response = down_app.test_client().post("/", data=_form())
    assert response.status_code == 503
    html = response.get_data(as_text=True)
    assert "Prediction service unavailable" in html and "cannot be reached" in html
    assert "Traceback" not in html and "HTTPConnectionPool" not in html
    assert 'value="Cumings, Mrs. John Bradley (Florence Briggs Thayer)"' in html  # answers kept
    assert _sample("titanic_web_inference_errors_total", reason="unreachable") == before + 1


def test_kserve_down_gives_503_json(down_app):
    before = _sample("titanic_web_inference_errors_total", reason="unreachable")
    response = down_app.test_client().post("/api/predict", json=[VALID, VALID])
    assert response.status_code == 503
    assert response.json["reason"] == "unreachable"
    assert "cannot be reached" in response.json["error"]
    assert "Traceback" not in response.get_data(as_text=True)
    assert _sample("titanic_web_inference_errors_total", reason="unreachable") == before + 1


def test_kserve_hung_times_out_with_503(hung_url):
    app = make_app(hung_url, KSERVE_READ_TIMEOUT=0.3)
    before = _sample("titanic_web_inference_errors_total", reason="timeout")
    started = time.monotonic()
    response = app.test_client().post("/api/predict", json=VALID)
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json["reason"] == "timeout"
    assert _sample("titanic_web_inference_errors_total", reason="timeout") == before + 1
    # A read timeout is not retried (the prediction may have been computed): one wait only.
    assert elapsed < 0.3 * 2


def test_api_field_errors_name_instance_and_field(down_app):
    bad = {**VALID, "Age": "old"}
    response = down_app.test_client().post("/api/predict", json=[VALID, bad, {**VALID, "Pclass": 9}])
    assert response.status_code == 400
    assert response.json["errors"] == [
        {"instance": 1, "field": "Age", "message": "Age must be a number, got 'old'"},
        {"instance": 2, "field": "Pclass", "message": "Ticket class must be one of 1, 2, 3, got '9'"},
    ]


@pytest.mark.parametrize("field, value", [("SibSp", '"inf"'), ("SibSp", "Infinity"), ("Fare", "-Infinity"),
                                          ("Parch", "1e400"), ("Age", '"nan"')])
def test_api_non_finite_numbers_are_400_naming_the_field(down_app, field, value):
    """Python's JSON parser accepts Infinity and 1e400 (inf): they must be field errors, not a 500."""
    body = json.dumps({k: v for k, v in VALID.items() if k != field})[:-1] + f', "{field}": {value}}}'
    response = down_app.test_client().post("/api/predict", data=body, content_type="application/json")
    assert response.status_code == 400
    assert [(e["instance"], e["field"]) for e in response.json["errors"]] == [(0, field)]
    assert "must be a number" in response.json["errors"][0]["message"]


@pytest.mark.parametrize("body", [b"not json", b"[]", b"42", b'"x"', b"[1]"])
def test_api_rejects_bodies_that_are_not_passengers(down_app, body):
    response = down_app.test_client().post("/api/predict", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "error" in response.json


def test_api_413_for_oversized_body(down_app):
    response = down_app.test_client().post("/api/predict", data=b"[" + b" " * 70_000 + b"]",
                                           content_type="application/json")
    assert response.status_code == 413
    assert response.json == {"error": "The request body is too large."}


def test_api_413_for_too_many_passengers(down_app):
    response = down_app.test_client().post("/api/predict", json=[VALID] * 101)
    assert response.status_code == 413
    assert response.json["max_instances"] == 100


def test_form_413_is_an_html_page(down_app):
    response = down_app.test_client().post("/", data={"Name": "x" * 70_000})
    assert response.status_code == 413
    assert "text/html" in response.content_type and "too large" in response.get_data(as_text=True)


def test_unknown_api_path_is_json_404(down_app):
    response = down_app.test_client().get("/api/nope")
    assert response.status_code == 404 and "error" in response.json


def test_healthz_and_readyz_when_kserve_is_down(down_app):
    client = down_app.test_client()
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json == {"ready": False, "kserve": "unreachable"}


def test_metrics_names_and_labels(down_app):
    client = down_app.test_client()
    client.get("/")
    client.post("/api/predict", json=VALID)
    response = client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    outcomes = {s.labels["outcome"] for s in families["titanic_web_predictions"].samples if s.name.endswith("_total")}
    assert outcomes == {"survived", "died"}
    reasons = {s.labels["reason"] for s in families["titanic_web_inference_errors"].samples if s.name.endswith("_total")}
    assert {"unreachable", "timeout", "rejected", "server_error", "bad_response"} <= reasons
    histogram = families["titanic_web_request_duration_seconds"]
    assert histogram.type == "histogram"
    counts = {(s.labels["endpoint"], s.labels["method"]) for s in histogram.samples if s.name.endswith("_count")}
    assert {("views.predict", "GET"), ("api.predict", "POST")} <= counts


def test_invented_http_methods_share_one_metrics_label(down_app):
    """The method label is bounded: a client's made-up methods must not create new series."""
    client = down_app.test_client()
    invented = ["FOO", "BREW", "PROPFIND", "X" * 40, "get"]
    for method in invented:
        client.open("/", method=method)
    client.open("/", method="DELETE")
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))}
    methods = {s.labels["method"] for s in families["titanic_web_request_duration_seconds"].samples}
    assert not methods & set(invented)
    assert "other" in methods and "DELETE" in methods
    assert methods <= {"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "other"}


def test_client_retries_connection_errors_only(down_app):
    retry = down_app.extensions["kserve"].retries
    assert (retry.connect, retry.read, retry.status, retry.other) == (1, 0, 0, 0)


def test_unknown_kserve_protocol_is_refused_at_start():
    with pytest.raises(ValueError, match="v1 or v2"):
        make_app("http://127.0.0.1:1", KSERVE_PROTOCOL="v3")


def test_environment_overrides_web_config(monkeypatch):
    from webapp import create_app

    monkeypatch.setenv("KSERVE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("WEBAPP_KSERVE_READ_TIMEOUT", "2.5")
    monkeypatch.setenv("WEBAPP_MAX_INSTANCES", "7")
    app = create_app()
    assert app.config["SETTINGS"].kserve_url == "http://127.0.0.1:1"
    assert app.extensions["kserve"].timeout == (1.0, 2.5) and app.config["MAX_INSTANCES"] == 7
