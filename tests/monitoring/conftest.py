"""Fixtures of the monitoring tests: a real Airflow API server and the web app's relay."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests import airflow_server
from tests.monitoring.payloads import TOKEN


@pytest.fixture(scope="session")
def airflow():
    """`airflow api-server` from .venv-airflow on a free port, stopped at the end of the session."""
    home = Path(tempfile.mkdtemp(prefix="titanic-airflow-"))
    try:
        server, procs = airflow_server.start(home)
    except BaseException:  # a failed start leaves /tmp as it found it too
        shutil.rmtree(home, ignore_errors=True)
        raise
    yield server
    airflow_server.stop(procs)
    shutil.rmtree(home, ignore_errors=True)  # leave /tmp as the session found it


@pytest.fixture
def relay_app(services, request):
    """Build a web app whose relay uses isolated settings; returns (app, settings).

    Call it with keyword overrides of Settings (airflow_api_url, retrain_cooldown_seconds, ...).
    """

    def build(**overrides):
        from webapp import create_app

        values = dict(alert_webhook_token=TOKEN, kserve_url="http://127.0.0.1:9")
        values.update(overrides)
        settings = make_settings(services, uuid.uuid4().hex[:10], **values)
        app = create_app({"SETTINGS": settings, "TESTING": True})
        return app, settings

    return build
