"""The image's command (gunicorn, 2 workers): metrics from every worker add up on /metrics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests
from prometheus_client.parser import text_string_to_metric_families

from .conftest import VALID, closed_port_url
from .server import gunicorn


def _samples(text: str) -> dict[tuple, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def test_gunicorn_serves_the_app_and_aggregates_metrics_across_workers():
    with gunicorn({"KSERVE_URL": closed_port_url()}, workers=2) as url:
        assert requests.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
        page = requests.get(url, timeout=5)
        assert page.status_code == 200 and "Describe a passenger" in page.text
        assert requests.get(f"{url}/static/app.css", timeout=5).status_code == 200

        def call(_):
            # A new connection per call, so both workers take requests.
            return requests.post(f"{url}/api/predict", json=VALID, timeout=10,
                                 headers={"Connection": "close"}).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(call, range(40)))
        assert statuses == [503] * 40

        metrics = requests.get(f"{url}/metrics", timeout=5)
        assert metrics.status_code == 200
        samples = _samples(metrics.text)
        assert samples[("titanic_web_inference_errors_total", (("reason", "unreachable"),))] == 40
        assert samples[("titanic_web_request_duration_seconds_count",
                        (("endpoint", "api.predict"), ("method", "POST")))] == 40
        assert samples[("titanic_web_predictions_total", (("outcome", "survived"),))] == 0
