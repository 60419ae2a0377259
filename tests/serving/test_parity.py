"""Decision parity of the fast path (ONNX Runtime) with the saved scikit-learn Pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import features, schema
from pipeline.serving.onnx_export import OnnxRunner, categorical_column, decisions, to_onnx_bytes
from tests.serving.passengers import random_passengers, train_rows

TIE = 1e-6  # |p - 0.5| below this is an exact tie (even tree counts): either class is right
MAX_DELTA = 1e-5


@pytest.fixture(scope="module")
def runner(trained_model):
    pipe = trained_model.pipeline
    return OnnxRunner(to_onnx_bytes(pipe, features.NUMERIC_FEATURES, features.CATEGORICAL_FEATURES),
                      features.NUMERIC_FEATURES, features.CATEGORICAL_FEATURES)


def _compare(trained_model, runner, raw):
    X = features.transform(schema.validate(raw, require_id=False).valid)
    expected = trained_model.pipeline.predict_proba(X)
    got = runner.predict_proba({c: X[c].to_numpy() for c in features.FEATURE_COLUMNS})
    assert got.shape == expected.shape == (len(raw), 2)
    delta = np.abs(got[:, 1] - expected[:, 1])
    assert delta.max() <= MAX_DELTA, f"max |dp| {delta.max():.2e} at row {delta.argmax()}"
    decided = np.abs(expected[:, 1] - 0.5) >= TIE
    sklearn_class = trained_model.pipeline.predict(X)
    mismatch = decided & (decisions(got) != sklearn_class)
    assert not mismatch.any(), f"class differs on rows {np.flatnonzero(mismatch)[:10]}"
    # our decision rule is sklearn's, also at ties
    assert (decisions(expected) == sklearn_class).all()
    return decided


def test_onnx_matches_sklearn_on_every_train_row(trained_model, runner):
    raw = train_rows()
    decided = _compare(trained_model, runner, raw)
    assert decided.sum() >= 0.95 * len(raw)


def test_onnx_matches_sklearn_on_10000_random_passengers(trained_model, runner):
    raw = random_passengers(10_000, seed=7)
    decided = _compare(trained_model, runner, raw)
    assert decided.sum() >= 0.95 * len(raw)


def test_missing_category_sent_as_null_is_missing(trained_model, runner):
    """JSON null must reach the ONNX string imputer as "", not as the word "None" (which would mispredict)."""
    raw = random_passengers(300, seed=3)
    raw.loc[::2, ["Embarked", "Cabin"]] = ""
    X = features.transform(schema.validate(raw, require_id=False).valid)
    columns = {c: X[c].to_numpy() for c in features.NUMERIC_FEATURES}
    columns.update({c: categorical_column(X[c].replace("", None).tolist()) for c in features.CATEGORICAL_FEATURES})
    got = runner.predict_proba(columns)
    expected = trained_model.pipeline.predict_proba(X)
    assert np.abs(got - expected).max() <= MAX_DELTA
