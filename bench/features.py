"""Feature store on train.csv (891 passengers): write, whole-set read, one-passenger lookup, and the step.

The write is compared with the two layouts measured before choosing the encoding: one hash
per passenger written with pipelined HSETs (Feast's layout), and one HSET per passenger
without pipelining (the seed's code).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from bench.environment import isolated_settings
from pipeline.steps import features as features_step
from pipeline.steps import ingest
from pipeline.store.feature_store import FeatureStore, key, new_version
from tests.conftest import TRAIN_CSV

REPEATS = 20
LOOKUPS = 5000


def _median_ms(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def _hash_rows(frame):
    rows = frame.astype(object).where(frame.notna(), "").to_dict("index")
    return {k: {c: str(v) for c, v in r.items()} for k, r in rows.items()}


def run() -> dict:
    with isolated_settings(feature_sets_keep=1000) as settings:
        ingest.run(settings, source=str(TRAIN_CSV))
        step_ms = _median_ms(lambda: features_step.run(settings), repeats=5)
        store = FeatureStore(settings)
        version, frame = store.read_current()

        write_ms = _median_ms(lambda: store.write(frame, activate=False))
        read_ms = _median_ms(lambda: store.read(version))
        ids = np.random.default_rng(0).choice(frame.index.to_numpy(), LOOKUPS)
        store.lookup(version, int(ids[0]))  # columns cached, as in a long-running server
        lookups = []
        for pid in ids:
            started = time.perf_counter()
            store.lookup(version, int(pid))
            lookups.append((time.perf_counter() - started) * 1000)

        client = store.client
        prefix = settings.feature_store_prefix + ":alt"

        def pipelined_hset():
            v, pipe = new_version(), client.pipeline(transaction=False)
            for pid, row in _hash_rows(frame).items():
                pipe.hset(key(prefix, v, pid), mapping=row)
            pipe.execute()

        def hset_per_row():
            v = new_version()
            for pid, row in _hash_rows(frame).items():
                client.hset(key(prefix, v, pid), mapping=row)

        pipelined_ms = _median_ms(pipelined_hset)
        unpipelined_ms = _median_ms(hset_per_row, repeats=5)
        value = client.get(key(settings.feature_store_prefix, "v", version, "e", int(frame.index[0])))
        return {
            "rows": len(frame),
            "encoding": "one MSET of JSON arrays",
            "value_bytes_example": len(value),
            "redis_write_ms": write_ms,
            "redis_write_target_ms": 15,
            "read_whole_set_ms": read_ms,
            "read_whole_set_target_ms": 10,
            "lookup_p50_ms": round(float(np.percentile(lookups, 50)), 4),
            "lookup_p99_ms": round(float(np.percentile(lookups, 99)), 4),
            "lookup_p99_target_ms": 0.2,
            "alt_pipelined_hset_ms": pipelined_ms,
            "alt_hset_per_row_unpipelined_ms": unpipelined_ms,
            "speedup_vs_hset_per_row": round(unpipelined_ms / write_ms, 1),
            "speedup_vs_pipelined_hset": round(pipelined_ms / write_ms, 1),
            "features_step_ms": step_ms,
        }
