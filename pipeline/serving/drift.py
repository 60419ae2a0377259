"""Feature drift: PSI of a sliding window of served feature vectors against the training distribution.

The reference is the model version's `reference.json` (written by the train step): numeric
features as decile bins plus a missing share, categorical features as category shares. The
window keeps the bin index of each recent vector and running counts per bin; served vectors
are binned in batches (one vectorised binning and two bincounts per batch), and PSI is
computed only when Prometheus scrapes `/metrics`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Callable

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# Added to both shares before the logarithm: an empty bin must not make PSI infinite.
EPSILON = 1e-4


def psi(actual: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    a, e = actual + EPSILON, expected + EPSILON
    return float(np.sum((a - e) * np.log(a / e)))


class _Feature:
    """Binning of one feature as the reference defines it; the last bin collects the rest."""

    def __init__(self, name: str, spec: dict):
        self.name = name
        self.numeric = spec["type"] == "numeric"
        if self.numeric:
            self.edges = np.asarray(spec["edges"], dtype=np.float64)
            # bins 0..k from the edges, then one bin for missing values
            self.expected = np.append(np.asarray(spec["proportions"], dtype=np.float64), float(spec.get("missing", 0.0)))
        else:
            self.categories = list(spec["proportions"])
            self._code = {c: i for i, c in enumerate(self.categories)}
            # known categories, then one bin for values never seen in training
            self.expected = np.append(np.asarray([spec["proportions"][c] for c in self.categories], dtype=np.float64), 0.0)
        self.bins = len(self.expected)

    def bin(self, values: list) -> np.ndarray:
        if self.numeric:
            x = np.asarray(values, dtype=np.float64)
            out = np.searchsorted(self.edges, x, side="left")
            out[np.isnan(x)] = self.bins - 1
            return out
        other = self.bins - 1  # features.transform gives str categories, "" for missing
        return np.fromiter((self._code.get(v, other) for v in values), dtype=np.int64, count=len(values))


class DriftMonitor:
    """Bounded window of recent feature vectors and their PSI per feature.

    Args:
        reference: the parsed `reference.json`.
        window: how many recent vectors the PSI is computed over.
        threshold: PSI above which a feature counts as drifted.
        min_samples: below this many vectors no PSI is exported (a handful of requests is noise).
    """

    def __init__(self, reference: dict, *, window: int = 500, threshold: float = 0.2, min_samples: int = 100):
        if window < 1 or min_samples < 1:
            raise ValueError("window and min_samples must be positive")
        self.features = [_Feature(name, spec) for name, spec in reference["features"].items()]
        self.window, self.threshold, self.min_samples = window, threshold, min(min_samples, window)
        self._ring = np.full((window, len(self.features)), -1, dtype=np.int64)
        self._counts = [np.zeros(f.bins, dtype=np.int64) for f in self.features]
        self._pos = self._size = 0
        self._lock = threading.Lock()
        self._queued: list[Mapping] = []

    # Binning costs per call, not per row (~0.2 ms for one vector, 0.7 ms for 64): vectors wait
    # in a queue and are binned together once this many have come, or when the window is read.
    BATCH = 64

    def observe(self, vectors: Sequence[Mapping]) -> None:
        """Add served feature vectors: the dicts (feature -> value) the transformer sends the predictor."""
        if not vectors:
            return
        with self._lock:
            self._queued.extend(vectors)
            if len(self._queued) < self.BATCH:
                return
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            vectors, self._queued = self._queued, []
        if vectors:
            self._add(vectors[-self.window:])

    def _add(self, vectors: list[Mapping]) -> None:
        binned = np.column_stack([f.bin([v[f.name] for v in vectors]) for f in self.features])
        n = len(binned)
        with self._lock:
            slots = (self._pos + np.arange(n)) % self.window
            evicted = self._ring[slots]
            for j, f in enumerate(self.features):
                old = evicted[:, j]
                self._counts[j] -= np.bincount(old[old >= 0], minlength=f.bins)
                self._counts[j] += np.bincount(binned[:, j], minlength=f.bins)
            self._ring[slots] = binned
            self._pos = (self._pos + n) % self.window
            self._size = min(self.window, self._size + n)

    @property
    def samples(self) -> int:
        self._flush()
        return self._size

    def psi(self) -> dict[str, float]:
        """PSI per feature over the current window; empty while it holds fewer than `min_samples`."""
        self._flush()
        with self._lock:
            size, counts = self._size, [c.copy() for c in self._counts]
        if size < self.min_samples:
            return {}
        return {f.name: psi(c / size, f.expected) for f, c in zip(self.features, counts)}

    def drifted(self, values: dict[str, float] | None = None) -> bool:
        values = self.psi() if values is None else values
        return any(v > self.threshold for v in values.values())


class DriftCollector(Collector):
    """Prometheus collector computing the drift gauges at scrape time.

    Takes a function returning the current monitor: the transformer replaces its monitor when
    the predictor starts serving another model version (new reference, empty window).
    """

    def __init__(self, monitor: Callable[[], DriftMonitor | None]):
        self.monitor = monitor

    def collect(self):
        monitor = self.monitor()
        values = monitor.psi() if monitor else {}
        gauge = GaugeMetricFamily("titanic_feature_drift_psi",
                                  "PSI of the feature over the recent window against the training distribution.",
                                  labels=["feature"])
        for name, value in values.items():
            gauge.add_metric([name], value)
        yield gauge
        yield GaugeMetricFamily("titanic_drift_detected", "1 when any feature's PSI exceeds the drift threshold.",
                                value=int(monitor.drifted(values)) if monitor else 0)
        yield GaugeMetricFamily("titanic_drift_window_samples", "Feature vectors in the drift window.",
                                value=monitor.samples if monitor else 0)
