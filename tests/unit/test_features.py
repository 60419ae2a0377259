"""features.transform: titles, family features, missing values, output contract."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline import features, schema


def records(*rows: dict) -> pd.DataFrame:
    """Validated raw records, as ingest and the transformer pass them."""
    base = {"Name": "Doe, Mr. John", "Sex": "male", "Age": 30, "Pclass": 3, "SibSp": 0, "Parch": 0,
            "Fare": 7.25, "Embarked": "S", "Cabin": ""}
    result = schema.validate(pd.DataFrame([{**base, **r} for r in rows]), require_id=False)
    assert result.rejected.empty, result.rejected
    return result.valid


@pytest.mark.parametrize(("name", "sex", "expected"), [
    ("Braund, Mr. Owen Harris", "male", "Mr"),
    ("Cumings, Mrs. John Bradley (Florence Briggs Thayer)", "female", "Mrs"),
    ("Heikkinen, Miss. Laina", "female", "Miss"),
    ("Palsson, Master. Gosta Leonard", "male", "Master"),
    ("Aubart, Mme. Leontine Pauline", "female", "Mrs"),
    ("Sagesser, Mlle. Emma", "female", "Miss"),
    ("Reynaldo, Ms. Encarnacion", "female", "Miss"),
    ("Rothes, the Countess. of (Lucy Noel Martha Dyer-Edwards)", "female", "Rare"),
    ("Uruchurtu, Don. Manuel E", "male", "Rare"),
    ("Byles, Rev. Thomas Roussel Davids", "male", "Rare"),
    ("Minahan, Dr. William Edward", "male", "Rare"),
    ("smith, mrs. jane", "female", "Mrs"),  # case from a web form
    ("Mrs Jane Smith", "female", "Mrs"),
    ("Dr. Jane Smith", "female", "Rare"),
    ("John Smith Jr.", "male", "Mr"),  # Jr is not a title: falls back to sex and age
    ("Mister Mrsmith", "male", "Mr"),  # title words only as whole words
])
def test_title_is_normalised(name, sex, expected):
    assert features.transform(records({"Name": name, "Sex": sex}))["Title"].tolist() == [expected]


def test_title_without_one_falls_back_to_sex_and_age():
    frame = records({"Name": "Jane Doe", "Sex": "female", "Age": 40}, {"Name": "Jane Doe", "Sex": "female", "Age": 8},
                    {"Name": "John Doe", "Sex": "male", "Age": 40}, {"Name": "John Doe", "Sex": "male", "Age": 5},
                    {"Name": "John Doe", "Sex": "male", "Age": None})
    assert features.transform(frame)["Title"].tolist() == ["Mrs", "Miss", "Mr", "Master", "Mr"]


def test_family_size_and_is_alone():
    out = features.transform(records({"SibSp": 0, "Parch": 0}, {"SibSp": 1, "Parch": 2}, {"SibSp": 4, "Parch": 0}))
    assert out["FamilySize"].tolist() == [1.0, 4.0, 5.0]
    assert out["IsAlone"].tolist() == [1.0, 0.0, 0.0]
    assert out["FarePerPerson"].tolist() == [7.25, 7.25 / 4, 7.25 / 5]


def test_cabin_features():
    out = features.transform(records({"Cabin": "C85"}, {"Cabin": "F G73"}, {"Cabin": ""}, {"Cabin": "T"},
                                     {"Cabin": "X1"}))
    assert out["HasCabin"].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]


def test_interactions():
    out = features.transform(records({"Pclass": 1, "Age": 38, "Fare": 71.2833}))
    assert out.loc[0, "PclassFare"] == pytest.approx(71.2833)
    assert out.loc[0, "AgeFare"] == pytest.approx(38 * 71.2833)


def test_missing_values_stay_missing_with_the_declared_markers():
    out = features.transform(records({"Age": None, "Fare": None, "Embarked": None, "Cabin": None}))
    row = out.iloc[0]
    assert math.isnan(row["Age"]) and math.isnan(row["Fare"])
    assert math.isnan(row["AgeFare"]) and math.isnan(row["PclassFare"]) and math.isnan(row["FarePerPerson"])
    assert row["Embarked"] == ""
    assert row["HasCabin"] == 0.0
    # never None/NaN in categoricals: the ONNX string imputer needs ""
    assert all(isinstance(v, str) for v in out[features.CATEGORICAL_FEATURES].iloc[0])


def test_output_contract_on_the_training_file(train_frame):
    out = features.transform(train_frame)
    assert list(out.columns) == features.FEATURE_COLUMNS
    assert features.FEATURE_COLUMNS == features.NUMERIC_FEATURES + features.CATEGORICAL_FEATURES
    assert out.index.equals(train_frame.index)
    assert all(out[c].dtype == np.float64 for c in features.NUMERIC_FEATURES)
    for c in features.CATEGORICAL_FEATURES:
        assert out[c].map(type).eq(str).all(), c
    assert set(out["Title"]) == set(features.TITLES)
    assert set(out["Sex"]) == {"male", "female"}
    assert set(out["Embarked"]) == {"C", "Q", "S", ""}
    assert out["Age"].isna().sum() == 177  # imputation is the Pipeline's job, not this module's


def test_transform_is_pure_and_row_independent(train_frame):
    before = train_frame.copy()
    whole = features.transform(train_frame)
    pd.testing.assert_frame_equal(train_frame, before)
    # a row's features do not depend on the other rows (serving transforms one instance at a time)
    single = pd.concat([features.transform(train_frame.iloc[[i]]) for i in (0, 5, 100, 888)])
    pd.testing.assert_frame_equal(single, whole.iloc[[0, 5, 100, 888]])


def test_serving_instances_without_ticket_or_id():
    instance = {"Name": "Doe, Miss. Jane", "Sex": "female", "Age": 29, "Pclass": 1, "SibSp": 0, "Parch": 0,
                "Fare": 71.3, "Embarked": "C", "Cabin": "C85"}
    valid = schema.validate(pd.DataFrame([instance]), require_id=False).valid
    out = features.transform(valid[schema.INSTANCE_FIELDS])
    assert out.iloc[0][["Title", "Sex", "Embarked", "HasCabin"]].tolist() == ["Miss", "female", "C", 1.0]


@pytest.fixture(scope="module")
def train_frame():
    from tests.conftest import TRAIN_CSV

    raw = pd.read_csv(TRAIN_CSV, dtype=str, keep_default_na=False)
    return schema.validate(raw).valid
