"""`python -m pipeline run-all` end to end and `score`, against real Postgres, Redis and S3."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline import registry
from pipeline.errors import ModelNotFound, SchemaError
from pipeline.steps import score
from pipeline.store import postgres
from pipeline.store import s3 as s3_store
from pipeline.store.feature_store import FeatureStore
from tests.conftest import REPO, TRAIN_CSV, TRAIN_SHA256, settings_env

pytestmark = pytest.mark.integration


def cli(settings, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env={**settings_env(settings), "PATH": "/usr/bin:/bin"},
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_run_all_produces_a_production_model_with_plots_and_metadata(settings):
    proc = cli(settings, "run-all", "--source", str(TRAIN_CSV), "--sha256", TRAIN_SHA256, "--n-iter", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["approved"] is True and result["status"] == "production"
    assert result["artifact_uri"] == f"s3://{settings.bucket_models}/titanic/{result['version']}"
    assert result["metrics"]["accuracy"] >= 0.78

    bucket, prefix = s3_store.split_uri(result["artifact_uri"])
    names = {o.object_name.rsplit("/", 1)[1] for o in s3_store.client(settings).list_objects(bucket, prefix + "/")}
    assert {"model.joblib", "metadata.json", "reference.json", "confusion_matrix.png", "roc_curve.png",
            "feature_importances.png"} <= names
    assert FeatureStore(settings).current() == result["feature_set"]
    conn = postgres.connect(settings)
    try:
        production = registry.get_production(conn, settings.model_name)
        assert production["version"] == result["version"]
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM passengers")
            assert cur.fetchone()[0] == 891
    finally:
        conn.close()


def test_score_reports_metrics_and_invalid_rows(trained_model, tmp_path):
    lines = TRAIN_CSV.read_text().splitlines()
    bad = [
        lines[1].replace(",male,", ",robot,"),  # invalid Sex
        "9001,,3,\"Doe, Mr. John\",male,30,0,0,X,7.25,,S",  # unlabelled: cannot be scored
        "9002,1,3",  # malformed line
    ]
    path = tmp_path / "new.csv"
    path.write_text("\n".join([lines[0], *lines[2:201], *bad]) + "\n")
    result = score.run(trained_model.settings, version=trained_model.version, input=str(path))
    assert result["version"] == trained_model.version
    assert result["rows"] == 199 and result["rows_invalid"] == 3
    assert [r["line"] for r in result["invalid"]] == [201, 202, 203]
    assert "Sex" in result["invalid"][0]["reason"] and "Survived" in result["invalid"][1]["reason"]
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc"):
        assert 0.5 < result[name] <= 1, name

    # the aliases resolve through the registry (other layers' tests may add versions to this deployment)
    conn = postgres.connect(trained_model.settings)
    try:
        production = registry.get_production(conn, trained_model.settings.model_name)["version"]
        latest = registry.latest(conn, trained_model.settings.model_name)["version"]
    finally:
        conn.close()
    assert score.run(trained_model.settings, version="production", input=str(path))["version"] == production
    assert score.run(trained_model.settings, version="latest", input=str(path))["version"] == latest


def test_score_cli_prints_one_json_line(trained_model):
    proc = cli(trained_model.settings, "score", "--version", trained_model.version, "--input", str(TRAIN_CSV))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows"] == 891 and result["rows_invalid"] == 0
    assert 0.8 < result["accuracy"] < 1  # mostly training rows, so high; not a quality claim


def test_score_errors(trained_model, settings, tmp_path):
    with pytest.raises(ModelNotFound, match="no version 'nope'"):
        score.run(trained_model.settings, version="nope", input=str(TRAIN_CSV))
    with pytest.raises(ModelNotFound, match="no production version"):
        score.run(settings, version="production", input=str(TRAIN_CSV))
    unlabelled = tmp_path / "test.csv"
    header = TRAIN_CSV.read_text().splitlines()[0].replace("Survived,", "")
    unlabelled.write_text(header + "\n892,3,\"Kelly, Mr. James\",male,34.5,0,0,330911,7.8292,,Q\n")
    with pytest.raises(SchemaError, match="no Survived column"):
        score.run(trained_model.settings, version=trained_model.version, input=str(unlabelled))
