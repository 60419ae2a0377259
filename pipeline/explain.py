"""Why the forest said what it said: exact per-feature contributions to one passenger's survival probability.

TreeSHAP (the `shap` library's tree explainer, path-dependent) over the fitted forest of a model Pipeline. For a
random forest classifier the trees' raw output is the class probability itself, so for every passenger

    base + sum(contributions) == predicted probability of survival   (to floating-point precision)

where `base` is the forest's average over its training data. Contributions of the one-hot columns of a
categorical feature are summed back into that feature, so people read "Sex" or "Title", not encoder columns.
Used by the predictor (`:explain`) and by the train step (global importance: mean |contribution|).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from pipeline.model import CLASSIFIER_STEP


def _owners(preprocess) -> list[str]:
    """The input feature behind each column the classifier sees, in the ColumnTransformer's output order."""
    owners: list[str] = []
    for name, transformer, columns in preprocess.transformers_:
        if name == "remainder" or transformer == "drop":
            continue
        encoder = transformer.named_steps.get("onehot") if isinstance(transformer, Pipeline) else None
        if encoder is None:
            owners += list(columns)
        else:
            owners += [c for c, categories in zip(columns, encoder.categories_) for _ in categories]
    return owners


class Explainer:
    """Contributions of the input features (a `features.transform` frame) for a fitted model Pipeline."""

    def __init__(self, pipeline: Pipeline):
        import shap  # heavy (numba): only where explanations are computed

        self.preprocess = pipeline.named_steps["preprocess"]
        forest = pipeline.named_steps[CLASSIFIER_STEP]
        self.survived = list(forest.classes_).index(1)
        self.tree = shap.TreeExplainer(forest)
        owners = _owners(self.preprocess)
        self.features = list(dict.fromkeys(owners))
        # (encoded columns x features) 0/1 matrix: one product sums each feature's one-hot columns
        self.fold = np.zeros((len(owners), len(self.features)))
        self.fold[np.arange(len(owners)), [self.features.index(o) for o in owners]] = 1.0
        self.base = float(np.atleast_1d(self.tree.expected_value)[self.survived])

    def contributions(self, frame: pd.DataFrame) -> np.ndarray:
        """(rows x features) contributions to the survival probability, in `self.features` order."""
        values = np.asarray(self.tree.shap_values(self.preprocess.transform(frame), check_additivity=False))
        return values[..., self.survived] @ self.fold  # shap >= 0.45: (rows, columns, classes)

    def explain(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        """Per row: {"probability": p, "base": b, "contributions": {feature: c}} with b + sum(c) == p."""
        out = []
        for row in self.contributions(frame):
            out.append({"probability": float(self.base + row.sum()), "base": self.base,
                        "contributions": {f: float(c) for f, c in zip(self.features, row)}})
        return out

    def mean_abs(self, frame: pd.DataFrame) -> dict[str, float]:
        """Global importance: mean |contribution| of each feature over `frame`, largest first."""
        means = np.abs(self.contributions(frame)).mean(axis=0)
        return {f: float(m) for f, m in sorted(zip(self.features, means), key=lambda fm: -fm[1])}
