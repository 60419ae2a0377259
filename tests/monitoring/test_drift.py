"""Drift end to end at process level: passengers through the real transformer, PSI scraped from its
/metrics, and the TitanicFeatureDrift rule of the rendered chart evaluated on them by promtool."""

from __future__ import annotations

import subprocess

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.serving import start_transformer
from tests.monitoring import chart
from tests.monitoring.drift import in_distribution_rows, predict_url, replay, shifted_rows

pytestmark = pytest.mark.integration

BATCH = 25


def scrape_psi(transformer_url: str) -> dict[str, float]:
    text = requests.get(f"{transformer_url}/metrics", timeout=10).text
    return {
        s.labels["feature"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "titanic_feature_drift_psi"
        for s in family.samples
    }


def promtool_fires(rule: dict, psi: dict[str, float], expected: set[str], directory) -> None:
    """promtool evaluates the rendered rules on the scraped PSI values, held for 25 minutes (longer
    than driftFor), and must find TitanicFeatureDrift firing for exactly the `expected` features."""
    directory.mkdir()
    rules = chart.write_rule_groups(rule, directory)
    firing = 'ALERTS{alertname="TitanicFeatureDrift", alertstate="firing"}'
    test = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'titanic_feature_drift_psi{{namespace="{chart.NAMESPACE}", feature="{name}"}}',
                        "values": f"{value!r}x30",
                    }
                    for name, value in psi.items()
                ],
                "promql_expr_test": [
                    {
                        "expr": f"count by (feature) ({firing})",
                        "eval_time": "25m",
                        "exp_samples": [{"labels": f'{{feature="{f}"}}', "value": 1} for f in sorted(expected)],
                    }
                ],
            }
        ],
    }
    (directory / "drift_test.yaml").write_text(yaml.safe_dump(test))
    result = subprocess.run(
        [chart.promtool(), "test", "rules", "drift_test.yaml"], cwd=directory, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def rule() -> dict:
    return chart.prometheus_rule(chart.render())


def threshold(rule: dict) -> float:
    (record,) = [r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("record") == "titanic:feature_drift_psi:alert_threshold"]
    return float(record["expr"].removeprefix("vector(").removesuffix(")"))


@pytest.fixture
def transformer(model_server, tmp_path):
    """A transformer of our own in front of the session's predictor: its drift window is ours alone."""
    server = start_transformer(model_server.trained, model_server.predictor, tmp_path)
    yield server
    server.stop()


def test_drift_alert_fires_only_for_the_shifted_stream(transformer, rule, tmp_path):
    url = predict_url(transformer.url)
    limit = threshold(rule)

    # Every training passenger: more than the transformer's window, so it holds only these.
    normal = in_distribution_rows()
    assert replay(url, normal, batch=BATCH) == len(normal)
    psi_normal = scrape_psi(transformer.url)
    assert psi_normal, "no PSI exported after a full window of passengers"
    assert max(psi_normal.values()) < limit, psi_normal
    promtool_fires(rule, psi_normal, set(), tmp_path / "normal")

    # The same passengers shifted, batch by batch, until some feature's PSI crosses the threshold.
    shifted = shifted_rows()
    sent, psi_shifted = 0, psi_normal
    while max(psi_shifted.values()) <= limit:
        assert sent < len(shifted), f"PSI never crossed {limit}: {psi_shifted}"
        sent += replay(url, shifted[sent : sent + BATCH], batch=BATCH)
        psi_shifted = scrape_psi(transformer.url)
    print(f"max PSI {max(psi_normal.values()):.3f} for the training passengers; crossed {limit} after {sent} shifted ones: {psi_shifted}")
    fired = {f for f, v in psi_shifted.items() if v > limit}
    # The shifted columns are the ones that drift: fares and class.
    assert fired <= {f for f in psi_shifted if "fare" in f.lower() or "class" in f.lower()}, psi_shifted
    promtool_fires(rule, psi_shifted, fired, tmp_path / "shifted")

    # The model server's own verdict agrees.
    text = requests.get(f"{transformer.url}/metrics", timeout=10).text
    detected = [s.value for fam in text_string_to_metric_families(text) if fam.name == "titanic_drift_detected" for s in fam.samples]
    assert detected == [1.0]
