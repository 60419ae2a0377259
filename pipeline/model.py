"""The model: an sklearn Pipeline over `features.transform` output, and its hyper-parameter search space.

Imputation and one-hot encoding are fitted here, inside the Pipeline saved as `model.joblib`,
so serving needs only `features.transform` and this one artefact. The preprocessing uses only
estimators skl2onnx converts (SimpleImputer, OneHotEncoder, RandomForestClassifier); the
categorical imputer treats "" as missing, as `features.transform` emits.
"""

from __future__ import annotations

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from pipeline.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES

CLASSIFIER_STEP = "classifier"
MISSING_CATEGORY = "missing"

# The seed's search space, as lists so that it is JSON-serialisable and recorded in metadata.
SEARCH_SPACE: dict[str, list] = {
    f"{CLASSIFIER_STEP}__n_estimators": [50, 100, 150, 200, 250, 300],
    f"{CLASSIFIER_STEP}__max_depth": [None, 10, 20, 30],
    f"{CLASSIFIER_STEP}__min_samples_split": [2, 5, 10],
    f"{CLASSIFIER_STEP}__min_samples_leaf": [1, 2, 4],
}


def build_pipeline(seed: int = 42) -> Pipeline:
    """An unfitted Pipeline: impute/encode by feature kind, then a random forest."""
    numeric = SimpleImputer(strategy="median")
    categorical = Pipeline([
        ("impute", SimpleImputer(strategy="constant", missing_values="", fill_value=MISSING_CATEGORY)),
        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
    ])
    preprocess = ColumnTransformer(
        [("num", numeric, NUMERIC_FEATURES), ("cat", categorical, CATEGORICAL_FEATURES)],
        remainder="drop",
    )
    # n_jobs=1: the search parallelises over folds; the forest's own result does not depend on it.
    classifier = RandomForestClassifier(random_state=seed, n_jobs=1)
    return Pipeline([("preprocess", preprocess), (CLASSIFIER_STEP, classifier)])


def feature_names(pipeline: Pipeline) -> list[str]:
    """Names of the columns the classifier sees (one-hot expanded), for importances."""
    return [n.split("__", 1)[1] for n in pipeline.named_steps["preprocess"].get_feature_names_out()]
