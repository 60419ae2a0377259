"""Train step: random-forest search on a feature set, written completely to models/<name>/<version>/, then registered.

A version folder `s3://<models bucket>/<model name>/<version>/` holds:

- `model.joblib`: the fitted sklearn Pipeline; its input is a `features.transform` frame.
- `metadata.json`: version, feature_set, feature_columns, numeric_features, categorical_features,
  params (best hyper-parameters), search (space, n_iter, cv, seed), metrics (accuracy, precision,
  recall, f1, roc_auc, confusion_matrix [[tn, fp], [fn, tp]], cv_mean, cv_std, holdout_size,
  train_size on the stratified hold-out), holdout_ids, feature_importances, data_sha256,
  code_version, library_versions, created_at.
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
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.model_selection import RandomizedSearchCV, StratifiedKFold, train_test_split

from pipeline import features, model, registry, schema
from pipeline.errors import PipelineError
from pipeline.settings import Settings
from pipeline.store import postgres, s3
from pipeline.store.feature_store import FeatureStore, new_version

logger = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.2
MIN_LABELLED = 20  # below this a stratified hold-out plus k-fold search is meaningless
DECILES = np.linspace(0.1, 0.9, 9)


class NotEnoughData(PipelineError):
    """The feature set has too few labelled passengers to train on."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--feature-set", required=True, help="feature-set version to train on (printed by the features step)")
    parser.add_argument("--n-iter", type=int, default=10, help="hyper-parameter samples of RandomizedSearchCV")
    parser.add_argument("--cv", type=int, default=3, help="cross-validation folds of the search")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split, the search and the forest")
    parser.add_argument("--n-jobs", type=int, default=-1, help="parallel fits of the search (-1: all CPUs)")


def load_training_frame(settings: Settings, feature_set: str) -> tuple[pd.DataFrame, pd.Series]:
    """(features, labels) of the labelled passengers of a feature set: features from Redis, labels from Postgres."""
    frame = FeatureStore(settings).read(feature_set)  # one pipelined read of the whole set
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
    X = frame.loc[labelled, features.FEATURE_COLUMNS].sort_index()
    y = pd.Series([labels[i] for i in X.index], index=X.index, name=schema.LABEL, dtype="int64")
    if len(X) < MIN_LABELLED or y.nunique() < 2:
        raise NotEnoughData(f"feature set {feature_set} has {len(X)} labelled passengers "
                            f"({y.nunique()} classes); training needs at least {MIN_LABELLED} and both classes")
    return X, y


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


def code_version() -> dict:
    """The package version and, when run from a git checkout, the commit."""
    try:
        package = importlib_metadata.version("titanic-mlops")
    except importlib_metadata.PackageNotFoundError:
        package = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None  # images carry no .git
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


def run(settings: Settings, feature_set: str, n_iter: int = 10, cv: int = 3, seed: int = 42, n_jobs: int = -1) -> dict:
    X, y = load_training_frame(settings, feature_set)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=HOLDOUT_FRACTION, stratify=y, random_state=seed)

    search = RandomizedSearchCV(
        model.build_pipeline(seed), model.SEARCH_SPACE, n_iter=n_iter, scoring="accuracy", refit=True,
        cv=StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed), random_state=seed, n_jobs=n_jobs,
    )
    search.fit(X_train, y_train)
    best = search.best_estimator_
    proba = best.predict_proba(X_test)[:, 1]
    metrics = model.classification_metrics(y_test, best.predict(X_test), proba)
    metrics.update(cv_mean=float(search.best_score_),
                   cv_std=float(search.cv_results_["std_test_score"][search.best_index_]),
                   holdout_size=len(X_test), train_size=len(X_train))
    params = {k.split("__", 1)[1]: v for k, v in search.best_params_.items()}
    importances = pd.Series(best.named_steps[model.CLASSIFIER_STEP].feature_importances_,
                            index=model.feature_names(best))

    version = new_version()
    artifact_uri = f"s3://{settings.bucket_models}/{settings.model_name}/{version}"
    meta = {
        "model_name": settings.model_name,
        "version": version,
        "feature_set": feature_set,
        "feature_columns": features.FEATURE_COLUMNS,
        "numeric_features": features.NUMERIC_FEATURES,
        "categorical_features": features.CATEGORICAL_FEATURES,
        "params": params,
        "search": {"space": model.SEARCH_SPACE, "n_iter": n_iter, "cv": cv, "seed": seed, "scoring": "accuracy"},
        "metrics": metrics,
        "holdout_ids": [int(i) for i in X_test.index],
        "feature_importances": {k: float(v) for k, v in importances.sort_values(ascending=False).items()},
        "data_sha256": data_sha256(X, y),
        "code_version": code_version(),
        "library_versions": library_versions(),
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
                          artifact_sha256={name: registry.sha256_hex(data) for name, (data, _) in files.items()})
    finally:
        conn.close()
    logger.info("trained %s: hold-out accuracy %.4f, cv %.4f ± %.4f", version, metrics["accuracy"],
                metrics["cv_mean"], metrics["cv_std"])
    return {"version": version, "metrics": metrics, "artifact_uri": artifact_uri, "feature_set": feature_set,
            "params": params}
