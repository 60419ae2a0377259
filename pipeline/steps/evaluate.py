"""Evaluate step: the quality gate approving or rejecting a candidate model version.

Approved only if its hold-out accuracy is at least `--min-accuracy` and not below the current
production model's accuracy *on the same hold-out rows* (those production was not trained on)
minus `--tolerance`. The hold-out rows
come from the candidate's feature-set snapshot (the offline store), so the comparison does not
depend on what Redis still holds. A rejection exits with `EXIT_MODEL_REJECTED` (99).
"""

from __future__ import annotations

import argparse
import logging

from pipeline import model, registry, schema
from pipeline.errors import EXIT_MODEL_REJECTED, FeatureSetNotFound, ModelNotFound
from pipeline.settings import Settings
from pipeline.steps.features import read_snapshot
from pipeline.store import postgres

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", required=True, help="candidate model version (printed by the train step)")
    parser.add_argument("--min-accuracy", type=float, default=0.78, help="minimum hold-out accuracy")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="how much below the production model's accuracy on the same hold-out is still accepted")


def holdout_accuracy(settings: Settings, version: dict, holdout, feature_columns: list[str]) -> float:
    """Accuracy of a registered model version (its registry row) on the hold-out frame (features + Survived)."""
    pipeline = registry.load_model(settings, version)
    predicted = pipeline.predict(holdout[feature_columns])
    return float((predicted == holdout[schema.LABEL].to_numpy(dtype=int)).mean())


def run(settings: Settings, version: str, min_accuracy: float = 0.78, tolerance: float = 0.01) -> dict:
    conn = postgres.connect(settings)
    try:
        candidate = registry.get(conn, settings.model_name, version)
        production = registry.get_production(conn, settings.model_name)
    finally:
        conn.close()
    meta = model.load_json(settings, candidate["artifact_uri"])
    snapshot = read_snapshot(settings, meta["feature_set"])
    holdout = snapshot.loc[meta["holdout_ids"]]
    accuracy = holdout_accuracy(settings, candidate, holdout, meta["feature_columns"])

    reasons, approved = [], True
    if accuracy >= min_accuracy:
        reasons.append(f"hold-out accuracy {accuracy:.4f} >= minimum {min_accuracy:.4f}")
    else:
        approved = False
        reasons.append(f"hold-out accuracy {accuracy:.4f} < minimum {min_accuracy:.4f}")

    result = {"version": version, "accuracy": accuracy, "holdout_size": len(holdout),
              "production_version": None, "production_accuracy": None}
    if production and production["version"] != version:
        result["production_version"] = production["version"]
        try:
            prod_meta = model.load_json(settings, production["artifact_uri"])
            columns = prod_meta["feature_columns"]
            if not set(columns) <= set(holdout.columns):
                raise KeyError(f"it needs features {sorted(set(columns) - set(holdout.columns))}")
            # rows the production model was trained on would flatter it (a forest nearly memorises
            # them): both models are compared on the hold-out rows production never saw
            trained_on = set(read_snapshot(settings, prod_meta["feature_set"]).index) - set(prod_meta["holdout_ids"])
            unseen = holdout[~holdout.index.isin(list(trained_on))]
            if unseen.empty:
                raise KeyError("it was trained on every hold-out row")
            prod_accuracy = holdout_accuracy(settings, production, unseen, columns)
            compared = accuracy if len(unseen) == len(holdout) else holdout_accuracy(
                settings, candidate, unseen, meta["feature_columns"])
        except (ModelNotFound, FeatureSetNotFound, KeyError) as exc:
            # an unscoreable production model cannot veto; the threshold still applies
            reasons.append(f"production {production['version']} not compared: {exc}")
        else:
            result["production_accuracy"] = prod_accuracy
            result["compared_rows"] = len(unseen)
            on = "" if len(unseen) == len(holdout) else f" (on the {len(unseen)} hold-out rows production was not trained on)"
            floor = prod_accuracy - tolerance
            if compared >= floor:
                reasons.append(f"accuracy {compared:.4f} >= production {production['version']} "
                               f"{prod_accuracy:.4f} - tolerance {tolerance:.4f}{on}")
            else:
                approved = False
                reasons.append(f"accuracy {compared:.4f} < production {production['version']} "
                               f"{prod_accuracy:.4f} - tolerance {tolerance:.4f}{on}")
    else:
        reasons.append("no other production model to compare with")

    status = "approved" if approved else "rejected"
    if candidate["status"] != "production":  # re-evaluating the live model must not demote it
        conn = postgres.connect(settings)
        try:
            if not registry.set_status(conn, settings.model_name, version, status, "; ".join(reasons)):
                logger.warning("model %s was promoted while being evaluated; it stays in production", version)
        finally:
            conn.close()
    logger.info("model %s %s: %s", version, status, "; ".join(reasons))
    result.update(approved=approved, status=status, reasons=reasons)
    return result


def exit_code(result: dict) -> int:
    """0 when approved, EXIT_MODEL_REJECTED when rejected (the DAG skips deploy on it)."""
    return 0 if result["approved"] else EXIT_MODEL_REJECTED
