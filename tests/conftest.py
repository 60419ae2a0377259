"""Session fixtures: real Postgres, Redis and S3 processes, and per-test isolated settings."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import psycopg2
import pytest

from tests import services as local_services

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))
TRAIN_CSV = SHARED / "data" / "titanic" / "train.csv"
TRAIN_SHA256 = "7d118fef8b6ccf7f81111877bc388536f7b1e498a655e3d649d19aaa010e9f6f"
VERSITYGW = os.environ.get("VERSITYGW", str(REPO / "bin" / "versitygw"))

pytest_plugins = ["tests.fixtures.training", "tests.fixtures.serving"]  # fixture modules of other layers register here, e.g. "tests.fixtures.serving"


@pytest.fixture(scope="session")
def services() -> local_services.Services:
    """Postgres 15, Redis and versitygw on free ports for the whole session, stopped afterwards."""
    # Not under pytest's tmp dir: that is private to root, and Postgres runs as its own user.
    root = Path(tempfile.mkdtemp(prefix="titanic-services-"))
    started = local_services.up(root, VERSITYGW)
    yield started
    local_services.down(root)


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
