"""Train step: random-forest search on a feature set, written completely to models/<name>/<version>/, then registered.

A version folder `s3://<models bucket>/<model name>/<version>/` holds:

- `model.joblib`: the fitted sklearn Pipeline; its input is a `features.transform` frame.
- `metadata.json`: version, feature_set, feature_columns, numeric_features, categorical_features,
  params (best hyper-parameters), search (space, n_iter, cv, seed), metrics (accuracy, precision,
  recall, f1, roc_auc, confusion_matrix [[tn, fp], [fn, tp]] of the final model on the stratified hold-out, scored
  once; cv_mean, cv_std of the search's best candidate (optimistic: the best of n_iter on the same folds);
  repeated_cv_mean, repeated_cv_std, repeated_cv_folds: repeated stratified k-fold of the chosen configuration
  on the training split, fresh folds, group statistics learned inside each fold; holdout_size, train_size),
  validation (repeated_cv: splits, repeats, seed, scores per fold), holdout_ids, feature_importances (impurity),
  mean_abs_contribution (mean |TreeSHAP contribution| per input feature on the training split), data_sha256,
  code_version, library_versions, created_at, lineage (below).
- lineage (also in the registry row): trigger {kind: manual | scheduled | drift alert | command line, run_id,
  summary, alertname, alerts (labels, from the relay's record in retrain_triggers)}, batches [{batch_id, rows,
  sha256, source}] of the training passengers (ingest_batches), feature_set, code_version.
- `reference.json`: the training split's per-feature distributions, for drift (PSI):

      {"format": 1, "rows": <training rows>, "features": {
         "<numeric>": {"type": "numeric", "edges": [e1, ..., ek],
                       "proportions": [p0, ..., pk], "missing": pm},
         "<categorical>": {"type": "categorical", "proportions": {"<value>": p, ...}}}}

  Numeric bins come from the training deciles (unique edges, so k <= 9): bin i holds values x
  with edges[i-1] < x <= edges[i] (bin 0 is x <= e1, bin k is x > ek), i.e. the bin of x is
  `numpy.searchsorted(edges, x, side="left")`. Proportions are shares of *all* rows, so the
  bins plus `missing` (share of NaN) sum to 1. Categorical shares are over all rows, with ""
  as the missing value. A bin can be 0: add a small epsilon before taking logarithms.
- `confusion_matrix.png`, `roc_curve.png`, `feature_importances.png`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import RandomizedSearchCV, RepeatedStratifiedKFold, StratifiedKFold, cross_val_score, train_test_split

from pipeline import features, model, registry, schema
from pipeline.errors import FeatureSetNotFound, PipelineError
from pipeline.explain import Explainer
from pipeline.settings import Settings
from pipeline.steps.features import read_snapshot, snapshot_key
from pipeline.store import postgres, s3
from pipeline.store.feature_store import FeatureStore, new_version

logger = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.2
REPEATED_CV_SPLITS = 5
MIN_LABELLED = 20  # below this a stratified hold-out plus k-fold search is meaningless
DECILES = np.linspace(0.1, 0.9, 9)


class NotEnoughData(PipelineError):
    """The feature set has too few labelled passengers to train on."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--feature-set", required=True, help="feature-set version to train on (printed by the features step)")
    parser.add_argument("--n-iter", type=int, default=10, help="hyper-parameter samples of RandomizedSearchCV")
    parser.add_argument("--cv", type=int, default=3, help="cross-validation folds of the search")
    parser.add_argument("--cv-repeats", type=int, default=3,
                        help="repeats of the stratified 5-fold CV that reports the chosen configuration's accuracy (0: skip)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split, the search and the forest")
    parser.add_argument("--n-jobs", type=int, default=-1, help="parallel fits of the search (-1: all CPUs)")
    parser.add_argument("--run-id", default=None, help="the Airflow run that trains (its relay record names the alert)")
    parser.add_argument("--trigger", default=None, help="what started the run: Airflow's run_type (manual, scheduled, ...)")
    parser.add_argument("--group-features", action=argparse.BooleanOptionalAction, default=True,
                        help="add the group features (statistics learned from the training labels inside each CV fold; "
                             "the transformer serves them from the feature set's group statistics in Redis)")


def read_features(settings: Settings, feature_set: str) -> tuple[pd.DataFrame, str]:
    """(frame, "redis" or "snapshot"): the set from Redis, or from its offline snapshot once Redis no longer has it
    (garbage-collected after FEATURE_SETS_KEEP newer sets, or Redis emptied): the same rows, written by the same run."""
    try:
        return FeatureStore(settings).read(feature_set), "redis"  # one pipelined read of the whole set
    except FeatureSetNotFound as online:
        try:
            snapshot = read_snapshot(settings, feature_set)
        except FeatureSetNotFound:
            raise FeatureSetNotFound(f"{online}; nor has it an offline snapshot at "
                                     f"s3://{settings.bucket_features}/{snapshot_key(settings, feature_set)}") from None
    logger.warning("feature set %s is not in Redis: training on its offline snapshot", feature_set)
    return snapshot.drop(columns=[schema.LABEL]), "snapshot"  # labels come from Postgres, as for Redis


def load_training_frame(settings: Settings, feature_set: str) -> tuple[pd.DataFrame, pd.Series, str]:
    """(features, labels, source) of the labelled passengers of a feature set: labels from Postgres."""
    frame, source = read_features(settings, feature_set)
    missing = [c for c in features.FEATURE_COLUMNS if c not in frame.columns]
    if missing:
        raise PipelineError(f"feature set {feature_set} lacks {missing}: it was built by other feature code; rebuild it")
    conn = postgres.connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT passenger_id, survived FROM passengers WHERE survived IS NOT NULL AND passenger_id = ANY(%s)",
                        ([int(i) for i in frame.index],))
            labels = dict(cur.fetchall())
    finally:
        conn.close()
    labelled = frame.index[frame.index.isin(list(labels))]
    # the group id rides along (sets built before issue 12 lack it): group models learn their statistics from it
    X = frame.loc[labelled, [c for c in [*features.FEATURE_COLUMNS, model.GROUP_COLUMN] if c in frame.columns]].sort_index()
    y = pd.Series([labels[i] for i in X.index], index=X.index, name=schema.LABEL, dtype="int64")
    if len(X) < MIN_LABELLED or y.nunique() < 2:
        raise NotEnoughData(f"feature set {feature_set} has {len(X)} labelled passengers "
                            f"({y.nunique()} classes); training needs at least {MIN_LABELLED} and both classes")
    return X, y, source


def data_sha256(X: pd.DataFrame, y: pd.Series) -> str:
    """Checksum of exactly what the model was trained and tested on (canonical CSV, ids included)."""
    return hashlib.sha256(X.assign(**{schema.LABEL: y}).to_csv(float_format="%.17g").encode()).hexdigest()


def reference_distributions(X: pd.DataFrame) -> dict:
    """Per-feature reference distributions (format in the module docstring)."""
    n = len(X)
    out: dict[str, dict] = {}
    for col in features.NUMERIC_FEATURES:
        values = X[col].to_numpy(dtype="float64")
        present = values[~np.isnan(values)]
        edges = np.unique(np.quantile(present, DECILES)) if len(present) else np.array([])
        counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
        out[col] = {"type": "numeric", "edges": edges.tolist(), "proportions": (counts / n).tolist(),
                    "missing": float((n - len(present)) / n)}
    for col in features.CATEGORICAL_FEATURES:
        shares = X[col].value_counts(normalize=True, sort=False).sort_index()
        out[col] = {"type": "categorical", "proportions": {str(k): float(v) for k, v in shares.items()}}
    return {"format": 1, "rows": n, "features": out}


def lineage(settings: Settings, ids: list[int], feature_set: str, trigger: str | None, run_id: str | None) -> dict:
    """Where a version comes from (module docstring), read once at training so the model page recomputes nothing."""
    conn = postgres.connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT p.batch_id, count(*), b.sha256, b.source FROM passengers p"
                        " LEFT JOIN ingest_batches b USING (batch_id) WHERE p.passenger_id = ANY(%s)"
                        " GROUP BY p.batch_id, b.sha256, b.source ORDER BY p.batch_id", (ids,))
            batches = [{"batch_id": b, "rows": n, "sha256": sha, "source": src} for b, n, sha, src in cur.fetchall()]
            alert = None
            if run_id:  # a run the relay started: its record holds the alert's labels
                cur.execute("SELECT alertname, conf FROM retrain_triggers WHERE dag_run_id = %s AND outcome = 'triggered'"
                            " AND dag_id = %s ORDER BY id LIMIT 1", (run_id, settings.airflow_dag_id))
                alert = cur.fetchone()
    finally:
        conn.close()
    if alert:
        name, conf = alert
        labels = [a.get("labels", {}) for a in conf.get("alerts", [])]
        shown = ", ".join(f"{k}={v}" for k, v in (labels[0] if labels else {}).items() if k != "alertname")
        origin = {"kind": "drift alert", "alertname": name, "alerts": labels,
                  "summary": f"alert {name}" + (f" ({shown})" if shown else "")}
    else:
        kind = {"manual": "manual", "scheduled": "scheduled"}.get(trigger or "", trigger or "command line")
        origin = {"kind": kind, "summary": f"{kind} run {run_id}" if run_id else kind}
    return {"trigger": {**origin, "run_id": run_id}, "batches": batches, "feature_set": feature_set,
            "code_version": code_version()}


def code_version() -> dict:
    """The package version and the commit: from the git checkout, or TITANIC_GIT_COMMIT baked into the image."""
    try:
        package = importlib_metadata.version("titanic-mlops")
    except importlib_metadata.PackageNotFoundError:
        package = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = os.environ.get("TITANIC_GIT_COMMIT") or None  # images carry no .git: the build records it
    return {"package": package, "git_commit": commit}


def library_versions() -> dict:
    names = ("scikit-learn", "pandas", "numpy", "joblib", "scipy")
    versions = {n: importlib_metadata.version(n) for n in names}
    versions["python"] = platform.python_version()
    return versions


def plots(y_test, proba, cm, importances: pd.Series) -> dict[str, bytes]:
    """PNG bytes of the confusion matrix, ROC curve and feature importances (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    def png(fig) -> bytes:
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()

    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(np.asarray(cm)):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["died", "survived"], yticklabels=["died", "survived"],
           xlabel="predicted", ylabel="actual", title="Confusion matrix (hold-out)")
    out = {"confusion_matrix.png": png(fig)}

    fpr, tpr, _ = roc_curve(y_test, proba)
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve (hold-out)")
    ax.legend(loc="lower right")
    out["roc_curve.png"] = png(fig)

    top = importances.sort_values().tail(20)
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    ax.barh(top.index, top.to_numpy())
    ax.set(xlabel="mean decrease in impurity", title="Feature importances")
    out["feature_importances.png"] = png(fig)
    return out


def repeated_cv(estimator, X: pd.DataFrame, y: pd.Series, repeats: int, seed: int, n_jobs: int) -> list[float]:
    """Accuracy per fold of repeated stratified k-fold, each fold fitting a fresh clone (group statistics included)."""
    # a seed apart from the search's folds: the configuration was chosen on those, so they would flatter it
    folds = RepeatedStratifiedKFold(n_splits=REPEATED_CV_SPLITS, n_repeats=repeats, random_state=seed + 1)
    return [float(s) for s in cross_val_score(clone(estimator), X, y, cv=folds, scoring="accuracy", n_jobs=n_jobs)]


def run(settings: Settings, feature_set: str, n_iter: int = 10, cv: int = 3, seed: int = 42, n_jobs: int = -1,
        cv_repeats: int = 3, group_features: bool = False, run_id: str | None = None, trigger: str | None = None) -> dict:
    X, y, source = load_training_frame(settings, feature_set)
    origin = lineage(settings, [int(i) for i in X.index], feature_set, trigger, run_id)
    if group_features and model.GROUP_COLUMN not in X.columns:
        raise PipelineError(f"feature set {feature_set} has no group ids: it was built before group features; rebuild it")
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=HOLDOUT_FRACTION, stratify=y, random_state=seed)

    estimator, space = model.build_pipeline(seed), model.SEARCH_SPACE
    if group_features:  # cloned per fold by the search: each fold's group statistics come from its training labels
        estimator = model.GroupFeatureModel(model.build_pipeline(seed, group_features=True))
        space = {f"pipeline__{k}": v for k, v in space.items()}
    search = RandomizedSearchCV(
        estimator, space, n_iter=n_iter, scoring="accuracy", refit=True,
        cv=StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed), random_state=seed, n_jobs=n_jobs,
    )
    search.fit(X_train, y_train)
    # the search's best_score_ is the maximum of n_iter noisy estimates: the reported figure comes from fresh folds
    folds = repeated_cv(search.best_estimator_, X_train, y_train, cv_repeats, seed, n_jobs) if cv_repeats else []
    proba = search.best_estimator_.predict_proba(X_test)[:, 1]  # hold-out: group statistics of training labels only
    metrics = model.classification_metrics(y_test, search.best_estimator_.predict(X_test), proba)
    # what is saved and served is the plain Pipeline: serving supplies the group features from the feature set
    best = search.best_estimator_.pipeline_ if group_features else search.best_estimator_
    columns = features.FEATURE_COLUMNS + (features.GROUP_FEATURES if group_features else [])
    metrics.update(cv_mean=float(search.best_score_),
                   cv_std=float(search.cv_results_["std_test_score"][search.best_index_]),
                   holdout_size=len(X_test), train_size=len(X_train))
    if folds:
        metrics.update(repeated_cv_mean=float(np.mean(folds)), repeated_cv_std=float(np.std(folds)),
                       repeated_cv_folds=len(folds))
    params = {k.removeprefix("pipeline__").split("__", 1)[1]: v for k, v in search.best_params_.items()}
    importances = pd.Series(best.named_steps[model.CLASSIFIER_STEP].feature_importances_,
                            index=model.feature_names(best))
    # global importance in the explanations' own terms (TreeSHAP), stored so the model page computes nothing
    seen = search.best_estimator_._frame(X_train) if group_features else X_train
    contribution = Explainer(best).mean_abs(seen)

    version = new_version()
    artifact_uri = f"s3://{settings.bucket_models}/{settings.model_name}/{version}"
    meta = {
        "model_name": settings.model_name,
        "version": version,
        "feature_set": feature_set,
        "feature_columns": columns,
        "numeric_features": features.NUMERIC_FEATURES + (features.GROUP_FEATURES if group_features else []),
        "group_features": group_features,
        "categorical_features": features.CATEGORICAL_FEATURES,
        "params": params,
        "search": {"space": space, "n_iter": n_iter, "cv": cv, "seed": seed, "scoring": "accuracy"},
        "metrics": metrics,
        "validation": {"repeated_cv": {"splits": REPEATED_CV_SPLITS, "repeats": cv_repeats, "seed": seed + 1,
                                       "scores": folds},
                       "holdout": "scored once by the final model, refitted on the training split"},
        "holdout_ids": [int(i) for i in X_test.index],
        "feature_importances": {k: float(v) for k, v in importances.sort_values(ascending=False).items()},
        "mean_abs_contribution": contribution,
        "data_sha256": data_sha256(X, y),
        "code_version": origin["code_version"],
        "library_versions": library_versions(),
        "lineage": origin,
        "created_at": datetime.now(timezone.utc).isoformat(),
    }
    buf = io.BytesIO()
    joblib.dump(best, buf)
    files = {
        model.MODEL_FILE: (buf.getvalue(), "application/octet-stream"),
        model.REFERENCE_FILE: (json.dumps(reference_distributions(X_train), indent=1).encode(), "application/json"),
        **{name: (data, "image/png") for name, data in plots(y_test, proba, metrics["confusion_matrix"], importances).items()},
        model.METADATA_FILE: (json.dumps(meta, indent=1).encode(), "application/json"),
    }
    client = s3.client(settings)
    s3.ensure_buckets(client, settings)
    for name, (data, content_type) in files.items():
        bucket, key = model.artifact_key(artifact_uri, name)
        s3.put_bytes(client, bucket, key, data, content_type)

    # registered only once the folder is complete: a candidate row always has all its artefacts;
    # the hashes live in Postgres, out of reach of the S3 key that can rewrite the folder
    conn = postgres.connect(settings)
    try:
        registry.register(conn, settings.model_name, version, artifact_uri=artifact_uri, metrics=metrics,
                          params=params, feature_set=feature_set,
                          artifact_sha256={name: registry.sha256_hex(data) for name, (data, _) in files.items()},
                          lineage=origin)
    finally:
        conn.close()
    logger.info("trained %s: hold-out accuracy %.4f, repeated cv %s, search cv %.4f ± %.4f", version, metrics["accuracy"],
                f"{metrics['repeated_cv_mean']:.4f} ± {metrics['repeated_cv_std']:.4f}" if folds else "skipped",
                metrics["cv_mean"], metrics["cv_std"])
    return {"version": version, "metrics": metrics, "artifact_uri": artifact_uri, "feature_set": feature_set,
            "params": params, "feature_source": source}
