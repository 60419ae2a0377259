"""`make train`: trigger `titanic_training` through the Airflow CLI in the scheduler and follow the run.

No cluster runs here, so `kubectl` is replaced by a shim that runs the command after `--` locally;
everything behind it is real: the pinned Airflow CLI against a migrated metadata database (SQLite)
with the DAG serialized from `dags/`. Without a scheduler a run stays queued, so the test plays the
scheduler's part by ending the run in the database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = Path(sys.executable).parent / "airflow"

SHIM = """#!/usr/bin/env bash
# Stand-in for `kubectl -n NS exec WORKLOAD -c CONTAINER -- CMD ...` (no cluster here): log, then run CMD.
echo "$*" >> "$SHIM_LOG"
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
shift
cmd=$1; shift
exec "$AIRFLOW_BIN/$cmd" "$@"
"""


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_train")
    shim = home / "kubectl"
    shim.write_text(SHIM)
    shim.chmod(0o755)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_BIN": str(AIRFLOW.parent),
        "SHIM_LOG": str(home / "kubectl.log"),
        "KUBECTL_SHIM": str(shim),
    }
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([str(AIRFLOW), *command], env=env, check=True, capture_output=True, timeout=300)
    return env


def _runs(env) -> list[tuple[str, str, str]]:
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        return db.execute("SELECT run_id, state, conf FROM dag_run WHERE dag_id = 'titanic_training' ORDER BY id").fetchall()


def _state_polls(env) -> int:
    log = Path(env["SHIM_LOG"])
    return log.read_text().count(" dags state ") if log.exists() else 0


def _end_run_when_followed(env, make: subprocess.Popen, state: str, known: int, polls: int) -> tuple[str, str]:
    """Wait until make has triggered a new run and seen it queued, then finish the run with `state`."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and make.poll() is None:
        runs = _runs(env)
        # the shim logs a call as it starts: a second poll means the first one has answered
        if len(runs) > known and _state_polls(env) >= polls + 2:
            run_id, _, conf = runs[-1]
            with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
                db.execute("UPDATE dag_run SET state = ? WHERE run_id = ?", (state, run_id))
            return run_id, conf
        time.sleep(0.5)
    raise AssertionError(f"make train did not trigger and poll a run: {make.communicate()}")


def _make_train(env, **variables) -> subprocess.Popen:
    args = [f"{k}={v}" for k, v in {"KUBECTL": env["KUBECTL_SHIM"], "TRAIN_POLL": 1, **variables}.items()]
    return subprocess.Popen(["make", "-s", "train", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_make_train_triggers_with_conf_and_follows_the_run_to_its_end(airflow_env):
    make = _make_train(airflow_env, TRAIN_CONF='{"min_accuracy": 0.9}')
    run_id, conf = _end_run_when_followed(airflow_env, make, "success", known=0, polls=0)
    out, err = make.communicate(timeout=240)

    assert make.returncode == 0, err
    assert run_id.startswith("make-train-") and json.loads(conf) == {"min_accuracy": 0.9}
    assert f"run {run_id}: queued" in out and f"run {run_id}: success" in out, out
    calls = Path(airflow_env["SHIM_LOG"]).read_text().splitlines()
    assert calls[0] == "-n airflow exec deploy/airflow-scheduler -c scheduler -- airflow dags unpause titanic_training"
    assert calls[1].startswith("-n airflow exec deploy/airflow-scheduler -c scheduler -- airflow dags trigger "
                               f"titanic_training --run-id {run_id}")

    # a failed run makes `make train` fail
    polls = _state_polls(airflow_env)
    make = _make_train(airflow_env)
    failed_id, _ = _end_run_when_followed(airflow_env, make, "failed", known=1, polls=polls)
    out, err = make.communicate(timeout=240)
    assert make.returncode != 0
    assert f"run {failed_id}: failed" in out and f"run {failed_id} failed" in err
