"""The drift -> alert -> retrain loop with real processes only.

Passengers go through the web app (gunicorn, multiprocess metrics) to the KServe transformer and
predictor; a real Prometheus scrapes them with the jobs of the chart's ServiceMonitor and PodMonitor
and evaluates the chart's PrometheusRule (its `for` durations shortened through chart values);
a real Alertmanager routes with the kube-prometheus-stack values to the web app's relay, which
starts `titanic_training` on a real Airflow API server. Then the dashboard's queries are run
against the data this left in Prometheus.
"""

from __future__ import annotations

import math
import re
import secrets
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from tests import inputs
from tests.airflow_server import DAG_ID
from tests.conftest import make_settings, settings_env
from tests.fixtures.serving import start_predictor, start_transformer, wait_ready
from tests.monitoring import chart, promql, stack
from tests.monitoring.drift import in_distribution_rows, replay, shifted_rows
from tests.monitoring.test_relay import triggers
from tests.webapp.server import gunicorn

INTERVAL = "1s"  # scrape and rule evaluation
FOR = "4s"  # every alert's `for` (10m / 5m in the cluster)
# group_wait / group_interval / repeat_interval (30s / 5m / 6h in the cluster): a repeat within seconds
TIMING = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "3s"}
TEST_VALUES = {
    "serviceMonitor": {"interval": INTERVAL},
    "podMonitor": {"interval": INTERVAL},
    "prometheusRule": {"driftFor": FOR, "errorRatioFor": FOR, "serverDownFor": FOR},
}
BATCH = 100  # the web app's MAX_INSTANCES
FAILING_CALLS = 120  # against ~1,150 predictions: an error ratio of ~9%, over the 5% threshold


def firing(prometheus, alertname: str) -> list[dict]:
    return prometheus.query(f'ALERTS{{alertname="{alertname}", alertstate="firing"}}')


def relay_rows(settings) -> list[tuple]:
    """(alertname, dag_run_id, outcome) of every decision the relay recorded, oldest first."""
    return [row[:3] for row in triggers(settings)]


def grafana_expr(expr: str, namespace: str) -> str:
    """A panel query with its variables filled as Grafana does for this dashboard's range."""
    return expr.replace("$namespace", namespace).replace("$__rate_interval", "2m").replace("$__range", "5m")


def test_pinned_prometheus_and_alertmanager_are_those_kube_prometheus_stack_ships():
    pins = inputs.versions()
    kps = inputs.path(inputs.CHARTS) / "kube-prometheus-stack"
    assert yaml.safe_load((kps / "Chart.yaml").read_text())["version"] == pins["KPS_CHART_VERSION"]
    values = yaml.safe_load((kps / "values.yaml").read_text())
    assert values["prometheus"]["prometheusSpec"]["image"]["tag"].removesuffix("-distroless") == pins["PROMETHEUS_VERSION"]
    assert values["alertmanager"]["alertmanagerSpec"]["image"]["tag"] == pins["ALERTMANAGER_VERSION"]
    major, minor, patch = pins["PROMETHEUS_VERSION"].removeprefix("v").split(".")
    assert pins["PROMETHEUS_MODULE_VERSION"] == f"v0.{major}{int(minor):02d}.{patch}"


@pytest.fixture
def loop_dir():
    with tempfile.TemporaryDirectory(prefix="titanic-loop-") as directory:
        yield Path(directory)


@pytest.fixture
def model_servers(trained_model, loop_dir):
    """Predictor and transformer of this test alone (it kills the predictor; the drift window is its own)."""
    predictor = start_predictor(trained_model, loop_dir, wait=False)  # both start at once: seconds saved
    servers = {"predictor": predictor}
    try:
        servers["transformer"] = start_transformer(trained_model, predictor, loop_dir)
        wait_ready(predictor, trained_model.settings.model_name)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.mark.integration
@pytest.mark.skipif(not (stack.PROMETHEUS.exists() and stack.ALERTMANAGER.exists()),
                    reason="bin/prometheus or bin/alertmanager missing: run `make prometheus alertmanager`")
def test_drift_alert_retrains_and_outages_alert_and_resolve(services, trained_model, airflow, model_servers,
                                                            loop_dir):
    started = time.monotonic()
    objects = chart.render(TEST_VALUES)
    rule = chart.prometheus_rule(objects)
    (drift_rule,) = [r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "TitanicFeatureDrift"]
    threshold = float(re.search(r">\s*([0-9.]+)\s*$", drift_rule["expr"]).group(1))

    token = secrets.token_urlsafe(24)
    settings = make_settings(services, uuid.uuid4().hex[:10], kserve_url=model_servers["transformer"].url,
                             alert_webhook_token=token, airflow_api_url=airflow.url,
                             airflow_username=airflow.username, airflow_password=airflow.password,
                             retrain_cooldown_seconds=600)
    secrets_dir = loop_dir / "secrets"
    token_file = stack.token_file(secrets_dir)
    token_file.parent.mkdir(parents=True)
    token_file.write_text(token)
    runs_before = {r["dag_run_id"] for r in airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns", limit=100)["dag_runs"]}

    with gunicorn(settings_env(settings), workers=2) as web:
        am = stack.start_alertmanager(loop_dir, stack.alertmanager_config(web, secrets_dir, TIMING))
        servers = [am]
        try:
            jobs = stack.scrape_configs(objects, web.removeprefix("http://"),
                                        {c: s.url.removeprefix("http://") for c, s in model_servers.items()})
            prometheus = stack.start_prometheus(loop_dir, chart.write_rule_groups(rule, loop_dir), jobs, am, INTERVAL)
            servers.append(prometheus)
            _loop(prometheus, am, web, settings, airflow, runs_before, model_servers, trained_model, loop_dir,
                  threshold)
            _dashboard(prometheus, objects, threshold)
        finally:
            for server in servers:
                server.stop()
    print(f"loop test body: {time.monotonic() - started:.0f}s")


def _loop(prometheus, am, web, settings, airflow, runs_before, model_servers, trained_model, loop_dir, threshold):
    predict = f"{web}/api/predict"
    stack.wait_for(lambda: len(prometheus.query("up == 1")) == 3, "all three targets up", 30)

    # 1. The training passengers: PSI is exported and scraped, stays under the threshold, nothing fires.
    normal = in_distribution_rows()
    assert replay(predict, normal, batch=BATCH) == len(normal)
    stack.wait_for(lambda: prometheus.query('titanic_feature_drift_psi{namespace="mlops"}'),
                   "PSI scraped from the transformer", 20)
    time.sleep(6)  # FOR plus a scrape and an evaluation: a rule that fires on normal traffic is firing by now
    assert prometheus.query('ALERTS{alertname="TitanicFeatureDrift"}') == []
    psi = {s["metric"]["feature"]: float(s["value"][1]) for s in prometheus.query("titanic_feature_drift_psi")}
    assert psi and max(psi.values()) < threshold, psi
    assert relay_rows(settings) == []

    # 2. The shifted stream: PSI crosses, the alert fires, Alertmanager calls the relay, Airflow gets the run.
    shifted = shifted_rows(300)
    assert replay(predict, shifted, batch=BATCH) == len(shifted)
    alerts = stack.wait_for(lambda: firing(prometheus, "TitanicFeatureDrift"), "TitanicFeatureDrift firing", 30)
    assert {a["metric"]["feature"] for a in alerts} <= {f for f in psi if "fare" in f.lower() or "class" in f.lower()}
    rows = stack.wait_for(lambda: relay_rows(settings), "the relay notified by Alertmanager", 20)
    ((alertname, run_id, outcome),) = rows[:1]
    assert (alertname, outcome) == ("TitanicFeatureDrift", "triggered"), rows
    new = {r["dag_run_id"]: r for r in airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns", limit=100)["dag_runs"]
           if r["dag_run_id"] not in runs_before}
    assert list(new) == [run_id]
    conf = new[run_id]["conf"]
    assert (conf["reason"], conf["alertname"], conf["triggered_by"]) == ("alert", "TitanicFeatureDrift",
                                                                        "alertmanager-relay")
    assert conf["group_key"].endswith('{alertname="TitanicFeatureDrift", namespace="mlops"}'), conf["group_key"]
    assert {a["labels"]["feature"] for a in conf["alerts"]} <= {a["metric"]["feature"] for a in alerts}
    # Alertmanager repeats the notification (repeat_interval): recorded as a duplicate, no second run.
    rows = stack.wait_for(lambda: (rows := relay_rows(settings)) and "duplicate" in [r[2] for r in rows] and rows,
                          "a repeated notification recorded as duplicate", 20)
    assert [r[2] for r in rows].count("triggered") == 1, rows
    assert {r[2] for r in rows} <= {"triggered", "duplicate", "cooldown"}, rows
    time.sleep(2)
    assert [r["dag_run_id"] for r in airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns", limit=100)["dag_runs"]
            if r["dag_run_id"] not in runs_before] == [run_id]  # the cooldown holds

    # 3. The predictor dies and the calls fail: both serving alerts fire (and reach Alertmanager).
    predictor = model_servers["predictor"]
    predictor.proc.kill()
    predictor.proc.wait()
    for row in normal[:FAILING_CALLS]:
        assert requests.post(predict, json=row, timeout=30).status_code == 503
    for name in ("TitanicModelServerDown", "TitanicInferenceErrorRatioHigh"):
        stack.wait_for(lambda: firing(prometheus, name), f"{name} firing", 30)
    down = stack.wait_for(lambda: am.get("/api/v2/alerts", filter='alertname="TitanicModelServerDown"'),
                          "TitanicModelServerDown in Alertmanager", 10)
    assert down[0]["receivers"] == [{"name": "null"}]  # routed away from the relay
    assert {r[0] for r in relay_rows(settings)} == {"TitanicFeatureDrift"}

    # 4. Recovery: the predictor back on its port, good traffic again; both resolve.
    model_servers["predictor"] = start_predictor(trained_model, loop_dir, port=predictor.port)
    for _ in range(2):
        assert replay(predict, normal, batch=BATCH) == len(normal)
    for name in ("TitanicModelServerDown", "TitanicInferenceErrorRatioHigh"):
        stack.wait_for(lambda: not prometheus.query(f'ALERTS{{alertname="{name}"}}'), f"{name} resolved", 30)
    # Drift notifications kept coming all along: still the one run.
    assert [r["dag_run_id"] for r in airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns", limit=100)["dag_runs"]
            if r["dag_run_id"] not in runs_before] == [run_id]


def _dashboard(prometheus, objects, threshold):
    """Every panel query returns a series from the data the loop left; the threshold line is the rule's."""
    (board,) = chart.dashboards(objects).values()
    (var,) = [v for v in board["templating"]["list"] if v["name"] == "namespace"]
    (metric,) = promql.metric_names(var["query"]["query"])
    namespaces = prometheus.get("/api/v1/label/namespace/values", **{"match[]": metric})["data"]
    assert namespaces == [chart.NAMESPACE]
    panels = [p for row in board["panels"] for p in [row, *row.get("panels", [])]]
    empty = []
    for panel in panels:
        for target in panel.get("targets", []):
            for namespace in (namespaces[0], var["allValue"]):  # the namespace picked, and "All"
                result = prometheus.query(grafana_expr(target["expr"], namespace))
                if not any(math.isfinite(float(s["value"][1])) for s in result):
                    empty.append((panel["title"], target.get("legendFormat"), namespace))
    assert empty == [], empty
    (panel,) = [p for p in panels if p["title"] == "Drift PSI per feature"]
    (line,) = [t for t in panel["targets"] if t["legendFormat"] == "alert threshold"]
    assert [float(s["value"][1]) for s in prometheus.query(line["expr"])] == [threshold]
