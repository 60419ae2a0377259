"""The model: an sklearn Pipeline over `features.transform` output, and its hyper-parameter search space.

Imputation and one-hot encoding are fitted here, inside the Pipeline saved as `model.joblib`,
so serving needs only `features.transform` and this one artefact. The preprocessing uses only
estimators skl2onnx converts (SimpleImputer, OneHotEncoder, RandomForestClassifier); the
categorical imputer treats "" as missing, as `features.transform` emits.
"""

from __future__ import annotations

import io
import json

import joblib
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from pipeline import faults
from pipeline.errors import ModelNotFound
from pipeline import features
from pipeline.features import CATEGORICAL_FEATURES, GROUP_FEATURES, NUMERIC_FEATURES
from pipeline.settings import Settings
from pipeline.store import s3

CLASSIFIER_STEP = "classifier"
# Files of a model version folder s3://<models bucket>/<model name>/<version>/
MODEL_FILE, METADATA_FILE, REFERENCE_FILE = "model.joblib", "metadata.json", "reference.json"
MISSING_CATEGORY = "missing"

# The seed's search space, as lists so that it is JSON-serialisable and recorded in metadata.
SEARCH_SPACE: dict[str, list] = {
    f"{CLASSIFIER_STEP}__n_estimators": [50, 100, 150, 200, 250, 300],
    f"{CLASSIFIER_STEP}__max_depth": [None, 10, 20, 30],
    f"{CLASSIFIER_STEP}__min_samples_split": [2, 5, 10],
    f"{CLASSIFIER_STEP}__min_samples_leaf": [1, 2, 4],
}


def build_pipeline(seed: int = 42, group_features: bool = False) -> Pipeline:
    """An unfitted Pipeline: impute/encode by feature kind, then a random forest (over GROUP_FEATURES too if asked)."""
    numeric = SimpleImputer(strategy="median")
    categorical = Pipeline([
        ("impute", SimpleImputer(strategy="constant", missing_values="", fill_value=MISSING_CATEGORY)),
        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
    ])
    preprocess = ColumnTransformer(
        [("num", numeric, NUMERIC_FEATURES + (GROUP_FEATURES if group_features else [])), ("cat", categorical, CATEGORICAL_FEATURES)],
        remainder="drop",
    )
    # n_jobs=1: the search parallelises over folds; the forest's own result does not depend on it.
    classifier = RandomForestClassifier(random_state=seed, n_jobs=1)
    return Pipeline([("preprocess", preprocess), (CLASSIFIER_STEP, classifier)])


GROUP_COLUMN = "Group"  # the group id column (`features.group_id`) a training frame carries beside FEATURE_COLUMNS


class GroupFeatureModel(ClassifierMixin, BaseEstimator):
    """A Pipeline over FEATURE_COLUMNS + GROUP_FEATURES whose group statistics come from the labels it is fitted on.

    Used for the search: RandomizedSearchCV clones and fits it once per fold, so each fold's group
    statistics come from that fold's training labels only and CV stays honest. `fit` gives every
    training passenger leave-one-out features; `predict` uses the statistics of all fitted labels,
    as serving does. Serving needs only `pipeline_` (ONNX-convertible) and `group_stats_`.
    """

    def __init__(self, pipeline: Pipeline | None = None):
        self.pipeline = pipeline

    def _frame(self, X: pd.DataFrame, own_survived=None) -> pd.DataFrame:
        wc = features.woman_or_child(X)
        group = features.group_features(X[GROUP_COLUMN].to_numpy(), wc, self.group_stats_, own_survived, index=X.index)
        return pd.concat([X[features.FEATURE_COLUMNS], group], axis=1)

    def fit(self, X: pd.DataFrame, y):
        y = np.asarray(y, dtype="int64")
        self.group_stats_ = features.group_statistics(X[GROUP_COLUMN].to_numpy(), features.woman_or_child(X), y)
        self.pipeline_ = clone(self.pipeline if self.pipeline is not None else build_pipeline(group_features=True))
        self.pipeline_.fit(self._frame(X, own_survived=y), y)
        self.classes_ = self.pipeline_.classes_
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.pipeline_.predict_proba(self._frame(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def feature_names(pipeline: Pipeline) -> list[str]:
    """Names of the columns the classifier sees (one-hot expanded), for importances."""
    return [n.split("__", 1)[1] for n in pipeline.named_steps["preprocess"].get_feature_names_out()]


def classification_metrics(y_true, y_pred, proba) -> dict:
    """accuracy, precision, recall, f1, roc_auc (None when only one class is present), confusion matrix."""
    y_true = np.asarray(y_true, dtype=int)
    out = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, proba)) if len(np.unique(y_true)) == 2 else None,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist(),
    }
    return out


def artifact_key(artifact_uri: str, name: str) -> tuple[str, str]:
    """(bucket, key) of one file in a model version folder `s3://bucket/<model>/<version>`."""
    bucket, prefix = s3.split_uri(artifact_uri)
    return bucket, f"{prefix.rstrip('/')}/{name}"


def load(settings: Settings, artifact_uri: str) -> Pipeline:
    """The fitted Pipeline of a model version folder."""
    bucket, key = artifact_key(artifact_uri, MODEL_FILE)
    try:
        data = s3.get_bytes(s3.client(settings), bucket, key)
    except Exception as exc:  # a missing object or bucket means the same to the caller
        raise ModelNotFound(f"cannot read {artifact_uri}/{MODEL_FILE}: {exc}") from exc
    return joblib.load(io.BytesIO(data))


def load_json(settings: Settings, artifact_uri: str, name: str = METADATA_FILE) -> dict:
    """metadata.json (or reference.json) of a model version folder."""
    bucket, key = artifact_key(artifact_uri, name)
    try:
        return json.loads(s3.get_bytes(s3.client(settings), bucket, key))
    except Exception as exc:
        if faults.describe(exc, settings):  # S3 down is no missing model: the step says so and is retried
            raise
        raise ModelNotFound(f"cannot read {artifact_uri}/{name}: {exc}") from exc
