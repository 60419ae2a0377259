"""Real servers stopped, or a step killed, half-way through the pipeline: one line, nothing half-written, a re-run converges.

A private set of servers (tests/services.py) is stopped and restarted here, so the session's own stay up. The
state compared is everything a step writes: passengers and rejected rows, registry rows, every Redis key of the
deployment (DUMP: exact bytes) and the S3 objects.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import redis

from pipeline.errors import EXIT_UNAVAILABLE
from tests import services as local_services
from tests.conftest import REPO, TRAIN_CSV, VERSITYGW, make_settings, settings_env

pytestmark = pytest.mark.integration

TRAIN = ["--n-iter", "1", "--cv", "2", "--n-jobs", "1"]


@pytest.fixture(scope="module")
def deployment(private_services):
    """A working deployment (passengers, a current feature set, a candidate model) on the private servers."""
    from pipeline.steps import features, ingest, train

    settings = make_settings(private_services, uuid.uuid4().hex[:10])
    ingest.run(settings, source=str(TRAIN_CSV))
    feature_set = features.run(settings)["feature_set"]
    train.run(settings, feature_set=feature_set, n_iter=1, cv=2, n_jobs=1)
    return settings, feature_set


def step(settings, name: str, *args: str, env: dict | None = None, wait: bool = True):
    environment = {**settings_env(settings), "S3_CONNECT_TIMEOUT": "1", "S3_READ_TIMEOUT": "2",
                   "PATH": "/usr/bin:/bin", **(env or {})}
    command = [sys.executable, "-m", "pipeline", name, *args]
    if not wait:
        return subprocess.Popen(command, env=environment, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(command, env=environment, cwd=REPO, capture_output=True, text=True, timeout=120)


def rerun(settings, name: str, *args: str) -> None:
    """The step with these command-line arguments, in this process (a subprocess costs ~5 s of imports)."""
    from pipeline.__main__ import build_parser
    from pipeline.steps import features, ingest, train

    parsed = vars(build_parser().parse_args([name, *args]))
    if name == "ingest":
        ingest.run(settings, source=parsed["source"])
    elif name == "features":
        features.run(settings)
    else:
        train.run(settings, feature_set=parsed["feature_set"], n_iter=parsed["n_iter"], cv=parsed["cv"],
                  n_jobs=parsed["n_jobs"])


def state(settings) -> dict:
    """Everything the steps write, comparable with ==."""
    from pipeline.store import postgres, s3 as s3_store

    with postgres.connect(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT passenger_id, survived, pclass, name, sex, age, sibsp, parch, ticket, fare, cabin, embarked,"
                    " batch_id, ingested_at FROM passengers ORDER BY passenger_id")
        passengers = cur.fetchall()
        cur.execute("SELECT batch_id, line_number, raw, reason FROM passengers_rejected ORDER BY 1, 2")
        rejected = cur.fetchall()
        cur.execute("SELECT version, status, artifact_uri FROM model_versions ORDER BY version")
        models = cur.fetchall()
    conn.close()
    client = redis.Redis.from_url(settings.redis_url)
    keys = {k: client.dump(k) for k in client.scan_iter(f"{settings.feature_store_prefix}:*")}
    client.close()
    s3 = s3_store.client(settings)
    buckets = {"raw": settings.bucket_raw, "features": settings.bucket_features, "models": settings.bucket_models}
    objects = {role: sorted(o.object_name for o in s3.list_objects(b, recursive=True))
               for role, b in buckets.items() if s3.bucket_exists(b)}
    return {"passengers": passengers, "rejected": rejected, "models": models, "redis": keys, "s3": objects}


def assert_one_line(proc, name: str, private_services) -> None:
    assert proc.returncode == EXIT_UNAVAILABLE, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and lines[-1].startswith(f"error: {name}: S3 "), proc.stderr[-3000:]
    assert lines[-1].endswith(f"(127.0.0.1:{private_services.s3_port})") and [x for x in lines if x.startswith("error:")] == lines[-1:]


def changed_file(tmp_path: Path) -> Path:
    """The dataset with other ages, a new passenger and a bad row: what a second ingest would change."""
    frame = pd.read_csv(TRAIN_CSV)
    frame["Age"] = frame["Age"] + 1
    extra = frame.iloc[[0, 1]].assign(PassengerId=[5000, 5001])
    extra.loc[extra.index[1], "Pclass"] = 9
    path = tmp_path / "changed.csv"
    pd.concat([frame, extra]).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name", ["ingest", "features", "train"])
def test_s3_down_during_a_step_changes_nothing_and_the_rerun_succeeds(deployment, private_services, tmp_path, name):
    settings, feature_set = deployment
    args = {"ingest": ["--source", str(changed_file(tmp_path))], "features": [],
            "train": ["--feature-set", feature_set, *TRAIN]}[name]
    before = state(settings)
    with local_services.stopped(private_services, "s3", VERSITYGW):
        proc = step(settings, name, *args)
    assert_one_line(proc, name, private_services)
    assert state(settings) == before  # no half batch, no half feature set, no candidate row without artefacts

    rerun(settings, name, *args)  # S3 is back: the same step now does its work
    after = state(settings)
    if name == "ingest":
        assert len(after["passengers"]) == len(before["passengers"]) + 1 and len(after["rejected"]) == 1
    elif name == "features":
        current = redis.Redis.from_url(settings.redis_url).get(f"{settings.feature_store_prefix}:fs:current")
        assert current.decode() != feature_set and len(after["redis"]) > len(before["redis"])
    else:
        assert len(after["models"]) == len(before["models"]) + 1


def _wait_for_object(settings, bucket: str, suffix: str, proc, timeout: float = 60.0) -> None:
    from pipeline.store import s3 as s3_store

    client = s3_store.client(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.bucket_exists(bucket) and any(o.object_name.endswith(suffix)
                                                for o in client.list_objects(bucket, recursive=True)):
            return
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"no *{suffix} in {bucket} within {timeout}s")


@contextlib.contextmanager
def held_at_last_write(private_services, settings, name: str):
    """Make `name` block at its last write, after its S3 objects: ingest and features on a frozen Postgres / Redis
    (their first connection to it comes after S3), train on a lock of `model_versions` (it reads Postgres first)."""
    if name == "train":
        from pipeline.store import postgres

        conn = postgres.connect(settings)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("LOCK TABLE model_versions IN ACCESS EXCLUSIVE MODE")
                yield
        finally:
            conn.close()
        return
    pid = (int((Path(private_services.pg_dir) / "postmaster.pid").read_text().split()[0]) if name == "ingest"
           else int((Path(private_services.root) / "redis" / "redis.pid").read_text()))
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# step -> (bucket, suffix) of the object whose presence shows the step is past its S3 writes
WRITTEN_FIRST = {"ingest": ("raw", ".csv"), "features": ("features", "groups.parquet"), "train": ("models", "metadata.json")}


@pytest.mark.parametrize("name", list(WRITTEN_FIRST))
def test_a_step_killed_half_way_and_rerun_converges(private_services, name):
    """SIGKILL between a step's S3 writes and its Postgres/Redis write; the re-run ends where an uninterrupted run does."""
    from pipeline.steps import features, ingest

    interrupted, control = (make_settings(private_services, uuid.uuid4().hex[:10]) for _ in range(2))
    for settings in (interrupted, control):  # both start from the same inputs
        if name != "ingest":
            ingest.run(settings, source=str(TRAIN_CSV))
        if name == "train":
            features.run(settings)
    args = {"ingest": ["--source", str(TRAIN_CSV)], "features": [], "train": []}[name]
    bucket, suffix = WRITTEN_FIRST[name]

    def train_args(settings):
        fs = redis.Redis.from_url(settings.redis_url).get(f"{settings.feature_store_prefix}:fs:current").decode()
        return ["--feature-set", fs, *TRAIN]

    patient = {"POSTGRES_CONNECT_TIMEOUT": "120", "REDIS_SOCKET_TIMEOUT": "120"}  # the step waits, it does not fail
    proc = None
    with held_at_last_write(private_services, interrupted, name):
        try:
            proc = step(interrupted, name, *(train_args(interrupted) if name == "train" else args), env=patient,
                        wait=False)
            _wait_for_object(interrupted, getattr(interrupted, f"bucket_{bucket}"), suffix, proc)
            time.sleep(0.3)  # the step is now blocked at its last write
            assert proc.poll() is None
        finally:
            if proc:
                proc.kill()
                proc.wait(timeout=10)
                proc.stdout.close()
                proc.stderr.close()
    killed = state(interrupted)

    for settings in (interrupted, control):  # the re-run, and the uninterrupted run it must end like
        rerun(settings, name, *(train_args(settings) if name == "train" else args))
    got, expected = state(interrupted), state(control)
    if name == "ingest":
        strip = lambda rows: [r[:-1] for r in rows]  # ingested_at: the clock
        assert strip(got["passengers"]) == strip(expected["passengers"]) and got["rejected"] == expected["rejected"]
        assert killed["passengers"] == [] and got["s3"] == expected["s3"]  # the raw file's key is its content hash
    elif name == "features":
        pd.testing.assert_frame_equal(_current_features(interrupted), _current_features(control))
        current = f"{interrupted.feature_store_prefix}:fs:current".encode()
        assert current not in killed["redis"]  # the killed build never became current
    else:
        assert killed["models"] == []  # artefacts were written, the row was not: nothing half-registered
        assert [row[1] for row in got["models"]] == ["candidate"]
        from pipeline import registry
        from pipeline.store import postgres

        metrics = []
        for settings in (interrupted, control):
            conn = postgres.connect(settings)
            metrics.append(registry.latest(conn, settings.model_name)["metrics"])
            conn.close()
        assert metrics[0] == metrics[1]  # the same model, trained again


def _current_features(settings) -> pd.DataFrame:
    from pipeline.store.feature_store import FeatureStore

    store = FeatureStore(settings)
    frame = store.read(store.current())
    store.client.close()
    return frame
