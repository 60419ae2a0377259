"""The group statistics view of the online store: written by the features step, versioned like the passenger set."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from pipeline import features, schema
from pipeline.steps import features as features_step
from pipeline.steps import ingest
from pipeline.store import s3
from pipeline.store.feature_store import GROUPS_VIEW, FeatureStore
from tests.conftest import TRAIN_CSV

pytestmark = pytest.mark.integration


def expected_statistics() -> pd.DataFrame:
    """Group statistics of train.csv computed straight from the CSV, every label counted."""
    valid = schema.validate(pd.read_csv(TRAIN_CSV, dtype=str, keep_default_na=False)).valid
    groups = features.group_id(valid["Ticket"], valid["Fare"], valid["Embarked"])
    wc = features.woman_or_child(features.transform(valid))
    return features.group_statistics(groups, wc, valid[schema.LABEL].astype("int64"))


def test_features_step_writes_the_group_statistics_under_its_version_online_and_offline(settings):
    ingest.run(settings, source=str(TRAIN_CSV))
    result = features_step.run(settings)
    version = result["feature_set"]
    groups = FeatureStore(settings, view=GROUPS_VIEW)
    assert groups.current() == version  # same version id as the passenger set it belongs to
    online = groups.read(version)
    expected = expected_statistics()
    assert result["groups"] == len(expected) == len(online)
    pd.testing.assert_frame_equal(online.sort_index(), expected.sort_index(), check_names=False, check_index_type=False)
    assert list(online.columns) == features.GROUP_STAT_COLUMNS  # counts only: no passenger's label is stored
    # the Sage family (ticket CA. 2343): 7 labelled members, none survived
    sage = online.loc[features.group_id(["CA. 2343"], [69.55], ["S"])[0]]
    assert sage["known"] == 7 and sage["survived"] == 0

    data = s3.get_bytes(s3.client(settings), settings.bucket_features, features_step.groups_key(settings, version))
    offline = pd.read_parquet(io.BytesIO(data))
    pd.testing.assert_frame_equal(offline, online, check_names=False, check_index_type=False)


def test_lookup_of_a_batch_of_groups_is_one_mget_and_skips_unknown_groups(settings):
    store = FeatureStore(settings, view=GROUPS_VIEW)
    stats = expected_statistics()
    version = store.write(stats)
    wanted = [stats.index[0], "NOSUCH|1.0|S", stats.index[1], stats.index[0]]
    store.lookup_many(version, wanted[:1])  # the columns are cached once per version
    before = store.client.info("commandstats")
    found = store.lookup_many(version, wanted)
    after = store.client.info("commandstats")
    assert after["cmdstat_mget"]["calls"] - before["cmdstat_mget"]["calls"] == 1
    assert sum(v["calls"] for v in after.values()) - sum(v["calls"] for v in before.values()) == 2  # mget + info
    assert list(found.index) == [stats.index[0], stats.index[1]]
    assert found.loc[stats.index[1]].tolist() == stats.iloc[1].tolist()


def test_group_sets_follow_the_passenger_sets_garbage_collection(settings):
    ingest.run(settings, source=str(TRAIN_CSV))
    keep_one = settings.model_copy(update={"feature_sets_keep": 1})
    first = features_step.run(keep_one)["feature_set"]
    second = features_step.run(keep_one)["feature_set"]
    groups = FeatureStore(keep_one, view=GROUPS_VIEW)
    assert groups.versions() == [second] and FeatureStore(keep_one).versions() == [second]
    assert not list(groups.client.scan_iter(match=f"{groups.prefix}:fs:v:{first}:*"))
