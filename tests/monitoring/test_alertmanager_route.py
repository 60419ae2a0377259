"""The Alertmanager route of charts/values/kube-prometheus-stack.yaml reaches the web app's relay.

The route tree is walked with Alertmanager's rules (first matching child wins, otherwise the
parent's receiver) and its target is checked against the rendered chart and the relay's own URL
map, in milliseconds; test_loop.py routes real alerts through a real Alertmanager with this config.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

import pytest
import yaml

from tests.monitoring import chart

VALUES = chart.REPO / "charts" / "values" / "kube-prometheus-stack.yaml"
_MATCHER = re.compile(r'^\s*(\w+)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*$')


@pytest.fixture(scope="module")
def kps() -> dict:
    return yaml.safe_load(VALUES.read_text())


def _matches(matcher: str, labels: dict[str, str]) -> bool:
    name, op, value = _MATCHER.match(matcher).groups()
    actual = labels.get(name, "")
    return {
        "=": actual == value,
        "!=": actual != value,
        "=~": re.fullmatch(value, actual) is not None,
        "!~": re.fullmatch(value, actual) is None,
    }[op]


def receiver_for(route: dict, labels: dict[str, str]) -> str:
    """The receiver Alertmanager picks for an alert with `labels` (no `continue` in our tree)."""
    for child in route.get("routes", []):
        assert not child.get("continue"), "the walk below assumes no continue"
        if all(_matches(m, labels) for m in child.get("matchers", [])):
            return receiver_for({"receiver": child.get("receiver", route["receiver"]), **child}, labels)
    return route["receiver"]


def test_drift_goes_to_the_relay_everything_else_to_null(kps):
    route = kps["alertmanager"]["config"]["route"]
    assert route["receiver"] == "null"
    assert receiver_for(route, {"alertname": "TitanicFeatureDrift", "namespace": "mlops", "feature": "Fare"}) == "titanic-retrain"
    for other in ("TitanicModelServerDown", "TitanicInferenceErrorRatioHigh", "Watchdog", "KubePodCrashLooping"):
        assert receiver_for(route, {"alertname": other, "namespace": "mlops"}) == "null", other
    names = [r["name"] for r in kps["alertmanager"]["config"]["receivers"]]
    assert "null" in names and "titanic-retrain" in names


def test_webhook_targets_the_relay_with_a_bearer_token_from_a_mounted_secret(kps):
    (receiver,) = [r for r in kps["alertmanager"]["config"]["receivers"] if r["name"] == "titanic-retrain"]
    (hook,) = receiver["webhook_configs"]
    url = urlparse(hook["url"])
    # The chart's web app Service in the release namespace, on its Service port.
    objects = chart.render()
    (service,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "titanic-webapp"]
    port = url.port or 80
    assert url.hostname == f"titanic-webapp.{chart.NAMESPACE}.svc.cluster.local"
    assert port in [p["port"] for p in service["spec"]["ports"]]
    # The path is the relay's route in the web app.
    from webapp import create_app

    app = create_app({"TESTING": True, "SETTINGS": None})
    rules = {r.rule: r.methods for r in app.url_map.iter_rules()}
    assert "POST" in rules[url.path]
    # Bearer token read from a file of a Secret the Alertmanager pod mounts; never inline.
    auth = hook["http_config"]["authorization"]
    assert auth.get("type", "Bearer") == "Bearer" and "credentials" not in auth
    secret = auth["credentials_file"].removeprefix("/etc/alertmanager/secrets/").split("/")[0]
    assert secret in kps["alertmanager"]["alertmanagerSpec"]["secrets"]
    # Resolved notifications would only be ignored by the relay.
    assert hook["send_resolved"] is False
