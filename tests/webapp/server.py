"""Run the web app under gunicorn as the image does (used by tests and `make bench`)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path


from tests.services import free_port, stop_process, wait_http

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def gunicorn(env: dict[str, str], *, workers: int = 2, threads: int = 4):
    """Yield the base URL of `gunicorn -c python:webapp.gunicorn_conf 'webapp:create_app()'`.

    `env` carries the settings (KSERVE_URL, DATABASE_URL, ...); metrics use a fresh
    PROMETHEUS_MULTIPROC_DIR, as in the image.
    """
    port = free_port()
    # Its log goes to a file: a pipe nobody reads fills up (64 KiB, a few seconds of failing requests'
    # warnings) and then blocks every worker on its next log line.
    with (tempfile.TemporaryDirectory(prefix="webapp-metrics-") as metrics_dir,
          tempfile.NamedTemporaryFile(prefix="webapp-", suffix=".log") as log):
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
            cwd=REPO, env=full_env, stdout=subprocess.DEVNULL, stderr=log,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/healthz", proc, "gunicorn", timeout=60, log=lambda: Path(log.name).read_text(errors="replace"))
            yield url
        finally:
            stop_process(proc, timeout=20)
