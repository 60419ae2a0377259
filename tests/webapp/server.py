"""Run the web app under gunicorn as the image does (used by tests and `make bench`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.services import free_port

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def gunicorn(env: dict[str, str], *, workers: int = 2, threads: int = 4):
    """Yield the base URL of `gunicorn -c python:webapp.gunicorn_conf 'webapp:create_app()'`.

    `env` carries the settings (KSERVE_URL, DATABASE_URL, ...); metrics use a fresh
    PROMETHEUS_MULTIPROC_DIR, as in the image.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="webapp-metrics-") as metrics_dir:
        full_env = {
            **os.environ, **env,
            "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_THREADS": str(threads),
            "LOG_LEVEL": env.get("LOG_LEVEL", "WARNING"),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:webapp.gunicorn_conf", "--bind", f"127.0.0.1:{port}",
             "webapp:create_app()"],
            cwd=REPO, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass  # not listening yet, or the workers are still importing the app
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not become healthy within {timeout:.0f}s")
