"""Ingest limits: the largest files and fields `python -m pipeline ingest` handles, and its peak memory.

`python -m bench ingest_limits`. Each case runs the real step as a subprocess against real Postgres and S3
(peak RSS of that process from wait4), on a file built from train.csv rows:

- file size: 1 MiB, and the 2 MiB limit (INGEST_MAX_BYTES) all valid, or all rejected (every row has a bad
  Pclass: the rejected rows keep their raw line); one byte over the limit is refused with one line;
- the limit raised to 8 and 32 MiB, to see how memory grows with the file;
- field size: one Name of 200,000 characters, and one of ~1.9 MiB (nearly the whole file), in an otherwise
  valid file: that row is rejected naming the field and its size, every other row loads.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.environment import isolated_settings
from tests.conftest import REPO, TRAIN_CSV, settings_env

MiB = 1 << 20
POD_MEMORY_MIB = 512  # the ingest pod's memory limit (dags/titanic_training.py)


def _rows(n: int, first_id: int = 1) -> pd.DataFrame:
    frame = pd.read_csv(TRAIN_CSV, dtype=str, keep_default_na=False)
    big = frame.sample(n=n, replace=True, random_state=0).reset_index(drop=True)
    big["PassengerId"] = [str(i) for i in range(first_id, first_id + n)]
    return big


def _file(path: Path, size: int, *, bad: bool = False, name_chars: int = 0) -> Path:
    """A CSV of train.csv rows just under `size` bytes; `bad`: every Pclass invalid; `name_chars`: one huge Name."""
    per_row = len(_rows(200).to_csv(index=False)) / 200
    frame = _rows(max(1, int((size - name_chars) / per_row) + 50))
    if bad:
        frame["Pclass"] = "9"
    if name_chars:
        frame.loc[0, "Name"] = "x" * name_chars
    text = frame.to_csv(index=False)
    while len(text.encode()) > size:  # trim to the size asked for, whole rows only
        frame = frame.iloc[: int(len(frame) * 0.98)]
        text = frame.to_csv(index=False)
    path.write_text(text)
    return path


def _run(settings, path: Path, **env) -> dict:
    """Ingest `path` in a subprocess; its exit code, time, peak RSS (wait4: Popen would reap it first) and summary."""
    environment = {**os.environ, **settings_env(settings), **{k.upper(): str(v) for k, v in env.items()}}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "pipeline", "ingest", "--source", str(path)],
                             {**environment, "PYTHONPATH": str(REPO)},
                             file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, err.fileno(), 2)])
        _, status, usage = os.wait4(pid, 0)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = {"file_mib": round(path.stat().st_size / MiB, 2), "seconds": round(time.perf_counter() - started, 2),
              "exit": os.waitstatus_to_exitcode(status), "peak_rss_mib": round(usage.ru_maxrss / 1024)}
    if result["exit"] == 0:
        summary = json.loads(stdout.strip().splitlines()[-1])
        result.update(rows_accepted=summary["rows_accepted"], rows_rejected=summary["rows_rejected"])
    else:
        result["error"] = stderr.strip().splitlines()[-1]
    return result


def run() -> dict:
    limit = 2 * MiB
    with isolated_settings() as settings, tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        results = {
            "file_1mib": _run(settings, _file(d / "1.csv", MiB)),
            "file_at_limit_2mib": _run(settings, _file(d / "2.csv", limit)),
            "file_at_limit_all_rejected": _run(settings, _file(d / "bad.csv", limit, bad=True)),
        }
        over = d / "over.csv"
        over.write_bytes((d / "2.csv").read_bytes() + b"\n" * (limit + 1 - (d / "2.csv").stat().st_size))
        results["file_over_limit"] = _run(settings, over)
        for mib in (8, 32):
            results[f"limit_raised_file_{mib}mib"] = _run(settings, _file(d / f"{mib}.csv", mib * MiB),
                                                          ingest_max_bytes=mib * MiB)
        results["field_200k_chars"] = _run(settings, _file(d / "f200k.csv", MiB, name_chars=200_000))
        results["field_1_9mib"] = _run(settings, _file(d / "f2m.csv", limit, name_chars=limit - 100_000))
    # memory grows about linearly with the file: extrapolate the largest that fits the pod
    a, b = results["file_at_limit_2mib"], results["limit_raised_file_32mib"]
    slope = (b["peak_rss_mib"] - a["peak_rss_mib"]) / (b["file_mib"] - a["file_mib"])
    results["mib_rss_per_mib_file"] = round(slope, 1)
    results["largest_file_mib_in_pod"] = round(a["file_mib"] + (POD_MEMORY_MIB - a["peak_rss_mib"]) / slope, 1)
    return results
