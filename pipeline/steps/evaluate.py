"""Evaluate step: the quality gate approving or rejecting a candidate model version.

Approved only if its hold-out accuracy is at least `--min-accuracy` and not below the current
production model's accuracy *on the same hold-out rows* (those production was not trained on)
minus `--tolerance`: like with like, both models scored by the same statistic on the same rows,
none of which either was trained on, a group model's group features counted from the labels it
was trained on only (as the train step scored its hold-out). The repeated-CV figure the train
step recorded is quoted in the reason, not compared: production's came from other folds,
possibly of other data. The
hold-out rows come from the candidate's feature-set snapshot (the offline store), so the
comparison does not depend on what Redis still holds. A rejection exits with
`EXIT_MODEL_REJECTED` (99).
"""

from __future__ import annotations

import argparse
import logging

import pandas as pd

from pipeline import features, model, registry, schema
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


def with_group_features(rows: pd.DataFrame, trained: pd.DataFrame) -> pd.DataFrame:
    """`rows` plus GROUP_FEATURES from the statistics of `trained`, the snapshot rows a model was trained on.

    The hold-out passengers stand for unseen ones, exactly as the train step scored them: their group
    statistics count only training labels (the set's statistics would count the other hold-out rows' too).
    """
    trained = trained[trained[schema.LABEL].notna()]
    stats = features.group_statistics(trained[model.GROUP_COLUMN].to_numpy(), features.woman_or_child(trained),
                                      trained[schema.LABEL].to_numpy(dtype="int64"))
    return features.add_group_features(rows, rows[model.GROUP_COLUMN].to_numpy(), stats)


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
    if meta.get("group_features"):
        holdout = with_group_features(holdout, snapshot.drop(index=meta["holdout_ids"]))
    accuracy = holdout_accuracy(settings, candidate, holdout, meta["feature_columns"])

    reasons, approved = [], True
    scored = f"hold-out accuracy {accuracy:.4f} ({len(holdout)} rows the candidate was not trained on)"
    if accuracy >= min_accuracy:
        reasons.append(f"{scored} >= minimum {min_accuracy:.4f}")
    else:
        approved = False
        reasons.append(f"{scored} < minimum {min_accuracy:.4f}")
    metrics = meta.get("metrics", {})
    if "repeated_cv_mean" in metrics:  # context for the reader, not a criterion
        reasons.append(f"repeated CV {metrics['repeated_cv_mean']:.4f} ± {metrics['repeated_cv_std']:.4f} over "
                       f"{metrics['repeated_cv_folds']} folds of its training split (reported, not gated)")

    result = {"version": version, "accuracy": accuracy, "holdout_size": len(holdout),
              "production_version": None, "production_accuracy": None}
    if production and production["version"] != version:
        result["production_version"] = production["version"]
        try:
            prod_meta = model.load_json(settings, production["artifact_uri"])
            columns = prod_meta["feature_columns"]
            # rows the production model was trained on would flatter it (a forest nearly memorises
            # them): both models are compared on the hold-out rows production never saw
            prod_snapshot = read_snapshot(settings, prod_meta["feature_set"])
            trained_on = prod_snapshot.drop(index=prod_meta["holdout_ids"], errors="ignore")
            unseen = holdout[~holdout.index.isin(trained_on.index)]
            if unseen.empty:
                raise KeyError("it was trained on every hold-out row")
            # production's group features from its own training labels, as the candidate's from its own
            prod_rows = with_group_features(unseen, trained_on) if prod_meta.get("group_features") else unseen
            if not set(columns) <= set(prod_rows.columns):
                raise KeyError(f"it needs features {sorted(set(columns) - set(prod_rows.columns))}")
            prod_accuracy = holdout_accuracy(settings, production, prod_rows, columns)
            compared = accuracy if len(unseen) == len(holdout) else holdout_accuracy(
                settings, candidate, unseen, meta["feature_columns"])
        except (ModelNotFound, FeatureSetNotFound, KeyError) as exc:
            # an unscoreable production model cannot veto; the threshold still applies
            reasons.append(f"production {production['version']} not compared: {exc}")
        else:
            result["production_accuracy"] = prod_accuracy
            result["compared_rows"] = len(unseen)
            on = (f" (both on the same {len(unseen)} hold-out rows, neither trained on them)" if len(unseen) == len(holdout)
                  else f" (both on the {len(unseen)} hold-out rows production was not trained on either)")
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
