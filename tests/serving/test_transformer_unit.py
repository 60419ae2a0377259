"""TitanicTransformer internals in process: version following and request coalescing."""

from __future__ import annotations

import asyncio
import time

import pandas as pd

from pipeline import features
from pipeline.serving.artifacts import ModelArtifacts
from pipeline.serving.transformer import InvalidInstances, TitanicTransformer
from tests.serving.passengers import instances, random_passengers


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_follow_loads_a_new_version_once_and_backs_off_after_a_failure():
    calls = []

    def locate(version):
        calls.append(version)
        if version == "broken":
            raise RuntimeError("no such folder")
        return ModelArtifacts(version=version, source="test", metadata={"metrics": {"accuracy": 0.8}}, reference=None)

    t = TitanicTransformer("titanic", None, locate=locate)
    t._follow("v2")
    _wait(lambda: t.artifacts.version == "v2")
    t._follow("v2")
    t._follow("broken")
    _wait(lambda: "broken" in t._retry_at)
    for _ in range(5):
        t._follow("broken")  # within the back-off: no new attempt, no log spam
    time.sleep(0.05)
    assert calls == ["v2", "broken"] and t.artifacts.version == "v2"


def test_concurrent_requests_share_one_features_call():
    t = TitanicTransformer("titanic", None)
    sizes = []
    compute = t._batcher.fn
    t._batcher.fn = lambda requests: sizes.append(len(requests)) or compute(requests)
    rows = instances(random_passengers(8, seed=1))
    bad = {**rows[0], "Age": -1}

    async def main():
        return await asyncio.gather(*(t._batcher.run([r]) for r in rows), t._batcher.run([rows[1], bad]),
                                    return_exceptions=True)

    results = asyncio.run(main())
    assert sizes == [9]
    assert all(isinstance(r, list) and len(r) == 1 for r in results[:8])
    assert isinstance(results[8], InvalidInstances) and results[8].errors[0]["instance"] == 1
    expected = pd.DataFrame(t.features_of(rows))
    got = pd.DataFrame([r[0] for r in results[:8]])
    pd.testing.assert_frame_equal(got, expected)



class _Store:
    """An online store in which the record of passenger 13 lost a column (a damaged build)."""

    def __init__(self, record: dict):
        self.record = record

    def current(self):
        return "fs1"

    def lookup(self, version, pid):
        return {k: v for k, v in self.record.items() if not (pid == 13 and k == features.NUMERIC_FEATURES[0])}


def test_one_failing_request_fails_alone_not_its_coalesced_neighbours():
    rows = instances(random_passengers(8, seed=2))
    [record] = TitanicTransformer("titanic", None).features_of(rows[:1])
    t = TitanicTransformer("titanic", None, feature_store=_Store(record))
    sizes = []
    compute = t._batcher.fn
    t._batcher.fn = lambda requests: sizes.append(len(requests)) or compute(requests)

    async def main():
        return await asyncio.gather(*(t._batcher.run([r]) for r in rows[:4]), t._batcher.run([{"PassengerId": 13}]),
                                    t._batcher.run([{"PassengerId": 5}]), *(t._batcher.run([r]) for r in rows[4:]),
                                    return_exceptions=True)

    results = asyncio.run(main())
    assert sizes[0] == 10  # they were coalesced
    assert [i for i, r in enumerate(results) if isinstance(r, Exception)] == [4], results  # only the damaged record
    assert all(isinstance(r, list) and len(r) == 1 for i, r in enumerate(results) if i != 4)
