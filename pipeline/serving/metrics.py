"""Model identity gauges, exported on the model server's `/metrics` next to KServe's own histograms."""

from __future__ import annotations

from prometheus_client import Gauge

MODEL_INFO = Gauge("titanic_model_info", "Model version served by this process (value 1).", ["version"])
MODEL_ACCURACY = Gauge("titanic_model_accuracy", "Hold-out accuracy of the served model version.", ["version"])


def set_model(version: str, accuracy: float | None) -> None:
    """Point the gauges at `version` only (a reload must not leave the old version's series behind)."""
    MODEL_INFO.clear()
    MODEL_ACCURACY.clear()
    MODEL_INFO.labels(version=version).set(1)
    if accuracy is not None:
        MODEL_ACCURACY.labels(version=version).set(accuracy)
