"""Features step: compute features of the ingested passengers, publish them as a new versioned feature set."""

from __future__ import annotations

import argparse
import io
import logging
import time

import numpy as np
import pandas as pd

from pipeline import faults, features, model, schema
from pipeline.errors import FeatureSetNotFound, PipelineError
from pipeline.settings import Settings
from pipeline.store import postgres, s3
from pipeline.store.feature_store import GROUPS_VIEW, FeatureStore, new_version

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


def groups_key(settings: Settings, version: str) -> str:
    """Object key of a feature set's group statistics (offline copy) in the features bucket."""
    return f"{settings.model_name}/feature_sets/{version}/groups.parquet"


def group_statistics(passengers: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Per group id, counts of the labelled passengers (the serving statistics: every known label counts)."""
    labelled = passengers[schema.LABEL].notna().to_numpy()
    wc = features.woman_or_child(frame)
    stats = features.group_statistics(frame[model.GROUP_COLUMN].to_numpy()[labelled], wc[labelled],
                                      passengers[schema.LABEL].to_numpy()[labelled].astype("int64"))
    return stats.rename_axis(model.GROUP_COLUMN)


def read_groups(settings: Settings, version: str) -> pd.DataFrame:
    """The offline copy of a feature set's group statistics (index: group id)."""
    try:
        data = s3.get_bytes(s3.client(settings), settings.bucket_features, groups_key(settings, version))
    except Exception as exc:
        if faults.describe(exc, settings):
            raise
        raise FeatureSetNotFound(f"no group statistics of feature set {version!r}: {exc}") from exc
    return pd.read_parquet(io.BytesIO(data))


class GroupStatistics:
    """The group statistics of one feature-set version, as serving reads them: one MGET per batch from the online
    store's group view, or the offline copy (read once, kept) once Redis no longer has that version. By version,
    never "the newest": a retraining must not change the inputs of the model that is live."""

    def __init__(self, settings: Settings):
        self.settings, self.store = settings, FeatureStore(settings, view=GROUPS_VIEW)
        self._offline: dict[str, pd.DataFrame] = {}

    def counts(self, version: str, groups: list[str]) -> dict[str, list[float]]:
        """GROUP_STAT_COLUMNS of the known groups among `groups`, by group id; redis.RedisError when Redis cannot be
        read."""
        wanted = [g for g in dict.fromkeys(groups) if g]
        if version not in self._offline:
            if not wanted:
                return {}
            try:
                found = self.store.lookup_records(version, wanted)
                return {g: [float(r[c]) for c in features.GROUP_STAT_COLUMNS] for g, r in found.items()}
            except FeatureSetNotFound:
                logger.warning("group statistics of feature set %s are not in Redis: serving its offline copy", version)
                self._offline[version] = read_groups(self.settings, version)
        stats = self._offline[version]
        known = stats.loc[stats.index.intersection(wanted), features.GROUP_STAT_COLUMNS]
        return dict(zip(known.index, known.to_numpy(dtype="float64").tolist()))

    def lookup(self, version: str, groups: list[str]) -> pd.DataFrame:
        """`counts` as rows (index: group id) of the known groups among `groups`."""
        counts = self.counts(version, groups)
        return pd.DataFrame(list(counts.values()), columns=features.GROUP_STAT_COLUMNS,
                            index=pd.Index(list(counts), dtype=object), dtype="float64")

    def add_to(self, X: pd.DataFrame, version: str, groups) -> pd.DataFrame:
        """`X` with the GROUP_FEATURES of `groups` from `version`'s statistics (scoring)."""
        groups = np.asarray(groups, dtype=object)
        return features.add_group_features(X, groups, self.lookup(version, groups.tolist()))


def read_snapshot(settings: Settings, version: str) -> pd.DataFrame:
    """The offline snapshot (PassengerId index, features and Survived) of a feature set."""
    client = s3.client(settings)
    try:
        data = s3.get_bytes(client, settings.bucket_features, snapshot_key(settings, version))
    except Exception as exc:  # any S3Error means "not there" to the caller; an S3 outage does not
        if faults.describe(exc, settings):
            raise
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
    # the group id is stored with each passenger: training learns the group statistics of its own split from it
    frame[model.GROUP_COLUMN] = features.passenger_groups(passengers)
    groups = group_statistics(passengers, frame)
    version = new_version()

    # offline snapshot first (with ids and the label): the reproducible copy training can always go back to
    snapshot = frame.assign(**{schema.LABEL: passengers[schema.LABEL].to_numpy()})
    buf = io.BytesIO()
    snapshot.to_parquet(buf, index=True)
    client = s3.client(settings)
    s3.ensure_buckets(client, settings)
    key = snapshot_key(settings, version)
    s3.put_bytes(client, settings.bucket_features, key, buf.getvalue(), "application/vnd.apache.parquet")
    buf = io.BytesIO()
    groups.to_parquet(buf, index=True)
    s3.put_bytes(client, settings.bucket_features, groups_key(settings, version), buf.getvalue(),
                 "application/vnd.apache.parquet")

    store, group_store = FeatureStore(settings), FeatureStore(settings, view=GROUPS_VIEW)
    started = time.perf_counter()
    store.write(frame, version, activate=False)  # label kept out of the online store
    write_ms = (time.perf_counter() - started) * 1000
    group_store.write(groups, version, activate=False)  # counts, not labels: what serving looks up by the model's version
    group_store.activate(version)  # first: a passenger set is current only once its groups are complete
    store.activate(version)
    summary = {
        "feature_set": version,
        "rows": len(frame),
        "groups": len(groups),
        "columns": features.FEATURE_COLUMNS,
        "batch": batch,
        "snapshot_uri": f"s3://{settings.bucket_features}/{key}",
        "redis_write_ms": round(write_ms, 2),
    }
    logger.info("feature set %s: %d rows", version, len(frame))
    return summary
