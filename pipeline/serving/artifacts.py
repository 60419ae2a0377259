"""Where the model server finds its model version, and the rules for loading it.

A model folder (`s3://<models>/<name>/<version>/`, or `/mnt/models` where KServe's storage
initializer copies `storageUri`) holds exactly one model artefact (`model.joblib`) next to
`metadata.json` and `reference.json`. Zero or several artefacts, or an unreadable one, stop
the server before it reports ready: serving a guess is worse than not serving.

The artefact is unpickled only if its sha256 is the one the registry recorded at training
(from the registry row of `--model_version`/`--model_uri`, or `MODEL_SHA256` where the server
has no database): the S3 key that reads the folder may also write it.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

# As KServe's sklearnserver: any of these counts as a model artefact.
MODEL_EXTENSIONS = (".joblib", ".pkl", ".pickle")
METADATA_FILE = "metadata.json"
REFERENCE_FILE = "reference.json"
DEFAULT_MODEL_DIR = "/mnt/models"


class ArtifactError(PipelineError):
    """The model folder cannot be served: no artefact, several, or an unreadable one."""


@dataclass
class ModelArtifacts:
    """One model version as the server uses it."""

    version: str
    source: str
    metadata: dict[str, Any]
    reference: dict[str, Any] | None
    pipeline: Any = field(default=None, repr=False)  # the fitted sklearn Pipeline (predictor only)

    @property
    def numeric_features(self) -> list[str]:
        return list(self.metadata.get("numeric_features") or _features_module().NUMERIC_FEATURES)

    @property
    def categorical_features(self) -> list[str]:
        return list(self.metadata.get("categorical_features") or _features_module().CATEGORICAL_FEATURES)

    @property
    def feature_columns(self) -> list[str]:
        return self.numeric_features + self.categorical_features

    @property
    def accuracy(self) -> float | None:
        metrics = self.metadata.get("metrics") or {}
        value = metrics.get("accuracy", metrics.get("test_accuracy"))
        return float(value) if value is not None else None


def _features_module():
    from pipeline import features

    return features


def model_file(folder: Path) -> Path:
    """The single model artefact in `folder`; ArtifactError names what is wrong otherwise."""
    if not folder.is_dir():
        raise ArtifactError(f"model directory {folder} does not exist")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in MODEL_EXTENSIONS)
    if not found:
        raise ArtifactError(f"no model artefact ({', '.join(MODEL_EXTENSIONS)}) in {folder}")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ArtifactError(f"several model artefacts in {folder} ({names}); expected exactly one")
    return found[0]


def _read_json(path: Path, required: bool) -> dict | None:
    if not path.exists():
        if required:
            raise ArtifactError(f"{path.name} is missing in {path.parent}")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc


def load_folder(folder: Path, *, with_model: bool, source: str | None = None,
                model_sha256: str | None = None) -> ModelArtifacts:
    """Load a local model folder; `with_model=False` reads only metadata and reference (transformer).

    Args:
        model_sha256: the artefact's sha256 recorded at training; other bytes are refused unread.
    """
    folder = Path(folder)
    pipeline = None
    if with_model:
        path = model_file(folder)
        import joblib  # deferred: the transformer never unpickles the model
        from pipeline import registry

        data = path.read_bytes()
        registry.verify_artifact(f"model artefact {source or folder}/{path.name}", data, model_sha256)
        try:
            pipeline = joblib.load(io.BytesIO(data))
        except Exception as exc:  # any unpickling failure means the file is not a usable model
            raise ArtifactError(f"model artefact {path} is unreadable: {type(exc).__name__}: {exc}") from exc
        if not hasattr(pipeline, "predict_proba"):
            raise ArtifactError(f"model artefact {path} holds a {type(pipeline).__name__}, not a classifier")
    elif not folder.is_dir():
        raise ArtifactError(f"model directory {folder} does not exist")
    metadata = _read_json(folder / METADATA_FILE, required=with_model) or {}
    reference = _read_json(folder / REFERENCE_FILE, required=False)
    version = str(metadata.get("version") or folder.name)
    logger.info("loaded model version %s from %s", version, source or folder)
    return ModelArtifacts(version=version, source=source or str(folder), metadata=metadata, reference=reference,
                          pipeline=pipeline)


def download(settings: Settings, uri: str, dest: Path) -> Path:
    """Copy the objects directly under `s3://bucket/prefix/` into `dest` (what KServe's storage initializer does)."""
    from pipeline.store import s3 as s3_store

    bucket, key = s3_store.split_uri(uri)
    if key.endswith(MODEL_EXTENSIONS):  # an artefact URI names its folder
        key = key.rsplit("/", 1)[0]
    prefix = key.rstrip("/") + "/"
    client = s3_store.client(settings)
    count = 0
    for obj in client.list_objects(bucket, prefix=prefix, recursive=False):
        if obj.is_dir:
            continue
        name = obj.object_name[len(prefix):]
        (dest / name).write_bytes(s3_store.get_bytes(client, bucket, obj.object_name))
        count += 1
    if count == 0:
        raise ArtifactError(f"nothing stored under s3://{bucket}/{prefix}")
    return dest


def registry_row(settings: Settings, version: str | None = None, uri: str | None = None) -> dict | None:
    """The registry row of `version` ("production", "latest" or a version id), or of the folder `uri` (None if unregistered)."""
    from pipeline import registry
    from pipeline.store import postgres

    conn = postgres.connect(settings)
    try:
        if uri is not None:
            return registry.get_by_uri(conn, settings.model_name, uri)
        if version == "production":
            row = registry.get_production(conn, settings.model_name)
        elif version == "latest":
            row = registry.latest(conn, settings.model_name)
        else:
            row = registry.get(conn, settings.model_name, version)
    finally:
        conn.close()
    if row is None:
        raise ArtifactError(f"the registry has no {version} version of model {settings.model_name}")
    return row


def load(settings: Settings, *, model_dir: str | None = DEFAULT_MODEL_DIR, model_uri: str | None = None,
         model_version: str | None = None, with_model: bool = True) -> ModelArtifacts:
    """Load from `model_uri` (s3://), else the registry's `model_version`, else the local `model_dir`.

    The model artefact is checked against `settings.model_sha256` when set, else against the
    sha256 the registry recorded for the version loaded from S3.
    """
    row = None
    if model_version and not model_uri:
        row = registry_row(settings, model_version)
        model_uri = row["artifact_uri"]
    if model_uri and not model_uri.startswith("s3://"):
        model_dir, model_uri = model_uri, None  # a plain path given as URI
    expected = settings.model_sha256
    if model_uri:
        if with_model and expected is None:
            from pipeline import model, registry

            folder_uri = model_uri.removesuffix("/" + model.MODEL_FILE).rstrip("/")
            expected = registry.recorded_sha256(row or registry_row(settings, uri=folder_uri), model.MODEL_FILE)
        with tempfile.TemporaryDirectory(prefix="titanic-model-") as tmp:
            return load_folder(download(settings, model_uri, Path(tmp)), with_model=with_model, source=model_uri,
                               model_sha256=expected)
    return load_folder(Path(model_dir or DEFAULT_MODEL_DIR), with_model=with_model, model_sha256=expected)
