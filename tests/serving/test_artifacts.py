"""Artefact loading rules: exactly one readable model artefact, or the predictor refuses to start."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import joblib
import pytest

from pipeline.serving import artifacts
from tests.conftest import REPO


def _folder(tmp_path, *files: tuple[str, bytes]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "metadata.json").write_text(json.dumps({"version": "v-test"}))
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("files, message", [
    ((), "no model artefact"),
    ((("model.joblib", b"x"), ("old.pkl", b"y")), "several model artefacts"),
    ((("model.joblib", b"\x00not a pickle at all"),), "is unreadable"),
])
def test_load_refuses_bad_folders(tmp_path, files, message):
    with pytest.raises(artifacts.ArtifactError, match=message):
        artifacts.load_folder(_folder(tmp_path, *files), with_model=True)


def test_load_refuses_a_pickle_that_is_not_a_classifier(tmp_path):
    folder = _folder(tmp_path)
    joblib.dump({"not": "a model"}, folder / "model.joblib")
    with pytest.raises(artifacts.ArtifactError, match="not a classifier"):
        artifacts.load_folder(folder, with_model=True)


def test_plots_and_json_are_not_artefacts(tmp_path, trained_model):
    folder = _folder(tmp_path, ("roc_curve.png", b"png"), ("reference.json", b"{}"))
    joblib.dump(trained_model.pipeline, folder / "model.joblib")
    loaded = artifacts.load_folder(folder, with_model=True)
    assert loaded.version == "v-test" and hasattr(loaded.pipeline, "predict_proba")


def test_load_from_s3_and_registry(trained_model):
    by_uri = artifacts.load(trained_model.settings, model_uri=trained_model.artifact_uri, with_model=False)
    assert by_uri.version == trained_model.version
    assert by_uri.reference["features"].keys() == trained_model.reference["features"].keys()
    if trained_model.status == "production":
        by_registry = artifacts.load(trained_model.settings, model_version="production", with_model=True)
        assert by_registry.version == trained_model.version
    with pytest.raises(artifacts.ArtifactError, match="nothing stored"):
        artifacts.load(trained_model.settings, model_uri=trained_model.artifact_uri + "-missing")


@pytest.mark.parametrize("files, message", [
    ((), "no model artefact"),
    ((("model.joblib", b"x"), ("model.pkl", b"y")), "several model artefacts"),
    ((("model.joblib", b"garbage"),), "is unreadable"),
])
def test_predictor_process_refuses_to_start(tmp_path, files, message):
    """The real entry point exits non-zero with the reason instead of serving."""
    folder = _folder(tmp_path / "m", *files)
    proc = subprocess.run([sys.executable, "-m", "pipeline.serving", "predictor", "--model_dir", str(folder),
                           "--http_port", "0", "--enable_grpc", "false"],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "error: predictor: " in proc.stderr and message in proc.stderr


def test_model_sha256_setting_guards_a_local_folder(tmp_path, trained_model):
    """In the cluster the predictor has no database: MODEL_SHA256 carries the registry's hash."""
    import hashlib

    from pipeline import registry

    folder = _folder(tmp_path)
    joblib.dump(trained_model.pipeline, folder / "model.joblib")
    good = hashlib.sha256((folder / "model.joblib").read_bytes()).hexdigest()
    settings = trained_model.settings.model_copy(update={"model_sha256": good})
    assert artifacts.load(settings, model_dir=str(folder)).pipeline is not None
    with pytest.raises(registry.ArtifactMismatch, match=f"registry recorded {'0' * 64}"):
        artifacts.load(settings.model_copy(update={"model_sha256": "0" * 64}), model_dir=str(folder))
