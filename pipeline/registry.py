"""Model registry over the `model_versions` table: one row per trained version and its status."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any

from psycopg2.extras import RealDictCursor

from pipeline.errors import ModelNotFound, PipelineError
from pipeline.settings import Settings

logger = logging.getLogger(__name__)

STATUSES = ("candidate", "approved", "rejected", "production", "archived")
_COLUMNS = ("model_name, version, status, metrics, params, artifact_uri, artifact_sha256, feature_set, reason,"
            " lineage, created_at, updated_at")


class NotApproved(PipelineError):
    """The version is not approved (any more) when it is to be promoted: rejected or re-evaluated meanwhile."""


class ArtifactMismatch(PipelineError):
    """An artefact's bytes are not those recorded at training (overwritten in S3): never unpickled."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify_artifact(where: str, data: bytes, expected: str | None) -> None:
    """Refuse `data` unless its sha256 is `expected`, the hash recorded at training.

    `expected` None (a version trained before hashes were recorded) passes with a warning:
    refusing it would leave no loadable production model after the upgrade.
    """
    if expected is None:
        logger.warning("no sha256 recorded for %s (trained before hashes were recorded): loaded unverified", where)
        return
    actual = sha256_hex(data)
    if actual != expected:
        raise ArtifactMismatch(f"{where} has sha256 {actual} but the registry recorded {expected} at training:"
                               " refusing to load it (changed after training)")


def recorded_sha256(row: dict[str, Any] | None, name: str) -> str | None:
    """The sha256 of file `name` recorded at training in a registry row, if any."""
    return ((row or {}).get("artifact_sha256") or {}).get(name)


def register(conn, model_name: str, version: str, *, artifact_uri: str, metrics: dict, params: dict,
             feature_set: str | None, artifact_sha256: dict[str, str] | None = None,
             lineage: dict | None = None) -> None:
    """Insert a new `candidate`; re-registering the same version (a retried step) is a no-op.

    `artifact_sha256` maps each file of the version folder to its sha256, checked before unpickling.
    `lineage`: where the version came from (pipeline.steps.train), shown on the model page.
    """
    with conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO model_versions (model_name, version, status, metrics, params, artifact_uri, feature_set,"
            " artifact_sha256, lineage) VALUES (%s, %s, 'candidate', %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (model_name, version) DO NOTHING",
            (model_name, version, json.dumps(metrics), json.dumps(params), artifact_uri, feature_set,
             json.dumps(artifact_sha256) if artifact_sha256 is not None else None, json.dumps(lineage or {})),
        )
        if cur.rowcount:
            _event(cur, model_name, version, "registered", (lineage or {}).get("trigger", {}).get("summary"))


def _event(cur, model_name: str, version: str, event: str, detail: str | None = None) -> None:
    """One line of a version's history, in the transaction of the change it records."""
    cur.execute("INSERT INTO model_events (model_name, version, event, detail) VALUES (%s, %s, %s, %s)",
                (model_name, version, event, detail))


def events(conn, model_name: str, versions: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Each version's history, oldest first: registered, the gate's verdicts, promoted (and what it replaced)."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute("SELECT version, event, detail, at FROM model_events WHERE model_name = %s"
                    " AND (%s::text[] IS NULL OR version = ANY(%s)) ORDER BY id", (model_name, versions, versions))
        history: dict[str, list[dict[str, Any]]] = {}
        for row in cur.fetchall():
            history.setdefault(row.pop("version"), []).append(dict(row))
    return history


def load_model(settings: Settings, row: dict[str, Any]):
    """The fitted Pipeline of a registered version, unpickled only if its bytes have the recorded sha256."""
    # deferred: readers of the registry (the web app) need neither S3 nor sklearn
    import joblib

    from pipeline import faults, model
    from pipeline.store import s3

    bucket, key = model.artifact_key(row["artifact_uri"], model.MODEL_FILE)
    try:
        data = s3.get_bytes(s3.client(settings), bucket, key)
    except Exception as exc:  # a missing object or bucket means the same to the caller; an S3 outage does not
        if faults.describe(exc, settings):
            raise
        raise ModelNotFound(f"cannot read {row['artifact_uri']}/{model.MODEL_FILE}: {exc}") from exc
    verify_artifact(f"{row['artifact_uri']}/{model.MODEL_FILE}", data, recorded_sha256(row, model.MODEL_FILE))
    return joblib.load(io.BytesIO(data))


def get(conn, model_name: str, version: str) -> dict[str, Any]:
    """The row of one version; ModelNotFound names it when absent."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE model_name = %s AND version = %s", (model_name, version))
        row = cur.fetchone()
    if row is None:
        raise ModelNotFound(f"model {model_name} has no version {version!r}")
    return dict(row)


def get_by_uri(conn, model_name: str, artifact_uri: str) -> dict[str, Any] | None:
    """The row whose artefacts are in `artifact_uri`, if that folder is registered."""
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE model_name = %s AND artifact_uri = %s",
                    (model_name, artifact_uri.rstrip("/")))
        row = cur.fetchone()
    return dict(row) if row else None


def get_production(conn, model_name: str) -> dict[str, Any] | None:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE model_name = %s AND status = 'production'", (model_name,))
        row = cur.fetchone()
    return dict(row) if row else None


def latest(conn, model_name: str) -> dict[str, Any] | None:
    """The most recently created version, whatever its status."""
    versions = list_versions(conn, model_name, limit=1)
    return versions[0] if versions else None


def list_versions(conn, model_name: str, limit: int = 50) -> list[dict[str, Any]]:
    with conn.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM model_versions WHERE model_name = %s ORDER BY created_at DESC, version DESC LIMIT %s",
            (model_name, limit),
        )
        return [dict(r) for r in cur.fetchall()]


def set_status(conn, model_name: str, version: str, status: str, reason: str | None = None) -> bool:
    """Set a version's status; False (nothing changed) if it is production and `status` is not.

    Production is left only through `promote` (which archives it): checked in the UPDATE itself,
    so a verdict written after a concurrent promote cannot leave the model without production.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    get(conn, model_name, version)
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE model_versions SET status = %s, reason = %s, updated_at = now() WHERE model_name = %s AND version = %s"
            " AND (status <> 'production' OR %s = 'production')",
            (status, reason, model_name, version, status),
        )
        changed = cur.rowcount == 1
        if changed and status in ("approved", "rejected", "archived"):
            _event(cur, model_name, version, status, reason)
        return changed


def promote(conn, model_name: str, version: str) -> str | None:
    """Make an approved `version` production and archive the previous one, in one transaction.

    Returns the previous production version (None if there was none). NotApproved, and nothing changes,
    when `version` is not approved at that moment (checked under the row locks, so a verdict committed
    meanwhile is seen, and one that comes later waits for the promote).
    """
    get(conn, model_name, version)
    with conn, conn.cursor() as cur:
        # Every row of the model, locked in one order: concurrent promotes run one after the other and
        # each sees what the previous one committed (locking only the production row missed a version
        # promoted meanwhile: a wrong `previous`, or a unique violation when there was no production yet).
        cur.execute(
            "SELECT version, status FROM model_versions WHERE model_name = %s ORDER BY version FOR UPDATE", (model_name,)
        )
        statuses = dict(cur.fetchall())
        previous = next((v for v, status in statuses.items() if status == "production"), None)
        if previous == version:
            return previous
        if statuses.get(version) != "approved":
            raise NotApproved(f"model {model_name} version {version} is {statuses.get(version)}, no longer approved:"
                              " not promoted")
        cur.execute(
            "UPDATE model_versions SET status = 'archived', updated_at = now() WHERE model_name = %s AND status = 'production'",
            (model_name,),
        )
        cur.execute(
            "UPDATE model_versions SET status = 'production', updated_at = now() WHERE model_name = %s AND version = %s",
            (model_name, version),
        )
        if previous:
            _event(cur, model_name, previous, "archived", f"replaced by {version}")
        _event(cur, model_name, version, "promoted", f"replaced {previous}" if previous else "first production version")
    return previous
