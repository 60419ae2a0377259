"""Features step: compute features of the ingested passengers, publish them as a new versioned feature set."""

from __future__ import annotations

import argparse
import io
import logging
import time

import pandas as pd

from pipeline import features, schema
from pipeline.errors import FeatureSetNotFound, PipelineError
from pipeline.settings import Settings
from pipeline.store import postgres, s3
from pipeline.store.feature_store import FeatureStore, new_version

logger = logging.getLogger(__name__)

# passengers column -> raw record column (as schema.validate names them)
_COLUMNS = {
    "passenger_id": schema.ID, "survived": schema.LABEL, "pclass": "Pclass", "name": "Name", "sex": "Sex",
    "age": "Age", "sibsp": "SibSp", "parch": "Parch", "ticket": "Ticket", "fare": "Fare", "cabin": "Cabin",
    "embarked": "Embarked",
}


class NoPassengers(PipelineError):
    """There is nothing to compute features from."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", default=None,
                        help="only the passengers of this ingest batch id (default: every passenger)")


def load_passengers(conn, batch: str | None = None) -> pd.DataFrame:
    """Passengers as typed raw records (schema column names), ordered by PassengerId."""
    where, params = ("WHERE batch_id = %s", (batch,)) if batch else ("", ())
    with conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(_COLUMNS)} FROM passengers {where} ORDER BY passenger_id", params)
        rows = cur.fetchall()
    frame = pd.DataFrame(rows, columns=list(_COLUMNS.values()))
    return frame.astype({"Age": "float64", "Fare": "float64", "Pclass": "int64", "SibSp": "int64",
                         "Parch": "int64", schema.ID: "int64", schema.LABEL: "Int64"})


def snapshot_key(settings: Settings, version: str) -> str:
    """Object key of a feature set's offline snapshot in the features bucket."""
    return f"{settings.model_name}/feature_sets/{version}/features.parquet"


def read_snapshot(settings: Settings, version: str) -> pd.DataFrame:
    """The offline snapshot (PassengerId index, features and Survived) of a feature set."""
    client = s3.client(settings)
    try:
        data = s3.get_bytes(client, settings.bucket_features, snapshot_key(settings, version))
    except Exception as exc:  # S3Error and transport errors alike mean "not there" to the caller
        raise FeatureSetNotFound(f"no offline snapshot of feature set {version!r}: {exc}") from exc
    return pd.read_parquet(io.BytesIO(data))


def run(settings: Settings, batch: str | None = None) -> dict:
    conn = postgres.connect(settings)
    try:
        passengers = load_passengers(conn, batch)
    finally:
        conn.close()
    if passengers.empty:
        scope = f"batch {batch!r}" if batch else "the passengers table"
        raise NoPassengers(f"no passengers in {scope}; run `python -m pipeline ingest` first")

    frame = features.transform(passengers).set_axis(pd.Index(passengers[schema.ID], name=schema.ID))
    version = new_version()

    # offline snapshot first (with ids and the label): the reproducible copy training can always go back to
    snapshot = frame.assign(**{schema.LABEL: passengers[schema.LABEL].to_numpy()})
    buf = io.BytesIO()
    snapshot.to_parquet(buf, index=True)
    client = s3.client(settings)
    s3.ensure_buckets(client, settings)
    key = snapshot_key(settings, version)
    s3.put_bytes(client, settings.bucket_features, key, buf.getvalue(), "application/vnd.apache.parquet")

    store = FeatureStore(settings)
    started = time.perf_counter()
    store.write(frame, version, activate=False)  # label kept out of the online store
    write_ms = (time.perf_counter() - started) * 1000
    store.activate(version)
    summary = {
        "feature_set": version,
        "rows": len(frame),
        "columns": features.FEATURE_COLUMNS,
        "batch": batch,
        "snapshot_uri": f"s3://{settings.bucket_features}/{key}",
        "redis_write_ms": round(write_ms, 2),
    }
    logger.info("feature set %s: %d rows", version, len(frame))
    return summary
