"""features.group_*: group ids, statistics from labels, leave-one-out, the "no group" values."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sklearn.model_selection import StratifiedKFold, cross_val_score

from pipeline import features, model


def test_group_id_joins_consecutive_tickets_of_one_fare_and_port():
    ids = features.group_id(["113803", " 113805", "113803", "a/5 21171", "", None],
                            [53.1, 53.1, 26.0, 7.25, 8.05, 8.05], ["S", "s", "S", "S", "S", "S"])
    assert ids[0] == ids[1]  # consecutive tickets, same fare and port: bought together
    assert ids[0] != ids[2]  # same ticket stem at another fare: not the same party
    assert ids[3] == "A/52117|7.2|S"
    assert list(ids[4:]) == ["", ""]  # no ticket, no group


def test_statistics_count_labelled_members_and_women_children():
    stats = features.group_statistics(["g", "g", "g", "h", ""], [1, 0, 1, 0, 1], [1, 0, 0, 1, 1])
    assert stats.loc["g"].tolist() == [3, 1, 2, 1]  # known, survived, wc_known, wc_survived
    assert stats.loc["h"].tolist() == [1, 1, 0, 0]
    assert "" not in stats.index  # passengers without a ticket form no group


def test_leave_one_out_never_feeds_a_passengers_own_label():
    groups, wc, y = ["g", "g", "g"], [1, 1, 0], [1, 0, 0]
    stats = features.group_statistics(groups, wc, y)
    out = features.group_features(groups, wc, stats, own_survived=y)
    # the first passenger sees only the two others (0 of 2 survived; 1 other woman/child, who died)
    assert out.iloc[0].tolist() == [2, 0.0, 1, 0.0]
    assert out.iloc[1].tolist() == [2, 0.5, 1, 1.0]
    # flipping a passenger's own label leaves its own features unchanged
    flipped = [0, 0, 0]
    again = features.group_features(groups, wc, features.group_statistics(groups, wc, flipped), own_survived=flipped)
    pd.testing.assert_series_equal(out.iloc[0], again.iloc[0])


def test_unseen_and_unknown_groups_get_the_no_group_values():
    stats = features.group_statistics(["g", "g"], [1, 1], [1, 1])
    out = features.group_features(["g", "other", ""], [1, 0, 0], stats, index=pd.Index([7, 8, 9]))
    assert list(out.columns) == features.GROUP_FEATURES and list(out.index) == [7, 8, 9]
    assert out.loc[7].tolist() == [2, 1.0, 2, 1.0]  # a new passenger of a known group sees all its members
    for i in (8, 9):
        assert out.loc[i, "GroupKnown"] == 0 and out.loc[i, "GroupWCKnown"] == 0
        assert out.loc[i, "GroupSurvival"] == out.loc[i, "GroupWCSurvival"] == features.NO_GROUP_SHARE == 0.5


def test_no_group_values_do_not_depend_on_leave_one_out():
    # a training passenger alone in its group looks exactly like an unseen passenger: the same in training and serving
    stats = features.group_statistics(["solo"], [1], [1])
    trained = features.group_features(["solo"], [1], stats, own_survived=[1])
    unseen = features.group_features(["new"], [1], stats)
    pd.testing.assert_frame_equal(trained, unseen)


def _passengers(groups, seed: int = 0) -> pd.DataFrame:
    """`transform` output of alike passengers (nothing but the group tells them apart) plus their group ids."""
    rng = np.random.default_rng(seed)
    n = len(groups)
    raw = pd.DataFrame({"Name": "Doe, Mrs. Jane", "Sex": "female", "Age": rng.integers(20, 40, n).astype(float),
                        "Pclass": 3, "SibSp": 0, "Parch": 0, "Fare": 7.25, "Embarked": "S", "Cabin": ""})
    return features.transform(raw).assign(**{model.GROUP_COLUMN: groups})


def test_group_model_learns_the_fate_of_groups_that_share_it():
    groups = np.repeat([f"g{i}" for i in range(60)], 4)
    y = np.repeat(np.random.default_rng(1).integers(0, 2, 60), 4)  # a group lives or dies together
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    assert cross_val_score(model.GroupFeatureModel(), _passengers(groups), y, cv=cv).mean() > 0.9


def test_group_model_cv_is_honest_when_labels_are_noise():
    # pairs with independent labels: a passenger's own label leaking into its group share would score far above chance
    groups = np.repeat([f"g{i}" for i in range(150)], 2)
    y = np.random.default_rng(2).integers(0, 2, 300)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    assert cross_val_score(model.GroupFeatureModel(), _passengers(groups), y, cv=cv).mean() < 0.62


def test_leave_one_out_of_a_passenger_without_group_keeps_the_no_group_values():
    stats = features.group_statistics(["g", ""], [1, 1], [1, 1])
    out = features.group_features(["", "g"], [1, 1], stats, own_survived=[1, 1])
    assert out.iloc[0]["GroupKnown"] == 0 and out.iloc[0]["GroupSurvival"] == features.NO_GROUP_SHARE
    assert out.iloc[1]["GroupKnown"] == 0  # alone in its group once its own label is taken out
