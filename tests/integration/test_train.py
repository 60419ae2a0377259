"""Train step against real Postgres, Redis and S3: artefacts, registry row, reproducibility, errors."""

from __future__ import annotations

import hashlib
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline import features, model, registry, schema
from pipeline.errors import FeatureSetNotFound
from pipeline.steps import features as features_step
from pipeline.serving import artifacts
from pipeline.steps import evaluate, ingest, score, train
from pipeline.store import postgres
from pipeline.store import s3 as s3_store
from tests.conftest import REPO, TRAIN_CSV, make_settings, settings_env

pytestmark = pytest.mark.integration

ARTEFACTS = {"model.joblib", "metadata.json", "reference.json", "confusion_matrix.png", "roc_curve.png",
             "feature_importances.png"}


@pytest.fixture(scope="module")
def built(services):
    """An isolated deployment with train.csv ingested and one feature set built."""
    settings = make_settings(services, "trainmod")
    ingest.run(settings, source=str(TRAIN_CSV))
    return settings, features_step.run(settings)["feature_set"]


def test_training_writes_every_artefact_and_then_a_candidate_row(built):
    settings, feature_set = built
    result = train.run(settings, feature_set=feature_set, n_iter=2, cv=3, seed=7, cv_repeats=1)
    bucket, prefix = s3_store.split_uri(result["artifact_uri"])
    names = {o.object_name.rsplit("/", 1)[1] for o in s3_store.client(settings).list_objects(bucket, prefix + "/")}
    assert names == ARTEFACTS
    for png in ARTEFACTS - {"model.joblib", "metadata.json", "reference.json"}:
        assert s3_store.get_bytes(s3_store.client(settings), bucket, f"{prefix}/{png}")[:8] == b"\x89PNG\r\n\x1a\n"

    conn = postgres.connect(settings)
    try:
        row = registry.get(conn, settings.model_name, result["version"])
    finally:
        conn.close()
    assert row["status"] == "candidate"
    assert row["feature_set"] == feature_set and row["artifact_uri"] == result["artifact_uri"]
    assert row["metrics"]["accuracy"] == result["metrics"]["accuracy"]


def test_metadata_and_reference(trained_model):
    assert trained_model.evaluation["approved"] and trained_model.status == "production"
    meta = trained_model.metadata
    assert meta["version"] == trained_model.version and meta["feature_set"] == trained_model.feature_set
    assert meta["feature_columns"] == features.FEATURE_COLUMNS
    assert meta["numeric_features"] == features.NUMERIC_FEATURES
    assert meta["categorical_features"] == features.CATEGORICAL_FEATURES
    metrics = meta["metrics"]
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc", "cv_mean", "cv_std", "repeated_cv_mean",
                 "repeated_cv_std"):
        assert 0 <= metrics[name] <= 1, name
    repeated = meta["validation"]["repeated_cv"]  # fresh folds of the chosen configuration, one score per fold
    assert metrics["repeated_cv_folds"] == len(repeated["scores"]) == repeated["splits"] * repeated["repeats"]
    assert metrics["repeated_cv_mean"] == pytest.approx(np.mean(repeated["scores"]))
    assert metrics["repeated_cv_std"] == pytest.approx(np.std(repeated["scores"])) and metrics["repeated_cv_std"] > 0
    assert metrics["holdout_size"] == 179 and metrics["train_size"] == 712  # stratified 20 % of 891
    assert np.asarray(metrics["confusion_matrix"]).sum() == 179
    assert len(meta["holdout_ids"]) == 179
    assert set(meta["params"]) == {k.split("__", 1)[1] for k in model.SEARCH_SPACE}
    assert len(meta["data_sha256"]) == 64
    assert {"scikit-learn", "pandas", "numpy", "python"} <= set(meta["library_versions"])
    assert "package" in meta["code_version"]

    ref = trained_model.reference
    assert ref["rows"] == 712 and set(ref["features"]) == set(features.FEATURE_COLUMNS)
    age = ref["features"]["Age"]
    assert age["type"] == "numeric" and len(age["proportions"]) == len(age["edges"]) + 1
    assert sum(age["proportions"]) + age["missing"] == pytest.approx(1)
    assert 0.15 < age["missing"] < 0.25  # ~20 % of ages are unknown
    sex = ref["features"]["Sex"]
    assert sex["type"] == "categorical" and set(sex["proportions"]) == {"male", "female"}
    assert sum(sex["proportions"].values()) == pytest.approx(1)


def test_saved_pipeline_takes_raw_feature_frames(trained_model):
    """Serving contract: model.joblib's input is features.transform output, imputation included."""
    instance = {"Name": "Doe, Mrs. Jane", "Sex": "female", "Age": None, "Pclass": 1, "SibSp": 1, "Parch": 0,
                "Fare": None, "Embarked": None, "Cabin": None}
    frame = features.transform(schema.validate(pd.DataFrame([instance]), require_id=False).valid)
    proba = trained_model.pipeline.predict_proba(frame)[0, 1]
    assert proba > 0.5  # a first-class woman survives, even with missing age, fare and port


def test_same_data_and_seed_give_identical_metrics_and_predictions(built):
    settings, feature_set = built
    first = train.run(settings, feature_set=feature_set, n_iter=2, cv=3, seed=11, cv_repeats=1)
    second = train.run(settings, feature_set=feature_set, n_iter=2, cv=3, seed=11, cv_repeats=1)
    assert first["version"] != second["version"]
    assert first["metrics"] == second["metrics"] and first["params"] == second["params"]
    a, b = model.load(settings, first["artifact_uri"]), model.load(settings, second["artifact_uri"])
    X, _, _ = train.load_training_frame(settings, feature_set)
    assert a.predict_proba(X).tobytes() == b.predict_proba(X).tobytes()
    meta_a, meta_b = (model.load_json(settings, r["artifact_uri"]) for r in (first, second))
    assert meta_a["data_sha256"] == meta_b["data_sha256"]
    assert meta_a["holdout_ids"] == meta_b["holdout_ids"]


def test_missing_feature_set_is_a_clear_error(settings):
    with pytest.raises(FeatureSetNotFound, match="nope"):
        train.run(settings, feature_set="nope")


def test_unlabelled_feature_set_is_refused(settings, tmp_path):
    csv = TRAIN_CSV.read_text().splitlines()
    unlabelled = "\n".join([csv[0]] + [",".join([r.split(",", 2)[0], ""] + [r.split(",", 2)[2]]) for r in csv[1:40]])
    path = tmp_path / "unlabelled.csv"
    path.write_text(unlabelled + "\n")
    ingest.run(settings, source=str(path))
    feature_set = features_step.run(settings)["feature_set"]
    with pytest.raises(train.NotEnoughData, match="0 labelled passengers"):
        train.run(settings, feature_set=feature_set, n_iter=1)


def test_cli_reports_a_missing_feature_set(settings):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "train", "--feature-set", "20000101T000000Z-000000"],
                          env={**settings_env(settings), "PATH": "/usr/bin:/bin"}, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "error: train: feature set '20000101T000000Z-000000' does not exist" in proc.stderr


def test_snapshot_of_the_feature_set_matches_what_training_read(built):
    settings, feature_set = built
    X, y, source = train.load_training_frame(settings, feature_set)
    assert source == "redis"
    snapshot = features_step.read_snapshot(settings, feature_set)
    pd.testing.assert_frame_equal(snapshot[[*features.FEATURE_COLUMNS, model.GROUP_COLUMN]], X, check_names=False)
    assert (snapshot[schema.LABEL].astype(int) == y).all()


def test_group_model_trains_on_fold_statistics_and_is_evaluated_with_the_sets(built):
    settings, feature_set = built
    result = train.run(settings, feature_set=feature_set, n_iter=1, cv=3, seed=5, n_jobs=1, group_features=True)
    meta = model.load_json(settings, result["artifact_uri"])
    assert meta["group_features"] is True and meta["feature_set"] == feature_set
    assert meta["feature_columns"] == features.FEATURE_COLUMNS + features.GROUP_FEATURES
    saved = model.load(settings, result["artifact_uri"])
    assert saved.named_steps["preprocess"].transformers_[0][2][-4:] == features.GROUP_FEATURES  # a plain Pipeline
    verdict = evaluate.run(settings, result["version"], min_accuracy=0.5)
    # the gate scores the saved Pipeline on the hold-out with the statistics of the training labels only: the
    # same figure as the train step's, not one flattered by the other hold-out rows' labels
    assert verdict["accuracy"] == result["metrics"]["accuracy"]


class _Touch:
    """Unpickled, it creates a file: what anyone holding the S3 key could put in place of a model."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def test_a_model_overwritten_after_training_is_refused_before_unpickling(built, tmp_path):
    settings, feature_set = built
    result = train.run(settings, feature_set=feature_set, n_iter=1, cv=3, seed=5)
    uri, version = result["artifact_uri"], result["version"]
    conn = postgres.connect(settings)
    try:
        recorded = registry.get(conn, settings.model_name, version)["artifact_sha256"]
    finally:
        conn.close()
    client = s3_store.client(settings)
    bucket, prefix = s3_store.split_uri(uri)
    assert set(recorded) == ARTEFACTS
    for name in ARTEFACTS:
        assert recorded[name] == hashlib.sha256(s3_store.get_bytes(client, bucket, f"{prefix}/{name}")).hexdigest()

    marker = tmp_path / "unpickled"
    evil = pickle.dumps(_Touch(marker))
    s3_store.put_bytes(client, bucket, f"{prefix}/model.joblib", evil, "application/octet-stream")
    hashes = (recorded["model.joblib"], hashlib.sha256(evil).hexdigest())

    with pytest.raises(registry.ArtifactMismatch) as refused:
        evaluate.run(settings, version=version, min_accuracy=0.0)
    assert f"{uri}/model.joblib" in str(refused.value) and all(h in str(refused.value) for h in hashes)
    with pytest.raises(registry.ArtifactMismatch):
        score.run(settings, version=version, input=str(TRAIN_CSV))
    with pytest.raises(registry.ArtifactMismatch):
        artifacts.load(settings, model_version=version)
    proc = subprocess.run([sys.executable, "-m", "pipeline.serving", "predictor", "--model_uri", uri,
                           "--http_port", "0", "--enable_grpc", "false"],
                          env={**os.environ, **settings_env(settings), "PYTHONPATH": str(REPO)}, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "error: predictor: model artefact" in proc.stderr and "model.joblib" in proc.stderr
    assert all(h in proc.stderr for h in hashes)
    assert not marker.exists()  # refused before unpickling: the code in the pickle never ran


def test_training_falls_back_to_the_snapshot_of_a_set_redis_no_longer_has(settings):
    """Collected from Redis (FEATURE_SETS_KEEP newer sets) or Redis emptied: train reads the set's offline
    snapshot and trains on exactly the same data; with neither, the error names both places."""
    from pipeline.store.feature_store import FeatureStore

    ingest.run(settings, source=str(TRAIN_CSV))
    feature_set = features_step.run(settings)["feature_set"]
    online = train.run(settings, feature_set=feature_set, n_iter=1, cv=2, seed=5, n_jobs=1)
    store = FeatureStore(settings.model_copy(update={"feature_sets_keep": 1}))
    store.write(store.read(feature_set))  # a newer set, after which GC keeps only that one
    with pytest.raises(FeatureSetNotFound):
        store.read(feature_set)

    offline = train.run(settings, feature_set=feature_set, n_iter=1, cv=2, seed=5, n_jobs=1)
    assert (online["feature_source"], offline["feature_source"]) == ("redis", "snapshot")
    assert offline["metrics"] == online["metrics"] and offline["params"] == online["params"]
    metas = [model.load_json(settings, r["artifact_uri"]) for r in (online, offline)]
    assert metas[0]["data_sha256"] == metas[1]["data_sha256"] and metas[0]["holdout_ids"] == metas[1]["holdout_ids"]

    s3_store.client(settings).remove_object(settings.bucket_features, features_step.snapshot_key(settings, feature_set))
    with pytest.raises(FeatureSetNotFound, match="does not exist in the online store .*nor has it an offline snapshot"):
        train.run(settings, feature_set=feature_set, n_iter=1, cv=2, n_jobs=1)
