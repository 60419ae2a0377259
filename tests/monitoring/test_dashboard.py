"""The Grafana dashboard: sidecar ConfigMap, datasource variable, and queries that only use metric
names the running web app and model server really export."""

from __future__ import annotations

import pytest
import requests

from tests.monitoring import chart, promql
from tests.monitoring.drift import in_distribution_rows, predict_url, replay
from tests.webapp.server import gunicorn

# `up` is written by Prometheus itself for every scrape target, not by our code.
PROMETHEUS_OWN = {"up"}

REQUIRED_PANELS = {
    "Predictions per second by outcome",
    "Web app latency p50 / p95 / p99",
    "Model server latency p50 / p95 / p99",
    "Inference error ratio",
    "Requests shed (web app overloaded)",
    "Drift PSI per feature",
    "Drift detected",
    "Production model version",
    "Model accuracy",
}


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return chart.render()


@pytest.fixture(scope="module")
def dashboard(rendered) -> dict:
    boards = chart.dashboards(rendered)
    assert list(boards) == ["titanic.json"]
    return boards["titanic.json"]


def _panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_dashboard_configmap_for_the_grafana_sidecar(rendered, dashboard):
    (cm,) = [o for o in rendered if o["kind"] == "ConfigMap" and "titanic.json" in o.get("data", {})]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["uid"] == "titanic-mlops"
    assert REQUIRED_PANELS <= {p["title"] for p in _panels(dashboard)}


def test_every_query_uses_the_datasource_variable(dashboard):
    (var,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert var["query"] == "prometheus"
    ref = "${%s}" % var["name"]
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == ref, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ref, panel["title"]


def test_drift_panel_draws_the_alert_threshold(dashboard, rendered):
    """The threshold line is the recording rule the PrometheusRule defines from the same value."""
    (panel,) = [p for p in _panels(dashboard) if p["title"] == "Drift PSI per feature"]
    exprs = {t["legendFormat"]: t["expr"] for t in panel["targets"]}
    assert "titanic_feature_drift_psi" in exprs["{{feature}}"]
    assert promql.metric_names(exprs["alert threshold"]) == {"titanic:feature_drift_psi:alert_threshold"}
    records = {r["record"]: r["expr"] for g in chart.prometheus_rule(rendered)["spec"]["groups"] for r in g["rules"] if "record" in r}
    assert records["titanic:feature_drift_psi:alert_threshold"] == "vector(0.2)"


@pytest.fixture(scope="module")
def exported(model_server) -> set[str]:
    """Sample names on /metrics of the web app (gunicorn, as in the image), transformer and predictor,
    after real predictions went through all three (labelled series appear at their first use)."""
    # Straight to the transformer: more rows than the drift window's minimum, so PSI is exported.
    rows = in_distribution_rows(150)
    assert replay(predict_url(model_server.transformer_url), rows, batch=50) == len(rows)
    with gunicorn({"KSERVE_URL": model_server.transformer_url}, workers=1) as web:
        response = requests.post(f"{web}/api/predict", json=rows[0], timeout=30)
        assert response.status_code == 200, response.text
        names = promql.exposed_names(f"{web}/metrics")
    names |= promql.exposed_names(f"{model_server.transformer_url}/metrics")
    names |= promql.exposed_names(f"{model_server.predictor_url}/metrics")
    return names


@pytest.mark.integration
def test_dashboard_queries_use_only_exported_metric_names(dashboard, rendered, exported):
    recorded = {r["record"] for g in chart.prometheus_rule(rendered)["spec"]["groups"] for r in g["rules"] if "record" in r}
    used = set()
    for expr in promql.dashboard_exprs(dashboard):
        names = promql.metric_names(expr)
        assert names, f"no metric in {expr!r}"
        used |= names
    assert used - exported - recorded == set()
    # The contract's names are all on the dashboard.
    assert {
        "titanic_web_predictions_total",
        "titanic_web_request_duration_seconds_bucket",
        "titanic_web_inference_errors_total",
        "titanic_web_shed_requests_total",
        "titanic_feature_drift_psi",
        "titanic_drift_detected",
        "titanic_model_info",
        "titanic_model_accuracy",
        "request_predict_seconds_bucket",
    } <= used


@pytest.mark.integration
def test_alert_rules_use_only_exported_metric_names(rendered, exported):
    used = set()
    for group in chart.prometheus_rule(rendered)["spec"]["groups"]:
        for rule in group["rules"]:
            used |= promql.metric_names(rule["expr"])
    assert used - exported - PROMETHEUS_OWN == set()


def test_dashboard_can_be_disabled():
    assert chart.dashboards(chart.render({"grafanaDashboard": {"enabled": False}})) == {}
