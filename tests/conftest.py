"""Session fixtures: real Postgres, Redis and S3 processes, and per-test isolated settings."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import psycopg2
import pytest

from tests import inputs
from tests import services as local_services
from tests.inputs import TRAIN_CSV, TRAIN_SHA256  # noqa: F401 - the tests import them from here

REPO = Path(__file__).resolve().parent.parent
VERSITYGW = os.environ.get("VERSITYGW", str(REPO / "bin" / "versitygw"))

pytest_plugins = ["tests.fixtures.training", "tests.fixtures.serving"]  # fixture modules of other layers register here, e.g. "tests.fixtures.serving"


def pytest_sessionstart(session):
    """The pinned test inputs are there before any test reads them (fetched once unless ../shared has them)."""
    try:
        inputs.ensure()
    except inputs.Unavailable as exc:
        pytest.exit(f"error: test inputs: {exc}", returncode=1)


def _servers(prefix: str):
    # Not under pytest's tmp dir: that is private to root, and Postgres runs as its own user.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    started = local_services.up(root, VERSITYGW)
    yield started
    local_services.down(root)


@pytest.fixture(scope="session")
def services() -> local_services.Services:
    """Postgres 15, Redis and versitygw on free ports for the whole session, stopped afterwards."""
    yield from _servers("titanic-services-")


@pytest.fixture(scope="module")
def private_services() -> local_services.Services:
    """Postgres, Redis and S3 of one test module, for tests that stop and restart them (the session's stay up)."""
    yield from _servers("titanic-private-")


def make_settings(services: local_services.Services, tag: str, **overrides):
    """Settings isolated under `tag`: own Postgres schema, Redis key prefix and buckets."""
    from pipeline.settings import Settings

    schema = f"t_{tag}"
    with psycopg2.connect(services.database_url) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    conn.close()
    env = services.env()
    values = dict(
        database_url=f"{services.database_url}?options=-csearch_path%3D{schema}",
        redis_url=env["REDIS_URL"],
        s3_endpoint=env["S3_ENDPOINT"],
        s3_access_key=env["S3_ACCESS_KEY"],
        s3_secret_key=env["S3_SECRET_KEY"],
        s3_secure=False,
        bucket_raw=f"{tag}-raw",
        bucket_features=f"{tag}-features",
        bucket_models=f"{tag}-models",
        feature_store_prefix=f"test:{tag}",
        dataset_url=str(TRAIN_CSV),
        dataset_sha256=TRAIN_SHA256,
    )
    values.update(overrides)
    return Settings(**values)


def settings_env(settings) -> dict[str, str]:
    """The environment variables that rebuild `settings` in a subprocess (a step, a server)."""
    env = {}
    for name, value in settings.model_dump(exclude_none=True).items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, (list, dict)):
            value = json.dumps(value)
        env[name.upper()] = str(value)
    return env


@pytest.fixture
def settings(services):
    """A fresh, isolated `Settings` per test (schema, key prefix and buckets are unique to it)."""
    return make_settings(services, uuid.uuid4().hex[:10])


@pytest.fixture
def db(settings):
    """A migrated connection in the test's own schema."""
    from pipeline.store import postgres

    conn = postgres.connect(settings)
    yield conn
    conn.close()


@pytest.fixture
def s3(settings):
    from pipeline.store import s3 as s3_store

    client = s3_store.client(settings)
    s3_store.ensure_buckets(client, settings)
    return client
