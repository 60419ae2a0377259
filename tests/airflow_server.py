"""A real Airflow 3 from the pinned Airflow venv, as host processes, with the project's DAG registered.

SQLite metadata database in its own AIRFLOW_HOME, the simple auth manager with one admin user
whose password is written beforehand. By default the API server alone (runs stay queued, which is
all the relay tests need to prove: Airflow accepted the run); with `scheduler=True` also the
scheduler (LocalExecutor, which Airflow 3 runs on SQLite) and the DAG processor, so runs really
run: the local platform's KubernetesPodOperator steps become pods of its cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.services import free_port, stop_process, wait_http

REPO = Path(__file__).resolve().parents[1]
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

    def trigger(self, run_id: str, conf: dict, note: str) -> dict:
        """Create a run of the project's DAG through the REST API (the request the alert relay sends)."""
        r = requests.post(f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns", headers={"Authorization": f"Bearer {self.token()}"},
                          json={"dag_run_id": run_id, "logical_date": None, "conf": conf, "note": note}, timeout=30)
        r.raise_for_status()
        return r.json()


def _env(home: Path, username: str, password: str, jwt_secret: str, secret_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{username}:admin",
        # Given, not generated per process, so that every worker signs and checks the same JWTs.
        AIRFLOW__API_AUTH__JWT_SECRET=jwt_secret,
        AIRFLOW__API__SECRET_KEY=secret_key,
        AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
    )
    return env


def start(home: Path, timeout: float = 120.0, *, username: str = "relay", password: str = "relay-test-password",
          host: str = "127.0.0.1", scheduler: bool = False, jwt_secret: str = "test-only-jwt-secret-0123456789abcdef",
          secret_key: str = "test-only-secret-key", extra_env: dict[str, str] | None = None,
          ) -> tuple[AirflowServer, list[subprocess.Popen]]:
    """Migrate the database, serialise the project's DAGs and start `airflow api-server` on `host` (and with
    `scheduler`, the scheduler and the DAG processor); `extra_env` reaches every process (and so the DAG)."""
    assert AIRFLOW.exists(), "the Airflow venv is missing: run `make airflow-venv`"
    assert (DAGS / f"{DAG_ID}.py").exists(), f"dags/{DAG_ID}.py is missing"
    home.mkdir(parents=True, exist_ok=True)
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({username: password}))
    port = free_port()
    env = {**_env(home, username, password, jwt_secret, secret_key), **(extra_env or {})}
    # Task processes of the LocalExecutor report to the API server's Execution API.
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://{host}:{port}/execution/"
    log = open(home / "api-server.log", "w")
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    subprocess.run(
        [str(AIRFLOW), "dags", "reserialize"], env=env, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=300
    )
    commands = {"api-server": ["api-server", "--host", host, "--port", str(port), "--workers", "1"]}
    if scheduler:
        commands.update({"scheduler": ["scheduler"], "dag-processor": ["dag-processor"]})
    procs = []
    for name, args in commands.items():
        out = log if name == "api-server" else open(home / f"{name}.log", "w")
        # own process group each: stop() ends uvicorn's and the executor's worker processes too
        procs.append(subprocess.Popen([str(AIRFLOW), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    server = AirflowServer(f"http://{host}:{port}", username, password, home)
    try:
        wait_http(f"{server.url}/api/v2/monitor/health", procs[0], "airflow api-server", timeout=timeout,
                  log=lambda: (home / "api-server.log").read_text())
    except BaseException:
        stop(procs)
        raise
    return server, procs


def stop(procs: list[subprocess.Popen]) -> None:
    """Terminate each process group (uvicorn workers and executor processes included)."""
    for proc in procs:
        stop_process(proc, timeout=20)
