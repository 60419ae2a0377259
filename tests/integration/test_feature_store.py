"""Redis online feature store and the features step, against real Redis, Postgres and S3."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from pipeline import features, schema
from pipeline.errors import FeatureSetNotFound
from pipeline.steps import features as features_step
from pipeline.steps import ingest
from pipeline.store.feature_store import FeatureStore, key, new_version
from tests.conftest import TRAIN_CSV

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """The computed features of train.csv, indexed by PassengerId."""
    valid = schema.validate(pd.read_csv(TRAIN_CSV, dtype=str, keep_default_na=False)).valid
    return features.transform(valid).set_axis(pd.Index(valid[schema.ID].astype("int64"), name=schema.ID))


def command_calls(store: FeatureStore) -> dict[str, int]:
    """Calls per Redis command since server start (INFO commandstats)."""
    stats = store.client.info("commandstats")
    return {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()}


def test_written_set_reads_back_equal(settings, frame):
    store = FeatureStore(settings)
    version = store.write(frame)
    assert store.current() == version
    pd.testing.assert_frame_equal(store.read(version), frame)  # exact: floats, NaN and "" survive
    assert store.read_current()[0] == version


def test_one_key_per_passenger_written_in_one_mset_without_keys(settings, frame):
    store = FeatureStore(settings)
    before = command_calls(store)
    version = store.write(frame)
    store.read(version)
    after = command_calls(store)
    assert after.get("mset", 0) - before.get("mset", 0) == 1
    assert after.get("hset", 0) == before.get("hset", 0)
    assert after.get("mget", 0) - before.get("mget", 0) == 1
    assert after.get("keys", 0) == before.get("keys", 0)
    entity_keys = list(store.client.scan_iter(match=key(settings.feature_store_prefix, "v", version, "e", "*"), count=1000))
    assert len(entity_keys) == len(frame)


def test_lookup_of_one_passenger(settings, frame):
    store = FeatureStore(settings)
    version = store.write(frame)
    stored = store.lookup(version, 6)  # Moran, Mr. James: age unknown
    assert stored == {**frame.loc[6].to_dict(), "Age": None, "AgeFare": None}
    assert stored["Title"] == "Mr" and stored["Embarked"] == "Q"
    assert store.lookup(version, 10_000) is None


def test_missing_set_and_no_current_are_clear_errors(settings):
    store = FeatureStore(settings)
    with pytest.raises(FeatureSetNotFound, match="does not exist"):
        store.read("20000101T000000Z-000000")
    with pytest.raises(FeatureSetNotFound, match="no current feature set"):
        store.read_current()
    with pytest.raises(FeatureSetNotFound):
        store.activate("20000101T000000Z-000000")


def test_unactivated_and_half_written_builds_are_invisible(settings, frame):
    store = FeatureStore(settings)
    live = store.write(frame)
    staged = store.write(frame.assign(Fare=frame["Fare"] + 1), activate=False)
    assert store.current() == live
    # a build that died after some entity keys but before its meta key
    crashed = new_version()
    store.client.zadd(key(settings.feature_store_prefix, "versions"), {crashed: 0})
    store.client.set(key(settings.feature_store_prefix, "v", crashed, "e", 1), "[1]")
    with pytest.raises(FeatureSetNotFound):
        store.read(crashed)
    with pytest.raises(FeatureSetNotFound):
        store.activate(crashed)
    assert store.versions() == [live, staged]
    store.activate(staged)
    assert store.read_current()[1]["Fare"].equals(frame["Fare"] + 1)


def test_reader_never_observes_a_half_written_set(make_store, frame):
    """Readers poll the current set while builds of two different contents are written and switched."""
    writer_store, reader_store = make_store(keep=2), make_store(keep=2)
    contents = [frame, frame.assign(Fare=frame["Fare"] * 2, Title="Rare")]
    writer_store.write(contents[0])
    stop = threading.Event()
    seen, bad = set(), []

    def reader():
        while not stop.is_set():
            version, got = reader_store.read_current()
            if not (got.equals(contents[0]) or got.equals(contents[1])):
                bad.append(version)
            seen.add(version)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    written = []
    try:
        for i in range(15):
            written.append(writer_store.write(contents[i % 2]))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not bad, f"readers saw incomplete or mixed sets: {bad}"
    assert len(seen) >= 3  # the readers really ran across several switches
    assert writer_store.versions() == written[-2:]


def test_garbage_collection_keeps_the_newest_and_in_progress_builds(make_store, frame):
    store = make_store(keep=2)
    small = frame.head(5)
    versions = [store.write(small) for _ in range(4)]
    assert store.versions() == versions[-2:]
    prefix = store.prefix
    for old in versions[:2]:
        assert not list(store.client.scan_iter(match=key(prefix, "v", old, "*")))
    # an older crashed build is collected; a newer unactivated one is left alone
    crashed = "00000000T000000Z-dead00"
    store.client.zadd(key(prefix, "versions"), {crashed: 0})
    store.client.set(key(prefix, "v", crashed, "e", 1), "[1]")
    pending = store.write(small, "99990101T000000Z-beef00", activate=False)
    assert crashed in store.gc()
    assert store.client.get(key(prefix, "v", crashed, "e", 1)) is None
    assert store.versions() == [*versions[-2:], pending]


@pytest.fixture
def make_store(settings):
    def make(keep: int) -> FeatureStore:
        return FeatureStore(settings.model_copy(update={"feature_sets_keep": keep}))

    return make


# -- the features step ---------------------------------------------------------------------


def test_features_step_publishes_a_set_and_an_offline_snapshot(settings, frame):
    batch = ingest.run(settings, source=str(TRAIN_CSV))["batch_id"]
    result = features_step.run(settings)
    assert result["rows"] == 891 and result["columns"] == features.FEATURE_COLUMNS
    store = FeatureStore(settings)
    assert store.current() == result["feature_set"]
    online = store.read(result["feature_set"])
    pd.testing.assert_frame_equal(online[features.FEATURE_COLUMNS], frame)
    assert online.loc[1, "Group"] == "A/52117|7.2|S"  # the group id rides along for training's group statistics
    assert schema.LABEL not in online.columns  # the label is not an online feature
    assert store.client.get(key(settings.feature_store_prefix, "v", result["feature_set"], "e", 1)).count(b",") == \
        len(features.FEATURE_COLUMNS)

    snapshot = features_step.read_snapshot(settings, result["feature_set"])
    assert result["snapshot_uri"].endswith(features_step.snapshot_key(settings, result["feature_set"]))
    pd.testing.assert_frame_equal(snapshot[features.FEATURE_COLUMNS], frame)
    labels = pd.read_csv(TRAIN_CSV).set_index(schema.ID)[schema.LABEL]
    assert np.array_equal(snapshot[schema.LABEL].to_numpy(dtype=int), labels.loc[snapshot.index].to_numpy())

    only_batch = features_step.run(settings, batch=batch)
    assert only_batch["rows"] == 891 and only_batch["feature_set"] != result["feature_set"]


def test_features_step_on_an_empty_table_is_a_clear_error(settings, db):
    with pytest.raises(features_step.NoPassengers, match="run `python -m pipeline ingest` first"):
        features_step.run(settings)
    with pytest.raises(features_step.NoPassengers, match="batch 'nope'"):
        features_step.run(settings, batch="nope")


def test_a_build_in_progress_survives_the_gc_of_a_build_that_finished_first(make_store, frame):
    """Two feature builds overlap; the later one finishes (and garbage-collects) while the earlier one
    has registered its version but not yet written its keys. The earlier build must not be taken for
    a crashed one: once it activates it is listed, readable, and later collected like any other."""
    first, second = make_store(keep=2), make_store(keep=2)
    small = frame.head(50)
    pipeline = first.client.pipeline
    finished = []

    def pipeline_after_the_other_build(*args, **kwargs):
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        def execute_later():
            if not finished:  # the other build completes between our registration and our writes
                finished.append(second.write(small.assign(Fare=0.0)))
            return execute()

        pipe.execute = execute_later
        return pipe

    first.client.pipeline = pipeline_after_the_other_build
    slow = first.write(small)
    assert finished and first.current() == slow
    assert first.versions() == [slow, finished[0]]  # by start time
    assert first.read(slow).equals(small)
    later = [second.write(small) for _ in range(2)]
    assert second.versions() == later
    assert not list(second.client.scan_iter(match=key(second.prefix, "v", slow, "*")))  # no leaked keys


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_gc_never_deletes_the_set_a_concurrent_switch_is_moving_to(make_store, frame, keep):
    """A features run has written its set and is about to switch to it while `keep` later runs switch and
    collect: whatever FEATURE_SETS_KEEP is, its set survives them, and the switch to it succeeds."""
    store = make_store(keep=keep)
    small = frame.head(5)
    store.write(small)  # what was current before
    pending = store.write(small.assign(Fare=1.0), activate=False)  # complete; its switch not made yet
    later = [store.write(small) for _ in range(keep)]  # each switches to its own set and garbage-collects
    assert store.current() == later[-1] and pending in store.versions()
    store.activate(pending)
    version, read = store.read_current()
    assert version == pending
    pd.testing.assert_frame_equal(read, small.assign(Fare=1.0))


def test_gc_retires_a_set_only_while_it_is_not_current_and_a_retired_set_cannot_become_current(make_store, frame):
    """The two atomic steps a switch and a GC can race on: whichever runs first, `current` names a whole set."""
    store = make_store(keep=3)
    small = frame.head(5)
    old, current = store.write(small), store.write(small)
    assert store.retire(current) is False  # the switch came first: GC leaves the set whole
    pd.testing.assert_frame_equal(store.read(current), small)
    assert store.retire(old) is True  # GC came first: the switch to it fails, current stays
    with pytest.raises(FeatureSetNotFound, match="does not exist"):
        store.activate(old)
    assert store.current() == current
    assert old in store.gc() and not list(store.client.scan_iter(match=key(store.prefix, "v", old, "*")))
