"""Run the whole pipeline locally: migrate, ingest, features, train, evaluate, and promote when approved."""

from __future__ import annotations

import argparse
import logging

from pipeline.errors import EXIT_MODEL_REJECTED
from pipeline.settings import Settings
from pipeline.steps import deploy, evaluate, features, ingest, migrate, train

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None, help="CSV to ingest (default: DATASET_URL)")
    parser.add_argument("--sha256", default=None, help="expected sha256 of the CSV (default: DATASET_SHA256)")
    parser.add_argument("--n-iter", type=int, default=10, help="hyper-parameter samples of RandomizedSearchCV")
    parser.add_argument("--cv", type=int, default=3, help="cross-validation folds of the search")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split, the search and the forest")
    parser.add_argument("--n-jobs", type=int, default=-1, help="parallel fits of the search (-1: all CPUs)")
    parser.add_argument("--min-accuracy", type=float, default=0.78, help="quality gate: minimum hold-out accuracy")
    parser.add_argument("--tolerance", type=float, default=0.01, help="quality gate: tolerance below production")
    parser.add_argument("--group-features", action=argparse.BooleanOptionalAction, default=True,
                        help="train with the group features (as the DAG does)")


def run(settings: Settings, source: str | None = None, sha256: str | None = None, n_iter: int = 10, cv: int = 3,
        seed: int = 42, n_jobs: int = -1, min_accuracy: float = 0.78, tolerance: float = 0.01,
        group_features: bool = True) -> dict:
    """Each step gets the identifiers the previous one printed, exactly as the DAG passes them."""
    migrate.run(settings)
    ingested = ingest.run(settings, source=source or settings.dataset_url, sha256=sha256 or settings.dataset_sha256)
    built = features.run(settings)
    trained = train.run(settings, feature_set=built["feature_set"], n_iter=n_iter, cv=cv, seed=seed, n_jobs=n_jobs,
                        group_features=group_features)
    verdict = evaluate.run(settings, version=trained["version"], min_accuracy=min_accuracy, tolerance=tolerance)
    deployed = deploy.run(settings, trained["version"], target="local") if verdict["approved"] else None
    result = {
        "batch_id": ingested["batch_id"],
        "feature_set": built["feature_set"],
        "version": trained["version"],
        "artifact_uri": trained["artifact_uri"],
        "metrics": trained["metrics"],
        "approved": verdict["approved"],
        "reasons": verdict["reasons"],
        "status": "production" if deployed else verdict["status"],
        "previous_version": deployed["previous_version"] if deployed else None,
    }
    logger.info("model %s is %s at %s", result["version"], result["status"], result["artifact_uri"])
    return result


def exit_code(result: dict) -> int:
    return 0 if result["approved"] else EXIT_MODEL_REJECTED
