"""A model trained with group features, served by the real predictor and transformer: the transformer computes each
passenger's group from its Ticket and looks the statistics up by the model's own feature-set version."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pandas as pd
import pytest
import requests

from pipeline import features, model, schema
from pipeline.steps import features as features_step
from pipeline.steps import ingest, train
from pipeline.store.feature_store import GROUPS_VIEW, FeatureStore
from tests.conftest import TRAIN_CSV, TRAIN_SHA256, make_settings
from tests.fixtures.serving import launch
from tests.serving.passengers import instances, train_rows

PARITY = 1e-5  # ONNX Runtime (float32 thresholds) against the sklearn Pipeline


@pytest.fixture(scope="module")
def group_chain(services, tmp_path_factory):
    settings = make_settings(services, f"grp{uuid.uuid4().hex[:6]}")
    ingest.run(settings, source=str(TRAIN_CSV), sha256=TRAIN_SHA256)
    feature_set = features_step.run(settings)["feature_set"]
    trained = train.run(settings, feature_set=feature_set, n_iter=2, cv=3, seed=42, group_features=True)
    log_dir = tmp_path_factory.mktemp("group-serving")
    predictor = launch("predictor", settings, ["--model_uri", trained["artifact_uri"]], log_dir)
    transformer = launch("transformer", settings, ["--model_uri", trained["artifact_uri"], "--predictor_host",
                                                   predictor.url.removeprefix("http://")], log_dir)
    try:
        yield settings, feature_set, model.load(settings, trained["artifact_uri"]), transformer, trained["version"]
    finally:
        transformer.stop()
        predictor.stop()


def _expected(settings, feature_set, pipeline, raw: pd.DataFrame) -> np.ndarray:
    """What training meant: the set's statistics of every labelled passenger, no own label taken back (serving)."""
    valid = schema.validate(raw, require_id=False).valid
    X = features.transform(valid)
    stats = features_step.read_groups(settings, feature_set)
    groups = features.group_features(features.passenger_groups(valid), features.woman_or_child(X), stats, index=X.index)
    return pipeline.predict_proba(pd.concat([X, groups], axis=1))[:, 1]


def _served(transformer, settings, rows: list[dict]) -> np.ndarray:
    out = []
    for start in range(0, len(rows), 100):
        r = requests.post(f"{transformer.url}/v1/models/{settings.model_name}:predict",
                          json={"instances": rows[start:start + 100]}, timeout=60)
        assert r.status_code == 200, r.text[:500]
        out += [p["probability"] for p in r.json()["predictions"]]
    return np.array(out)


def test_group_model_serves_what_it_was_trained_on_for_every_train_row(group_chain):
    settings, feature_set, pipeline, transformer, _ = group_chain
    raw = train_rows()
    expected = _expected(settings, feature_set, pipeline, raw)
    got = _served(transformer, settings, instances(raw))
    assert np.abs(got - expected).max() <= PARITY
    # the group features matter: without tickets (no group) the same passengers get other answers
    no_ticket = _served(transformer, settings, instances(raw.drop(columns=["Ticket"])))
    assert np.abs(no_ticket - _expected(settings, feature_set, pipeline, raw.assign(Ticket=""))).max() <= PARITY
    assert np.abs(no_ticket - got).max() > 0.05


def test_group_statistics_come_from_the_offline_copy_once_redis_lost_that_version(group_chain):
    settings, feature_set, pipeline, transformer, _ = group_chain
    store = FeatureStore(settings, view=GROUPS_VIEW)
    deleted = sum(store.client.delete(k) for k in store.client.scan_iter(match=f"{store.prefix}:*"))
    assert deleted > 0
    raw = train_rows().iloc[:200]
    got = _served(transformer, settings, instances(raw))
    assert np.abs(got - _expected(settings, feature_set, pipeline, raw)).max() <= PARITY


def test_score_uses_the_group_statistics_of_the_models_feature_set(group_chain):
    """`python -m pipeline score` computes features as the transformer does: a CSV with Ticket is scored with groups."""
    from pipeline.steps import score

    settings, feature_set, pipeline, _, version = group_chain
    raw = train_rows()
    expected = _expected(settings, feature_set, pipeline, raw)
    decided = np.abs(expected - 0.5) > 1e-9
    labels = raw["Survived"].astype(int).to_numpy()
    result = score.run(settings, version=version, input=str(TRAIN_CSV))
    assert result["rows"] == 891
    assert result["accuracy"] == pytest.approx(((expected > 0.5) == labels)[decided].mean(), abs=2 / 891)


def test_a_transformer_started_before_the_model_learns_its_features_from_the_predictor(group_chain, tmp_path):
    """As in the cluster: the chart starts the transformer before the first model exists, so it knows no feature
    columns; the predictor's answer to the plain vectors names its version, and the transformer loads it."""
    settings, feature_set, pipeline, transformer, version = group_chain
    command = list(transformer.proc.args)
    predictor_host = command[command.index("--predictor_host") + 1]
    bare = launch("transformer", settings, ["--predictor_host", predictor_host], tmp_path)
    try:
        raw = train_rows().iloc[:20]
        url = f"{bare.url}/v1/models/{settings.model_name}:predict"
        first = requests.post(url, json={"instances": instances(raw)}, timeout=30)
        assert first.status_code == 503 and f"serves model version {version}" in first.json()["error"]
        deadline = time.monotonic() + 60
        while (answer := requests.post(url, json={"instances": instances(raw)}, timeout=30)).status_code == 503:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.5)
        assert answer.status_code == 200 and answer.json()["model_version"] == version, answer.text
        got = np.array([p["probability"] for p in answer.json()["predictions"]])
        assert np.abs(got - _expected(settings, feature_set, pipeline, raw)).max() <= PARITY
    finally:
        bare.stop()
