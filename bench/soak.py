"""Soak and overload (#13 item 7): web app -> transformer -> predictor for 10 minutes at 70% of capacity, then 2x.

Off by default (it takes ~14 minutes): `make bench-soak`, or BENCH_SOAK=1 with `make bench`. The three servers
run as `bench/probe.py` starts them (gunicorn as in the image, default settings), on a model of the real steps:
1. capacity: predictions/s answered while the soak's own open-loop client offers 1.5x what 32 keep-alive clients
   in a closed loop got for 20 s (its threads share the cores with the servers, so the closed-loop figure is more
   than the servers can keep up under it: 689-935/s closed, 523-666/s answered under the open loop, quiet machine);
2. soak: requests sent at a fixed rate of 70% of that for BENCH_SOAK_SECONDS (600): errors, the p99 of the first
   and of the last minute, and the resident memory of every process at the start and the end;
3. overload: 2x capacity for BENCH_OVERLOAD_SECONDS (60): how many were answered 200, shed (503 "overloaded") or
   failed otherwise, and their latencies (a queue that grew would show as timeouts and rising latencies);
4. recovery: 70% again for 20 s: seconds from the end of the overload to the first second answered without an
   error and with a median within 1.5x the soak's (the errors of all 20 s are reported too).
Requests are sent on schedule whatever the answers (an open loop), and a latency counts from the time a request
was due, so a server that falls behind cannot slow the client down and hide it.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.environment import isolated_settings, run_clients
from bench.probe import REPO, Target, _Client, _load, _loaded, process_tree, stack
from bench.web import _train

SOAK_SECONDS = float(os.environ.get("BENCH_SOAK_SECONDS", "600"))
OVERLOAD_SECONDS = float(os.environ.get("BENCH_OVERLOAD_SECONDS", "60"))
CAPACITY_CLIENTS, CAPACITY_SECONDS, RECOVERY_SECONDS = 32, 20.0, 20.0
SOAK_SHARE, OVERLOAD_FACTOR, RAMP_FACTOR = 0.7, 2.0, 1.5
# Open-loop client threads: more than the web app admits or queues (2 x (40 + 40)), so an overload reaches it.
SENDERS = 256
TARGETS = {"errors": 0, "p99_last_over_first": 1.5, "rss_growth_percent": 10.0, "recovery_seconds": 10.0}


class Answer(NamedTuple):
    due: float  # seconds since the start that the request was due
    latency: float  # seconds from `due` to the answer
    status: int  # 0: no answer (`reason` names the exception)
    reason: str  # a 503's `reason` field
    late: float  # seconds from `due` to the send: the client's own delay, when it is short of CPU


def _at_rate(url: str, path: str, rate: float, seconds: float) -> list[Answer]:
    """Send `rate` requests/s for `seconds`, each on schedule whatever the answers before it."""
    total = int(rate * seconds)
    order = itertools.count()
    start = time.perf_counter() + 0.2  # the senders are connected by then
    results: list[Answer] = []

    def work(_k: int, _stop: threading.Event) -> None:
        client = _Client(url)
        while (i := next(order)) < total:
            due = start + i / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            late = time.perf_counter() - due
            try:
                status, body, _ = client.send(path)
                reason = "" if status == 200 else _reason(body)
            except OSError as exc:  # a timeout or a refused connection: a new one for the next request
                status, reason = 0, type(exc).__name__
                client.conn.close()
                client = _Client(url)
            results.append(Answer(due - start, time.perf_counter() - due, status, reason, late))
        client.conn.close()

    # The client's own full collections (the bench's imports and up to 400,000 answers) would stall all its
    # senders at once, and a late send counts against the servers.
    gc.disable()
    try:
        run_clients(SENDERS, work, seconds)
    finally:
        gc.enable()
    return sorted(results)


def _reason(body: bytes) -> str:
    try:
        return str(json.loads(body).get("reason", ""))
    except (ValueError, AttributeError):
        return "not the API's JSON"


def _ms(latencies) -> dict:
    ms = np.asarray(latencies) * 1e3
    if not ms.size:
        return {}
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


def _processes(pids: dict[str, int]) -> dict[str, int]:
    """Each server process by name (gunicorn: its master and each worker), the same names in every figure."""
    return {role if k == 0 else f"{role} worker {k}": p
            for role, pid in pids.items() for k, p in enumerate(process_tree(pid))}


def _rss_mib(pids: dict[str, int]) -> dict[str, float]:
    """Resident memory of each server process."""
    out = {}
    for name, p in _processes(pids).items():
        status = Path(f"/proc/{p}/status").read_text()
        kib = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
        out[name] = round(kib / 1024, 1)
    return out


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far: each server process, this client, and the machine's busy and stolen time (/proc/stat),
    so a soak can tell the servers' work from other processes' and from a hypervisor's."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, p in _processes(pids).items():
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    out["client"] = sum(os.times()[:2])
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    # Guest time is counted in user already, and steal is no process's: neither belongs in busy.
    out["machine busy"] = (user + nice + system + irq + softirq) / tick
    out["machine steal"] = steal / tick
    return out


def _by_minute(answers: list[Answer]) -> list[float]:
    """The p99 (ms) of each minute: whether latency drifted or one minute stalled."""
    minutes: dict[int, list[float]] = {}
    for a in answers:
        minutes.setdefault(int(a.due // 60), []).append(a.latency)
    return [_ms(minutes[m])["p99_ms"] for m in sorted(minutes)]


def _counts(results) -> dict:
    counts: dict[str, int] = {}
    for a in results:
        key = str(a.status) + (f" {a.reason}" if a.reason else "")
        counts[key] = counts.get(key, 0) + 1
    return counts


def _by_second(answers: list[Answer]) -> dict[int, int]:
    seconds: dict[int, int] = {}
    for a in answers:
        seconds[int(a.due)] = seconds.get(int(a.due), 0) + 1
    return seconds


def _slowest_seconds(answers: list[Answer], n: int = 5) -> dict[int, float]:
    """The `n` seconds with the slowest answer, and that answer's ms: where the stalls fell."""
    slowest: dict[int, float] = {}
    for a in answers:
        slowest[int(a.due)] = max(slowest.get(int(a.due), 0.0), a.latency)
    top = sorted(slowest.items(), key=lambda item: -item[1])[:n]
    return {second: round(latency * 1e3, 1) for second, latency in sorted(top)}


# Fixed work, once a second in a process of its own, timed in that thread's CPU time: waiting for a core does not
# count, so a minute in which it costs more is a minute in which the cores themselves ran slower (a busy sibling
# hyperthread, a lower clock, a neighbour on the host), whatever the servers did. ~5 ms of CPU a second; it prints
# its (time, seconds) samples when stdin closes.
CORE_PROBE = """
import json, select, sys, time
samples = []
while not select.select([sys.stdin], [], [], 1.0)[0]:
    began, x = time.thread_time(), 0
    for i in range(50_000):
        x += i * i
    samples.append((time.time(), time.thread_time() - began))
print(json.dumps(samples))
"""


class CoreProbe:
    """CORE_PROBE for the `with` block; then `ms(start, end)`: its median ms between two time.time() stamps."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", CORE_PROBE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        self.samples = json.loads(self.proc.communicate(timeout=30)[0])

    def ms(self, start: float, end: float) -> float | None:
        window = [seconds for t, seconds in self.samples if start <= t < end]
        return round(float(np.median(window)) * 1e3, 2) if window else None


def _soak(url: str, path: str, rate: float, pids: dict[str, int]) -> dict:
    rss_start, load_start, cpu_start = _rss_mib(pids), _load(), _cpu_seconds(pids)
    marks, stop = [cpu_start], threading.Event()

    def every_minute():
        while not stop.wait(60):
            marks.append(_cpu_seconds(pids))

    sampler = threading.Thread(target=every_minute, daemon=True)
    sampler.start()
    results = _at_rate(url, path, rate, SOAK_SECONDS)
    stop.set()
    sampler.join()
    rss_end, cpu_end = _rss_mib(pids), _cpu_seconds(pids)
    used = {k: v - cpu_start[k] for k, v in cpu_end.items()}
    used["other processes"] = used["machine busy"] - used["client"] - sum(used[k] for k in rss_start)
    last = SOAK_SECONDS - 60
    first_minute = _ms([a.latency for a in results if a.due < 60])
    last_minute = _ms([a.latency for a in results if a.due >= last])
    errors = [a for a in results if a.status != 200]
    return {"rate_per_s": round(rate, 1), "seconds": SOAK_SECONDS, "requests": len(results),
            "errors": len(errors), "answers": _counts(results),
            # When the errors fell, and how late the client itself sent then: a burst after a stall of its own
            # (256 threads on the servers' cores) is not the servers' doing.
            "errors_by_second": _by_second(errors), "client_late": _ms([a.late for a in results]),
            "client_late_at_errors": _ms([a.late for a in errors]), "errors_latency": _ms([a.latency for a in errors]),
            "slowest_seconds": _slowest_seconds(results),
            "all": _ms([a.latency for a in results]), "first_minute": first_minute, "last_minute": last_minute,
            "p99_last_over_first": round(last_minute["p99_ms"] / first_minute["p99_ms"], 2),
            "p99_ms_by_minute": _by_minute(results),
            "cpu_seconds": {k: round(v, 1) for k, v in used.items()},
            # Per minute: one process's work growing, or all of them slower at once (the cores, not the code).
            "cpu_seconds_by_minute": {k: [round(b[k] - a[k], 1) for a, b in zip(marks, marks[1:])] for k in cpu_start},
            "rss_mib_start": rss_start, "rss_mib_end": rss_end,
            "rss_growth_percent": {k: round((rss_end[k] / v - 1) * 100, 1) for k, v in rss_start.items()},
            "load": f"{load_start} -> {_load()}"}


def _overload(url: str, path: str, rate: float) -> dict:
    load_start = _load()
    results = _at_rate(url, path, rate, OVERLOAD_SECONDS)
    by_status = {s: [a.latency for a in results if a.status == s] for s in (200, 503)}
    return {"rate_per_s": round(rate, 1), "seconds": OVERLOAD_SECONDS, "requests": len(results),
            "answers": _counts(results), "ok_per_s": round(len(by_status[200]) / OVERLOAD_SECONDS, 1),
            "ok": _ms(by_status[200]), "shed": _ms(by_status[503]),
            # Latencies count from when a request was due: under 2x the senders themselves fall behind.
            "client_late": _ms([a.late for a in results]), "load": f"{load_start} -> {_load()}"}


def _recovery(url: str, path: str, rate: float, soak_p50_ms: float) -> dict:
    """Seconds from the overload's end to the first second answered without error at the soak's median (x1.5)."""
    results = _at_rate(url, path, rate, RECOVERY_SECONDS)
    seconds = [[a for a in results if second <= a.due < second + 1] for second in range(int(RECOVERY_SECONDS))]
    p50s = [float(np.median([a.latency for a in window])) * 1e3 if window else None for window in seconds]
    good = [second for second, (window, p50) in enumerate(zip(seconds, p50s))
            if window and all(a.status == 200 for a in window) and p50 <= 1.5 * soak_p50_ms]
    return {"rate_per_s": round(rate, 1), "answers": _counts(results), "all": _ms([a.latency for a in results]),
            "p50_ms_by_second": [p50 if p50 is None else round(p50, 1) for p50 in p50s],
            "recovered_after_s": good[0] if good else None}


def run() -> dict:
    if os.environ.get("BENCH_SOAK") != "1":
        return {"skipped": "takes ~14 minutes: make bench-soak (or BENCH_SOAK=1)"}
    probe = CoreProbe()
    with (isolated_settings() as settings, tempfile.TemporaryDirectory(prefix="bench-soak-") as logs,
          contextlib.ExitStack() as running):
        trained = _train(settings)
        url, procs = running.enter_context(stack(REPO, trained, Path(logs)))
        running.enter_context(probe)  # stops first: its samples are there after the `with`
        stamps = {"capacity": time.time()}
        pids = {role: p.pid for role, p in procs.items()}
        target = Target(url["web"], "/api/predict", pids)
        clients = [_Client(target.url) for _ in range(CAPACITY_CLIENTS)]
        _loaded(target, clients, 5.0)  # warm-up
        samples, elapsed = _loaded(target, clients, CAPACITY_SECONDS)
        for client in clients:
            client.conn.close()
        closed_loop = len(samples) / elapsed
        # The soak's own open-loop client (256 threads on the same cores) leaves the servers less CPU than the
        # closed-loop run does: the capacity is what they answer while it offers more than they can take.
        ramp = _at_rate(target.url, target.path, RAMP_FACTOR * closed_loop, CAPACITY_SECONDS)
        capacity = sum(a.status == 200 for a in ramp) / CAPACITY_SECONDS
        result = {"closed_loop_per_s": round(closed_loop, 1), "capacity_per_s": round(capacity, 1),
                  "capacity_offered_per_s": round(RAMP_FACTOR * closed_loop, 1), "capacity_load": _load()}
        # The ramp's backlog and load are gone before the soak's first minute (after 5 s its p99 was 12x the last's).
        stamps["rest"] = time.time()
        time.sleep(30)
        stamps["soak"] = time.time()
        result["soak"] = _soak(target.url, target.path, SOAK_SHARE * capacity, pids)
        stamps["overload"] = time.time()
        result["overload"] = _overload(target.url, target.path, OVERLOAD_FACTOR * capacity)
        stamps["recovery"] = time.time()
        result["recovery"] = _recovery(target.url, target.path, SOAK_SHARE * capacity, result["soak"]["all"]["p50_ms"])
        stamps["end"] = time.time()
    # How fast the cores themselves were in each phase (the rest is the idle reference), in each minute of the soak
    # and in each 5 s of the recovery: a phase that missed its target on slower cores says so.
    phases = list(stamps.items())
    result["core_probe_ms"] = {name: probe.ms(start, end) for (name, start), (_, end) in zip(phases, phases[1:])}
    result["soak"]["core_probe_ms_by_minute"] = [probe.ms(t, t + 60) for t in
                                                 np.arange(stamps["soak"], stamps["overload"] - 1, 60)]
    result["recovery"]["core_probe_ms_by_5s"] = [probe.ms(t, t + 5) for t in np.arange(stamps["recovery"], stamps["end"], 5)]
    soak, recovered = result["soak"], result["recovery"]["recovered_after_s"]
    result["targets"] = TARGETS
    result["met"] = {"errors": soak["errors"] == 0,
                     "p99_last_over_first": soak["p99_last_over_first"] <= TARGETS["p99_last_over_first"],
                     "rss_growth_percent": max(soak["rss_growth_percent"].values()) <= TARGETS["rss_growth_percent"],
                     "shed_with_503": result["overload"]["answers"].get("503 overloaded", 0) > 0,
                     "recovery_seconds": recovered is not None and recovered <= TARGETS["recovery_seconds"]}
    print(f"soak: capacity {result['capacity_per_s']}/s; {json.dumps(result['met'])}", file=sys.stderr)
    return result
