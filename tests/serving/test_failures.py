"""Predictor down or hung: the transformer answers 503 within its timeout, never hangs."""

from __future__ import annotations

import os
import signal
import time

import requests

from tests.fixtures.serving import launch, start_predictor, start_transformer
from tests.serving.test_server import ROSE
from tests.services import wait_http

TIMEOUT_S = 2


def test_predictor_hung_then_killed(trained_model, tmp_path):
    predictor = start_predictor(trained_model, tmp_path)
    transformer = None
    try:
        transformer = start_transformer(trained_model, predictor, tmp_path,
                                        "--predictor_request_timeout_seconds", str(TIMEOUT_S))
        url = f"{transformer.url}/v1/models/{trained_model.settings.model_name}:predict"
        assert requests.post(url, json={"instances": [ROSE]}, timeout=30).status_code == 200

        os.kill(predictor.proc.pid, signal.SIGSTOP)  # accepts connections (kernel backlog) but never answers
        try:
            started = time.monotonic()
            r = requests.post(url, json={"instances": [ROSE]}, timeout=30)
            elapsed = time.monotonic() - started
        finally:
            os.kill(predictor.proc.pid, signal.SIGCONT)
        assert r.status_code == 503, r.text
        assert "did not answer within" in r.json()["error"]
        assert TIMEOUT_S - 0.5 <= elapsed < TIMEOUT_S + 3

        predictor.proc.kill()
        predictor.proc.wait(timeout=10)
        started = time.monotonic()
        r = requests.post(url, json={"instances": [ROSE]}, timeout=30)
        assert r.status_code == 503, r.text
        assert "unreachable" in r.json()["error"]
        assert time.monotonic() - started < TIMEOUT_S
        # the transformer itself stays up and still validates input
        assert requests.post(url, json={"instances": [{**ROSE, "Age": -1}]}, timeout=10).status_code == 400
    finally:
        if transformer:
            transformer.stop()
        predictor.stop()


def test_predictor_error_answer_is_a_502(trained_model, model_server, tmp_path):
    """A predictor that answers with an error (here 404: it serves no model of that name) -> 502 naming it."""
    host = model_server.predictor.url.removeprefix("http://")
    transformer = launch("transformer", trained_model.settings, ["--model_uri", trained_model.artifact_uri,
                         "--predictor_host", host, "--model_name", "other"], tmp_path, wait=False)
    try:
        # never ready (its predictor has no model "other"), yet a request sent anyway gets a clear answer
        wait_http(f"{transformer.url}/v2/health/live", transformer.proc, "transformer", timeout=90, log=transformer.log_text)
        assert requests.get(f"{transformer.url}/v1/models/other", timeout=10).status_code == 503
        r = requests.post(f"{transformer.url}/v1/models/other:predict", json={"instances": [ROSE]}, timeout=30)
        assert r.status_code == 502, r.text
        assert "answered HTTP 404" in r.json()["error"]
    finally:
        transformer.stop()
