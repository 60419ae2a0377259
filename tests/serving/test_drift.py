"""Drift statistics: the sliding window, PSI, and the gauges on a real transformer's /metrics."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import requests

from pipeline import features, schema
from pipeline.serving.drift import DriftMonitor, psi
from tests.fixtures.serving import launch, start_transformer
from tests.serving.passengers import instances, train_rows

THRESHOLD = 0.2
WINDOW = 300


def _features(raw: pd.DataFrame) -> list[dict]:
    """Feature vectors as the transformer serves them (and observes them)."""
    return features.transform(schema.validate(raw, require_id=False).valid).to_dict("records")


def test_psi_is_zero_for_equal_and_grows_with_shift():
    e = np.array([0.25, 0.25, 0.5])
    assert psi(e, e) == pytest.approx(0.0)
    assert psi(np.array([0.3, 0.3, 0.4]), e) < psi(np.array([0.6, 0.3, 0.1]), e)


def test_window_counts_equal_a_fresh_count_of_the_last_rows(trained_model):
    X = _features(train_rows())
    monitor = DriftMonitor(trained_model.reference, window=100, threshold=THRESHOLD, min_samples=50)
    for start in range(0, 891, 37):  # uneven batches wrap around the ring
        monitor.observe(X[start:start + 37])
    fresh = DriftMonitor(trained_model.reference, window=100, threshold=THRESHOLD, min_samples=50)
    fresh.observe(X[-100:])
    assert monitor.samples == fresh.samples == 100
    assert monitor.psi() == pytest.approx(fresh.psi())


def test_no_psi_below_min_samples(trained_model):
    monitor = DriftMonitor(trained_model.reference, window=100, min_samples=50)
    monitor.observe(_features(train_rows().iloc[:10]))
    assert monitor.psi() == {} and not monitor.drifted()


def _gauges(url: str) -> tuple[dict[str, float], float, float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    values = {m.group(1): float(m.group(2)) for m in re.finditer(r'^titanic_feature_drift_psi\{feature="(\w+)"\} (\S+)$',
                                                                 text, re.M)}
    detected = float(re.search(r"^titanic_drift_detected (\S+)$", text, re.M).group(1))
    samples = float(re.search(r"^titanic_drift_window_samples (\S+)$", text, re.M).group(1))
    return values, detected, samples


def test_replay_stays_quiet_and_shift_raises_the_flag(trained_model, model_server, tmp_path):
    transformer = start_transformer(trained_model, model_server.predictor, tmp_path, "--drift_window", str(WINDOW),
                                    "--drift_min_samples", str(WINDOW), "--drift_threshold", str(THRESHOLD))
    try:
        url = f"{transformer.url}/v1/models/{trained_model.settings.model_name}:predict"
        assert _gauges(transformer.url) == ({}, 0.0, 0.0)

        raw = train_rows()
        for start in range(0, len(raw), 100):
            r = requests.post(url, json={"instances": instances(raw.iloc[start:start + 100])}, timeout=30)
            assert r.status_code == 200, r.text[:300]
        psi_values, detected, samples = _gauges(transformer.url)
        assert samples == WINDOW
        assert set(psi_values) == set(features.FEATURE_COLUMNS)
        assert max(psi_values.values()) < THRESHOLD, psi_values
        assert detected == 0.0

        shifted = raw.sample(n=WINDOW, random_state=1).copy()
        shifted["Pclass"] = "1"
        shifted["Fare"] = pd.to_numeric(shifted["Fare"]) * 10
        for start in range(0, WINDOW, 100):  # the transformer's cap of instances per request
            r = requests.post(url, json={"instances": instances(shifted.iloc[start:start + 100])}, timeout=30)
            assert r.status_code == 200, r.text[:300]
        psi_values, detected, _ = _gauges(transformer.url)
        for feature in ("Pclass", "Fare", "PclassFare"):
            assert psi_values[feature] > THRESHOLD, (feature, psi_values)
        assert psi_values["Sex"] < THRESHOLD  # untouched features stay quiet
        assert detected == 1.0
    finally:
        transformer.stop()


def test_transformer_without_a_model_folder_follows_the_predictors_version(trained_model, model_server, tmp_path):
    """In the cluster storageUri reaches only the predictor: the transformer learns the version from its
    answers, then loads that version's metadata and drift reference from S3."""
    import time

    transformer = launch("transformer", trained_model.settings,
                         ["--model_dir", str(tmp_path / "absent"), "--drift_min_samples", "5",
                          "--predictor_host", model_server.predictor.url.removeprefix("http://")], tmp_path)
    try:
        url = f"{transformer.url}/v1/models/{trained_model.settings.model_name}:predict"
        metrics_url = f"{transformer.url}/metrics"
        assert "titanic_model_info{" not in requests.get(metrics_url, timeout=10).text
        body = {"instances": instances(train_rows().iloc[:10])}
        first = requests.post(url, json=body, timeout=30)
        assert first.status_code == 200 and first.json()["model_version"] == trained_model.version
        deadline = time.monotonic() + 30
        while f'titanic_model_info{{version="{trained_model.version}"}} 1.0' not in requests.get(metrics_url, timeout=10).text:
            assert time.monotonic() < deadline, transformer.log_text()[-2000:]
            time.sleep(0.2)
        assert requests.post(url, json=body, timeout=30).status_code == 200
        psi_values, detected, samples = _gauges(transformer.url)
        assert samples == 10 and set(psi_values) == set(trained_model.reference["features"])
    finally:
        transformer.stop()
