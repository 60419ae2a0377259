"""The PrometheusRule `titanic`: rendered by helm, checked and unit-tested by promtool."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.monitoring import chart

REQUIRED_ALERTS = {
    "TitanicFeatureDrift",
    "TitanicInferenceErrorRatioHigh",
    "TitanicModelServerDown",
    "TitanicNoPredictionsServed",
    "TitanicWebAppOverloaded",
}


@pytest.fixture(scope="module")
def rule() -> dict:
    return chart.prometheus_rule(chart.render())


def alerts(rule: dict) -> dict[str, dict]:
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}


def test_rule_object_and_required_alerts(rule):
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == "titanic"
    found = alerts(rule)
    assert REQUIRED_ALERTS <= set(found)
    for name, alert in found.items():
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, name
        # An operator must be told what happened and what to do.
        assert alert["annotations"]["summary"].strip(), name
        assert len(alert["annotations"]["description"]) > 80, name
        assert "kubectl" in alert["annotations"]["description"] or "Airflow" in alert["annotations"]["description"], name


def test_promtool_check_rules(rule, tmp_path):
    path = chart.write_rule_groups(rule, tmp_path)
    result = subprocess.run([chart.promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests(rule, tmp_path):
    chart.write_rule_groups(rule, tmp_path)
    shutil.copy(chart.ALERTS_TEST, tmp_path / "alerts_test.yaml")
    result = subprocess.run(
        [chart.promtool(), "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_case(rule):
    """Adding an alert without promtool cases for both directions fails here."""
    cases = yaml.safe_load(chart.ALERTS_TEST.read_text())["tests"]
    fires, silent = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else silent).add(check["alertname"])
    names = set(alerts(rule))
    assert names - fires == set(), "alerts without a case that fires them"
    assert names - silent == set(), "alerts without a case where they stay silent"


def test_thresholds_come_from_values(tmp_path):
    """A stricter threshold from values reaches the drift expression and its recording rule."""
    rule = chart.prometheus_rule(
        chart.render({"prometheusRule": {"driftPsiThreshold": 0.5, "driftFor": "30m"}})
    )
    drift = alerts(rule)["TitanicFeatureDrift"]
    assert drift["expr"].rstrip().endswith("> 0.5")
    assert drift["for"] == "30m"
    recorded = [r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("record")]
    assert {"record": "titanic:feature_drift_psi:alert_threshold", "expr": "vector(0.5)"} in recorded
    # PSI 0.4 (above the default 0.2) stays silent; 0.6 fires only after the longer 30m.
    chart.write_rule_groups(rule, tmp_path)
    firing = 'ALERTS{alertname="TitanicFeatureDrift", alertstate="firing"}'
    (tmp_path / "t.yaml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["rules.yaml"],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [
                            {"series": 'titanic_feature_drift_psi{namespace="mlops", feature="Fare"}', "values": "0.4x60"},
                            {"series": 'titanic_feature_drift_psi{namespace="mlops", feature="Age"}', "values": "0.6x60"},
                        ],
                        "promql_expr_test": [
                            {"expr": f"count({firing})", "eval_time": "20m", "exp_samples": []},
                            {
                                "expr": f"count by (feature) ({firing})",
                                "eval_time": "45m",
                                "exp_samples": [{"labels": '{feature="Age"}', "value": 1}],
                            },
                        ],
                    }
                ],
            }
        )
    )
    result = subprocess.run([chart.promtool(), "test", "rules", "t.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_can_be_disabled():
    objects = chart.render({"prometheusRule": {"enabled": False}})
    assert not [o for o in objects if o["kind"] == "PrometheusRule"]
