"""Shared set-up of the benchmarks: real local services in a temporary directory."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from tests import services as local_services
from tests.conftest import VERSITYGW, make_settings


@contextlib.contextmanager
def isolated_settings(**overrides):
    """Start Postgres, Redis and S3 for one benchmark and yield isolated Settings."""
    root = Path(tempfile.mkdtemp(prefix="titanic-bench-"))
    started = local_services.up(root, VERSITYGW)
    try:
        yield make_settings(started, uuid.uuid4().hex[:10], **overrides)
    finally:
        local_services.down(root)
        shutil.rmtree(root, ignore_errors=True)


def run_clients(clients: int, work: Callable[[int, threading.Event], None], seconds: float) -> float:
    """Run `work(k, stop)` in `clients` threads until `stop` is set after `seconds`; the seconds they ran."""
    stop = threading.Event()
    threads = [threading.Thread(target=work, args=(k, stop)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return time.perf_counter() - started
