"""Health that tells the truth, on real processes: the transformer is ready only while its predictor is, and the
web app's deep check (/readyz) says which link of the chain is missing, while its liveness (/healthz) does not care."""

from __future__ import annotations

import time

import pytest
import requests

from tests.fixtures.serving import launch, start_predictor, wait_ready
from tests.services import free_port
from tests.serving.test_server import ROSE
from tests.webapp.conftest import make_app

pytestmark = pytest.mark.integration


def _until(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return result


def test_transformer_and_web_app_are_ready_only_with_the_predictor(trained_model, tmp_path):
    name, port = trained_model.settings.model_name, free_port()
    # the transformer first, its predictor not there yet: how pods start, in any order
    transformer = launch("transformer", trained_model.settings,
                         ["--model_uri", trained_model.artifact_uri, "--predictor_host", f"127.0.0.1:{port}"],
                         tmp_path, wait=False)
    predictor = None
    web = make_app(transformer.url).test_client()
    try:
        alive = _until(lambda: _get(f"{transformer.url}/v2/health/live") == 200, 90)
        assert alive, transformer.log_text()[-3000:]
        assert _get(f"{transformer.url}/v1/models/{name}") == 503  # was 200: KServe sent traffic it had to refuse
        assert web.get("/readyz").json == {"ready": False, "kserve": "predictor not ready"}
        assert web.get("/healthz").status_code == 200  # the pod's own probe stays independent of the model

        predictor = start_predictor(trained_model, tmp_path, port=port)
        wait_ready(transformer, name, timeout=15)
        assert web.get("/readyz").status_code == 200
        assert requests.post(f"{transformer.url}/v1/models/{name}:predict", json={"instances": [ROSE]},
                             timeout=30).status_code == 200

        predictor.proc.kill()  # the predictor dies: ready turns false at the next check, no restart needed
        predictor.proc.wait(timeout=10)
        assert _get(f"{transformer.url}/v1/models/{name}") == 503
        assert web.get("/readyz").json == {"ready": False, "kserve": "predictor not ready"}
        assert _get(f"{transformer.url}/v2/health/live") == 200  # alive: a predictor outage must not restart it

        transformer.stop()
        assert web.get("/readyz").json == {"ready": False, "kserve": "unreachable"}
    finally:
        transformer.stop()
        if predictor:
            predictor.stop()


def _get(url: str) -> int | None:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return None
