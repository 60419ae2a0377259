"""A real Airflow 3 API server from the pinned Airflow venv, with the project's DAG registered.

SQLite metadata database in its own AIRFLOW_HOME, the simple auth manager with one admin user
whose password is written beforehand, no scheduler (runs stay queued, which is all the relay
needs to prove: Airflow accepted the run).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.services import free_port, stop_process, wait_http

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = REPO / ".venv-airflow" / "bin" / "airflow"
DAGS = REPO / "dags"
DAG_ID = "titanic_training"


@dataclass
class AirflowServer:
    """Where the API server listens and how to log in."""

    url: str
    username: str
    password: str
    home: Path

    def token(self) -> str:
        r = requests.post(f"{self.url}/auth/token", json={"username": self.username, "password": self.password}, timeout=10)
        r.raise_for_status()
        return r.json()["access_token"]

    def get(self, path: str, **params) -> dict:
        r = requests.get(
            f"{self.url}{path}", params=params, headers={"Authorization": f"Bearer {self.token()}"}, timeout=10
        )
        r.raise_for_status()
        return r.json()


def _env(home: Path, username: str, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{username}:admin",
        # Fixed secrets of a throwaway test server, so every worker signs and checks the same JWTs.
        AIRFLOW__API_AUTH__JWT_SECRET="test-only-jwt-secret-0123456789abcdef",
        AIRFLOW__API__SECRET_KEY="test-only-secret-key",
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
    )
    return env


def start(home: Path, timeout: float = 120.0) -> tuple[AirflowServer, subprocess.Popen]:
    """Migrate the database, serialise the project's DAGs and start `airflow api-server`."""
    assert AIRFLOW.exists(), "the Airflow venv is missing: run `make airflow-venv`"
    assert (DAGS / f"{DAG_ID}.py").exists(), f"dags/{DAG_ID}.py is missing"
    username, password = "relay", "relay-test-password"
    home.mkdir(parents=True, exist_ok=True)
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({username: password}))
    env = _env(home, username, password)
    log = open(home / "api-server.log", "w")
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    subprocess.run(
        [str(AIRFLOW), "dags", "reserialize"], env=env, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=300
    )
    port = free_port()
    proc = subprocess.Popen(
        [str(AIRFLOW), "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own process group: stop() ends uvicorn's worker processes too
    )
    server = AirflowServer(f"http://127.0.0.1:{port}", username, password, home)
    try:
        wait_http(f"{server.url}/api/v2/monitor/health", proc, "airflow api-server", timeout=timeout,
                  log=lambda: (home / "api-server.log").read_text())
    except BaseException:
        stop(proc)
        raise
    return server, proc


def stop(proc: subprocess.Popen) -> None:
    """Terminate the API server's process group (uvicorn workers included)."""
    stop_process(proc, timeout=20)
