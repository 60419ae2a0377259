"""What the model page shows: the production version from the registry and its S3 folder."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from flask import current_app
from minio import Minio
from minio.error import S3Error
from urllib3.exceptions import HTTPError

from pipeline import registry
from pipeline.settings import Settings
from pipeline.store import postgres, s3

logger = logging.getLogger(__name__)

# Plot files a training run writes next to model.joblib, in the order the page shows them.
PLOTS = {
    "confusion_matrix": "Confusion matrix",
    "roc_curve": "ROC curve",
    "feature_importances": "Feature importances",
}
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class ModelCard:
    production: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    versions: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _s3(settings: Settings) -> Minio:
    # One client (and its connection pool) per app, made on first use.
    client = current_app.extensions.get("model_s3")
    if client is None:
        client = current_app.extensions["model_s3"] = s3.client(settings)
    return client


def _key(settings: Settings, version: str, filename: str) -> str:
    return f"{settings.model_name}/{version}/{filename}"


def load(settings: Settings) -> ModelCard:
    """Registry rows and metadata; unreachable stores become `problems`, not a 500 page."""
    card = ModelCard()
    try:
        conn = postgres.connect(settings, migrated=False)
        try:
            card.production = registry.get_production(conn, settings.model_name)
            card.versions = registry.list_versions(conn, settings.model_name)
        finally:
            conn.close()
    except psycopg2.Error as exc:
        logger.warning("model registry unavailable: %s", exc)
        card.problems.append("The model registry (Postgres) cannot be read right now.")
        return card
    if card.production is None:
        return card
    card.metadata = _metadata(settings, card.production["version"], card)
    return card


def _metadata(settings: Settings, version: str, card: ModelCard) -> dict[str, Any]:
    try:
        return json.loads(s3.get_bytes(_s3(settings), settings.bucket_models, _key(settings, version, "metadata.json")))
    except (S3Error, HTTPError, ValueError) as exc:
        logger.warning("metadata of %s unavailable: %s", version, exc)
        card.problems.append(f"The metadata of version {version} cannot be read from the object store.")
        return {}


def valid_version(version: str) -> bool:
    return bool(_VERSION.match(version))


@dataclass
class Lineage:
    """One version's column of the lineage page: its registry row, history, and metadata.json."""
    row: dict[str, Any]
    events: list[dict[str, Any]]
    metadata: dict[str, Any]

    @property
    def lineage(self) -> dict[str, Any]:  # the registry's copy; metadata.json's for versions trained before it
        return self.row.get("lineage") or self.metadata.get("lineage") or {}

    def event(self, kind: str) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e["event"] == kind), None)

    @property
    def verdict(self) -> dict[str, Any] | None:
        """The gate's last verdict (approved or rejected), with its reason."""
        return next((e for e in reversed(self.events) if e["event"] in ("approved", "rejected")), None)


def load_lineage(settings: Settings, versions: list[str]) -> tuple[list[Lineage], list[str]]:
    """Registry rows, histories and metadata of `versions` (in that order), all stored at training and by the
    steps since; problems name what could not be read. ModelNotFound for a version the registry lacks."""
    card = ModelCard()
    try:
        conn = postgres.connect(settings, migrated=False)
        try:
            rows = [registry.get(conn, settings.model_name, v) for v in versions]
            history = registry.events(conn, settings.model_name, versions)
        finally:
            conn.close()
    except psycopg2.Error as exc:
        logger.warning("model registry unavailable: %s", exc)
        return [], ["The model registry (Postgres) cannot be read right now."]
    columns = [Lineage(row, history.get(row["version"], []), _metadata(settings, row["version"], card)) for row in rows]
    return columns, card.problems


def plot(settings: Settings, version: str, name: str) -> bytes | None:
    """PNG bytes of one plot of one version, or None when it does not exist."""
    if name not in PLOTS or not _VERSION.match(version):
        return None
    try:
        return s3.get_bytes(_s3(settings), settings.bucket_models, _key(settings, version, f"{name}.png"))
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket"):
            return None
        raise


# Headline metrics of metadata.json (pipeline.steps.train), in the order the page shows them.
HEADLINE_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")


def provenance(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata.json entries the page names explicitly (keys written by pipeline.steps.train)."""
    code = metadata.get("code_version") or {}
    if isinstance(code, dict):
        code = " @ ".join(str(v)[:12] for v in (code.get("package"), code.get("git_commit")) if v)
    metrics = metadata.get("metrics") or {}
    return {
        "checksum": metadata.get("data_sha256"),
        "code_version": code or None,
        "libraries": metadata.get("library_versions") or {},
        "features": metadata.get("feature_columns") or [],
        "cv": (metrics.get("cv_mean"), metrics.get("cv_std")),
        # the honest figure (fresh folds after the search); versions trained before it lack it
        "repeated_cv": (metrics.get("repeated_cv_mean"), metrics.get("repeated_cv_std"), metrics.get("repeated_cv_folds")),
        "sizes": (metrics.get("train_size"), metrics.get("holdout_size")),
    }
