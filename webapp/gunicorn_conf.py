"""gunicorn settings of the web app image (`gunicorn -c python:webapp.gunicorn_conf 'webapp:create_app()'`).

Command-line flags override these (tests and the benchmark pass `--bind`).
"""

import os
import shutil

from prometheus_client import multiprocess

from pipeline.runtime import freeze_startup_heap

bind = "0.0.0.0:8000"
# Threads, not more processes: a request mostly waits on the transformer, and threads share
# one keep-alive connection pool per worker.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# More threads than the app's MAX_IN_FLIGHT + MAX_QUEUED (40 + 40): the spare ones answer the requests it sheds
# (webapp/shedding.py).
threads = int(os.environ.get("GUNICORN_THREADS", "96"))
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = None  # request metrics live in Prometheus; the ingress keeps access logs
errorlog = "-"
# No preload_app: on_starting must empty the metrics folder before any metric is created.


def on_starting(server):
    # Values files of a previous run would be summed into this run's counters.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)


def child_exit(server, worker):
    # Drops the dead worker's live gauges; its counters stay summed, as Prometheus expects.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    # The app is built (no preload_app): what exists now lives as long as the worker.
    freeze_startup_heap()
