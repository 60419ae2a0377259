"""What group features cost a request: the chain (transformer -> predictor) serving a plain model and a group model.

Both models come from the same ingest and feature set (`run-all`'s steps, small search); both chains run at once,
a real predictor and transformer each, the group model's statistics looked up in the real Redis (one MGET per
request, by the model's feature-set version). One full passenger with a ticket, so every request of the group model
does the lookup. The two are measured in alternating rounds, so a change of the machine's load hits both alike; the
figure is the median over rounds of the one-client p50 difference. Issue 12's budget: at most 0.3 ms at p50.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace

from bench.environment import isolated_settings
from bench.web import _load
from tests.webapp.conftest import VALID

ROUNDS = 6
PER_ROUND = 200
BUDGET_P50_MS = 0.3


def _chain(stack: contextlib.ExitStack, trained: SimpleNamespace, logs: Path) -> str:
    from tests.fixtures.serving import start_predictor, start_transformer

    predictor = start_predictor(trained, logs)
    stack.callback(predictor.stop)
    transformer = start_transformer(trained, predictor, logs)
    stack.callback(transformer.stop)
    return f"{transformer.url}/v1/models/{trained.settings.model_name}:predict"


def run() -> dict:
    from pipeline.steps import features, ingest, train
    from tests.conftest import TRAIN_CSV, TRAIN_SHA256
    from tests.fixtures.training import SEARCH

    body = {"instances": [{**VALID, "Ticket": "PC 17599"}]}
    with isolated_settings() as settings, tempfile.TemporaryDirectory(prefix="bench-groups-") as logs, \
            contextlib.ExitStack() as stack:
        ingest.run(settings, source=str(TRAIN_CSV), sha256=TRAIN_SHA256)
        feature_set = features.run(settings)["feature_set"]
        urls = {}
        for label, grouped in (("plain", False), ("groups", True)):
            trained = train.run(settings, feature_set=feature_set, **SEARCH, group_features=grouped)
            urls[label] = _chain(stack, SimpleNamespace(settings=settings, artifact_uri=trained["artifact_uri"],
                                                        version=trained["version"]), Path(logs))
        rounds = [{label: _load(url, body, 1, PER_ROUND) for label, url in urls.items()} for _ in range(ROUNDS)]
        added = [r["groups"]["p50_ms"] - r["plain"]["p50_ms"] for r in rounds]
        return {
            "p50_ms": {label: [r[label]["p50_ms"] for r in rounds] for label in urls},
            "p99_ms": {label: [r[label]["p99_ms"] for r in rounds] for label in urls},
            "groups_added_p50_ms_median": round(statistics.median(added), 3),
            "groups_added_p50_ms_rounds": [round(a, 2) for a in added],
            "budget_p50_ms": BUDGET_P50_MS,
        }
