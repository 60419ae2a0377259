"""Serving speed as an independent client sees it (#16): the chain and the web app, before and after, in one run.

The probe is the standard library only: `http.client`, one keep-alive connection per client
thread with TCP_NODELAY, one V1 body `{"instances": [<one full passenger>]}`, 20 warm-up
requests, 400 sequential requests (p50/p99), then 8 client threads for 8 s (predictions/s and
their p50/p99). Two paths:
- chain: transformer -> predictor, `POST /v1/models/<name>:predict` on the transformer;
- web: web app (gunicorn) -> transformer -> predictor, `POST /api/predict` with the same body.

All three servers run on this machine, from two source trees at once: "before" is the code
at BENCH_BASELINE (default: the commit before #16, extracted with `git archive`, the repo is
not touched), "after" is the working tree (or the commit BENCH_AFTER). Both serve the same model of the same real steps,
and each path is probed on both stacks in turns (4 blocks of 100 requests, then of 2 s), so a
change of the shared machine's load hits both alike. The CPU milliseconds per sequential
request of each process are reported too: other load inflates them less than latencies.
With BENCH_PROFILE_DIR set, py-spy then records each process of each stack under another 8 s
of 8-client load per path and writes flame graphs there:
`BENCH_PROFILE_DIR=build/profiles .venv/bin/python -m bench probe` (build/ is not committed).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from http.client import HTTPConnection, RemoteDisconnected
from pathlib import Path

import numpy as np

from bench.environment import isolated_settings, run_clients
from bench.web import _train
from tests.conftest import settings_env
from tests.services import free_port, stop_process, wait_http
from tests.webapp.conftest import VALID

REPO = Path(__file__).resolve().parents[1]
BASELINE = os.environ.get("BENCH_BASELINE", "1c56ef6")  # the code before #16 (the last landing before it)
AFTER = os.environ.get("BENCH_AFTER")  # a commit to compare instead of the working tree
WARMUP, SEQUENTIAL, CLIENTS, LOAD_SECONDS = 20, 400, 8, 8.0
BLOCKS = 4  # turns the sequential requests and the loaded seconds of each stack are taken in
BODY = json.dumps({"instances": [VALID]}).encode()
TARGETS = {"chain": {"p50_ms": 4.0, "p99_ms": 8.0}, "web": {"p50_ms": 6.0, "p99_ms": 12.0, "per_s_8_clients": 400}}


class _Client:
    """One keep-alive connection, Nagle off, as a pooled client would hold it."""

    def __init__(self, url: str):
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self._connect()

    def _connect(self) -> None:
        self.conn = HTTPConnection(self.host, self.port, timeout=30)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, path: str) -> float:
        """Seconds to a 200."""
        status, body, seconds = self.send(path)
        if status != 200:
            raise RuntimeError(f"HTTP {status} from {path}: {body[:200]!r}")
        return seconds

    def send(self, path: str) -> tuple[int, bytes, float]:
        """Status, body and seconds; a connection the server closed while idle is reopened, untimed, as a pool would."""
        try:
            return self._send(path)
        except (BrokenPipeError, ConnectionResetError, RemoteDisconnected):
            self.conn.close()
            self._connect()
            return self._send(path)

    def _send(self, path: str) -> tuple[int, bytes, float]:
        started = time.perf_counter()
        self.conn.request("POST", path, BODY, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - started


def _ms(samples: list[float]) -> dict:
    ms = np.asarray(samples) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def process_tree(pid: int) -> list[int]:
    """A process and its children (gunicorn's master and workers)."""
    return [pid, *(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (gunicorn's workers) so far."""
    ticks = 0
    for p in process_tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    """One path of one stack: where to POST, and the processes serving it."""

    url: str
    path: str
    pids: dict[str, int]


def _loaded(target: Target, clients: list[_Client], seconds: float) -> tuple[list[float], float]:
    """CLIENTS threads, each on its own keep-alive connection, for `seconds`: latencies and elapsed time."""
    samples: list[list[float]] = [[] for _ in clients]

    def work(k: int, stop: threading.Event) -> None:
        while not stop.is_set():
            samples[k].append(clients[k].post(target.path))

    elapsed = run_clients(len(clients), work, seconds)
    return [s for xs in samples for s in xs], elapsed


def probe(targets: dict[str, Target]) -> dict[str, dict]:
    """Per target: 20 warm-up, 400 sequential requests, then 8 threads for 8 s.

    The 400 requests and the 8 s run in BLOCKS turns, one target after the other, so that all
    targets see the same load of a shared machine. Also the CPU milliseconds each process
    spent per sequential request, which other load inflates far less than latency.
    """
    one = {label: _Client(t.url) for label, t in targets.items()}
    many = {label: [_Client(t.url) for _ in range(CLIENTS)] for label, t in targets.items()}
    for label, t in targets.items():
        for client in (one[label], *many[label]):
            for _ in range(WARMUP):
                client.post(t.path)
    sequential: dict[str, list[float]] = {label: [] for label in targets}
    cpu = {label: dict.fromkeys(t.pids, 0.0) for label, t in targets.items()}
    loaded: dict[str, list[float]] = {label: [] for label in targets}
    elapsed = dict.fromkeys(targets, 0.0)
    for _ in range(BLOCKS):
        for label, t in targets.items():
            before = {role: _cpu_seconds(pid) for role, pid in t.pids.items()}
            sequential[label] += [one[label].post(t.path) for _ in range(SEQUENTIAL // BLOCKS)]
            for role, pid in t.pids.items():
                cpu[label][role] += _cpu_seconds(pid) - before[role]
    for _ in range(BLOCKS):
        for label, t in targets.items():
            samples, seconds = _loaded(t, many[label], LOAD_SECONDS / BLOCKS)
            loaded[label] += samples
            elapsed[label] += seconds
    for client in (*one.values(), *(c for cs in many.values() for c in cs)):
        client.conn.close()
    return {label: {"one_client": {**_ms(sequential[label]), "cpu_ms_per_request": {
                        role: round(seconds / len(sequential[label]) * 1e3, 2) for role, seconds in cpu[label].items()}},
                    "clients_8": {**_ms(loaded[label]), "per_s": round(len(loaded[label]) / elapsed[label], 1)}}
            for label in targets}


def _extract(commit: str, into: Path) -> Path:
    """The tracked files of `commit`, without touching the repository's worktrees or index."""
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


@contextlib.contextmanager
def _process(root: Path, args: list[str], env: dict, log: Path, ready_url: str, what: str):
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=root, env={**env, "PYTHONPATH": str(root)},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(ready_url, proc, what, timeout=120, log=lambda: log.read_text(errors="replace")[-2000:])
        yield proc
    finally:
        stop_process(proc, timeout=20)


@contextlib.contextmanager
def stack(root: Path, trained, logs: Path):
    """Predictor, transformer and web app (gunicorn, as in the image) from the source tree `root`."""
    settings = trained.settings
    env = {**os.environ, **settings_env(settings), "LOG_LEVEL": "WARNING"}
    name = settings.model_name
    ports = {role: free_port() for role in ("predictor", "transformer", "web")}
    url = {role: f"http://127.0.0.1:{port}" for role, port in ports.items()}
    serve = ["-m", "pipeline.serving"]
    common = ["--enable_grpc", "false", "--model_uri", trained.artifact_uri]
    with contextlib.ExitStack() as running:
        procs = {}
        procs["predictor"] = running.enter_context(_process(
            root, [*serve, "predictor", "--http_port", str(ports["predictor"]), *common], env,
            logs / "predictor.log", f"{url['predictor']}/v1/models/{name}", "predictor"))
        procs["transformer"] = running.enter_context(_process(
            root, [*serve, "transformer", "--http_port", str(ports["transformer"]), *common,
                   "--predictor_host", f"127.0.0.1:{ports['predictor']}"], env,
            logs / "transformer.log", f"{url['transformer']}/v1/models/{name}", "transformer"))
        metrics_dir = running.enter_context(tempfile.TemporaryDirectory(prefix="probe-web-metrics-"))
        web_env = {**env, "KSERVE_URL": url["transformer"], "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        procs["web"] = running.enter_context(_process(
            root, ["-m", "gunicorn", "-c", "python:webapp.gunicorn_conf", "--bind", f"127.0.0.1:{ports['web']}",
                   "webapp:create_app()"], web_env, logs / "web.log", f"{url['web']}/healthz", "web app"))
        yield url, procs


def _profile(target: Target, out_dir: Path, label: str) -> None:
    """py-spy flame graphs of every process of a stack (gunicorn: with its workers) under 8 clients."""
    spies = []
    for role, pid in target.pids.items():
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--duration",
               str(int(LOAD_SECONDS)), "--rate", "250", "--nonblocking", "--output", str(out_dir / f"{label}-{role}.svg")]
        spies.append(subprocess.Popen(cmd + (["--subprocesses"] if role == "web" else []),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    clients = [_Client(target.url) for _ in range(CLIENTS)]
    _loaded(target, clients, LOAD_SECONDS)
    for client in clients:
        client.conn.close()
    for spy in spies:
        spy.wait(timeout=60)


def _measure(stacks: dict[str, tuple[dict, dict]], name: str, profile_dir: Path | None) -> dict:
    out: dict = {label: {} for label in stacks}
    for path in ("chain", "web"):
        targets = {label: Target(*((url["transformer"], f"/v1/models/{name}:predict") if path == "chain" else
                                   (url["web"], "/api/predict")), {role: p.pid for role, p in procs.items()})
                   for label, (url, procs) in stacks.items()}
        for label, result in probe(targets).items():
            out[label][path] = result
        if profile_dir:
            for label, target in targets.items():
                _profile(target, profile_dir, f"{label}-{path}")
    return out


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _table(before: dict | None, after: dict) -> str:
    lines = [f"{'path':6} {'clients':>7} {'metric':>18} {'before':>9} {'after':>9}"]
    for path in ("chain", "web"):
        rows = [("1", "p50_ms", lambda r: r["one_client"]["p50_ms"]), ("1", "p99_ms", lambda r: r["one_client"]["p99_ms"])]
        rows += [("1", f"cpu_ms {role}", lambda r, role=role: r["one_client"]["cpu_ms_per_request"][role])
                 for role in after[path]["one_client"]["cpu_ms_per_request"]]
        rows += [("8", m, lambda r, m=m: r["clients_8"][m]) for m in ("p50_ms", "p99_ms", "per_s")]
        for clients, metric, get in rows:
            b = get(before[path]) if before else "-"
            lines.append(f"{path:6} {clients:>7} {metric:>18} {b:>9} {get(after[path]):>9}")
    return "\n".join(lines)


def run() -> dict:
    profile = os.environ.get("BENCH_PROFILE_DIR")
    profile_dir = Path(profile).resolve() if profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"baseline": BASELINE, "targets": TARGETS}
    with isolated_settings() as settings, tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        trained = _train(settings)
        tmp = Path(tmp)
        result["load_before"] = _load()
        trees = {}
        try:
            trees["before"] = _extract(BASELINE, tmp / "before")
        except subprocess.CalledProcessError as exc:  # no git history (a source tarball): "after" only
            result["before_skipped"] = exc.stderr.decode(errors="replace").strip()
        trees["after"] = _extract(AFTER, tmp / "after") if AFTER else REPO
        with contextlib.ExitStack() as running:
            stacks = {}
            for label, root in trees.items():
                (tmp / f"{label}-logs").mkdir()
                stacks[label] = running.enter_context(stack(root, trained, tmp / f"{label}-logs"))
            result.update(_measure(stacks, settings.model_name, profile_dir))
        result["load_after"] = _load()
    print(f"probe (load {result['load_before']} -> {result['load_after']}; before = {BASELINE}):\n"
          + _table(result.get("before"), result["after"]), file=sys.stderr)
    return result
