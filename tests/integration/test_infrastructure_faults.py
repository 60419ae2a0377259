"""Every step meets Postgres, Redis or S3 failing with one line, no traceback, and the exit code Airflow acts on.

Each case runs `python -m pipeline <step>` on a deployment that works (its own schema, key prefix and buckets,
with passengers, a feature set and a model), with one service replaced by a faulty one:

- refused: a free port, where nothing listens (a stopped or crashed server);
- stopped: a real server of a second set (tests/services.py) frozen with SIGSTOP: it accepts the connection and
  never answers, like a hung server, so the client's timeout decides;
- credentials: the session's real server with credentials it refuses (its Postgres trusts loopback logins, so a
  role that does not exist stands for a wrong password).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.errors import EXIT_CREDENTIALS, EXIT_UNAVAILABLE
from tests import services as local_services
from tests.conftest import REPO, TRAIN_CSV, VERSITYGW, make_settings, settings_env

pytestmark = pytest.mark.integration

# Short client timeouts: a frozen server costs seconds, not the defaults' minutes.
TIMEOUTS = {"POSTGRES_CONNECT_TIMEOUT": "2", "REDIS_SOCKET_TIMEOUT": "0.5", "REDIS_SOCKET_CONNECT_TIMEOUT": "0.5",
            "S3_CONNECT_TIMEOUT": "1", "S3_READ_TIMEOUT": "1"}
SERVICE_NAMES = {"postgres": "Postgres", "redis": "Redis", "s3": "S3"}
PORTS = {"postgres": "pg_port", "redis": "redis_port", "s3": "s3_port"}


@pytest.fixture(scope="module")
def deployment(services):
    """A deployment with every step's inputs: passengers, a current feature set, a registered model version."""
    from pipeline.steps import features, ingest, train

    settings = make_settings(services, "faults")
    ingest.run(settings, source=str(TRAIN_CSV))
    feature_set = features.run(settings)["feature_set"]
    version = train.run(settings, feature_set=feature_set, n_iter=1, cv=2, n_jobs=1)["version"]
    return settings, feature_set, version


@pytest.fixture(scope="module")
def frozen():
    """A second set of real servers, to be frozen one at a time; their pids by service."""
    root = Path(tempfile.mkdtemp(prefix="titanic-frozen-"))
    started = local_services.up(root, VERSITYGW)
    postmaster = int((Path(started.pg_dir) / "postmaster.pid").read_text().splitlines()[0])
    redis_pid = int((root / "redis" / "redis.pid").read_text())
    yield started, {"postgres": postmaster, "redis": redis_pid, "s3": started.s3_pid}
    local_services.down(root)


@contextlib.contextmanager
def sigstopped(pid: int):
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def faulty(service: str, kind: str, services, frozen_services) -> tuple[dict[str, str], str]:
    """(environment overrides that make `service` fail the `kind` way, the host:port the line must name)."""
    server = {"refused": None, "stopped": frozen_services, "credentials": services}[kind]
    port = local_services.free_port() if server is None else getattr(server, PORTS[service])
    wrong = kind == "credentials"
    if service == "s3":
        env = {"S3_ENDPOINT": f"127.0.0.1:{port}", **({"S3_SECRET_KEY": "not-the-secret"} if wrong else {})}
    elif service == "redis":
        env = {"REDIS_URL": f"redis://{'intruder:wrong@' if wrong else ''}127.0.0.1:{port}/0"}
    else:
        env = {"DATABASE_URL": f"postgresql://{'intruder:wrong' if wrong else 'titanic:titanic'}@127.0.0.1:{port}/titanic"}
    return env, f"127.0.0.1:{port}"


EXPECTED = {  # kind -> (exit code, what the line says after the service's name)
    "refused": (EXIT_UNAVAILABLE, r"unreachable: .*[Rr]efused.*"),
    "stopped": (EXIT_UNAVAILABLE, r"timed out: .+"),
    "credentials": (EXIT_CREDENTIALS, r"refused the (credentials|login): .+"),
}
CASES = [  # every step meets every service it uses; each service fails each way at least once
    ("migrate", "postgres", "refused"), ("ingest", "s3", "stopped"), ("ingest", "postgres", "credentials"),
    ("features", "postgres", "stopped"), ("features", "s3", "credentials"), ("features", "redis", "refused"),
    ("train", "redis", "stopped"), ("train", "redis", "credentials"), ("train", "postgres", "refused"),
    ("train", "s3", "refused"), ("evaluate", "postgres", "credentials"), ("evaluate", "s3", "stopped"),
    ("deploy", "postgres", "stopped"), ("score", "postgres", "refused"), ("score", "s3", "credentials"),
    ("run-all", "postgres", "credentials"),
]


@pytest.mark.parametrize("step, service, kind", CASES, ids=["-".join(case) for case in CASES])
def test_a_failing_service_ends_the_step_with_one_line_and_its_exit_code(deployment, services, frozen, step,
                                                                            service, kind):
    settings, feature_set, version = deployment
    frozen_services, pids = frozen
    args = {"migrate": [], "ingest": ["--source", str(TRAIN_CSV)], "features": [],
            "train": ["--feature-set", feature_set, "--n-iter", "1", "--cv", "2", "--n-jobs", "1"],
            "evaluate": ["--version", version], "deploy": ["--version", version, "--target", "local"],
            "score": ["--version", version, "--input", str(TRAIN_CSV)],
            "run-all": ["--source", str(TRAIN_CSV), "--n-iter", "1"]}[step]
    overrides, address = faulty(service, kind, services, frozen_services)
    env = {**settings_env(settings), **TIMEOUTS, **overrides, "PATH": "/usr/bin:/bin"}
    with sigstopped(pids[service]) if kind == "stopped" else contextlib.nullcontext():
        proc = subprocess.run([sys.executable, "-m", "pipeline", step, *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    code, what = EXPECTED[kind]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [proc.stderr.splitlines()[-1]], proc.stderr[-3000:]  # one line, the last
    pattern = rf"error: {re.escape(step)}: {SERVICE_NAMES[service]} {what} \({re.escape(address)}\)"
    assert re.fullmatch(pattern, errors[0]), errors[0]
