"""Unit tests of the declared passenger schema and its vectorised validation."""

import pandas as pd
import pytest

from pipeline import schema
from tests.conftest import TRAIN_CSV

GOOD = {"PassengerId": "1", "Survived": "1", "Pclass": "1", "Name": "Cumings, Mrs. John Bradley", "Sex": "female",
        "Age": "38", "SibSp": "1", "Parch": "0", "Ticket": "PC 17599", "Fare": "71.2833", "Cabin": "C85", "Embarked": "C"}


def check(**changes):
    return schema.validate(pd.DataFrame([{**GOOD, **changes}]))


def test_train_csv_is_entirely_valid():
    frame = pd.read_csv(TRAIN_CSV, dtype=str, keep_default_na=False)
    result = schema.validate(frame)
    assert len(result.valid) == 891 and result.rejected.empty
    assert result.valid["Survived"].sum() == 342
    assert result.valid["Age"].isna().sum() == 177
    assert result.valid["Cabin"].isna().sum() == 687


def test_good_record_is_typed():
    row = check().valid.iloc[0]
    assert (row["PassengerId"], row["Survived"], row["Pclass"], row["Age"], row["Fare"]) == (1, 1, 1, 38.0, 71.2833)
    assert (row["Sex"], row["Embarked"]) == ("female", "C")


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("PassengerId", "0", "PassengerId: must be at least 1"),
        ("PassengerId", "abc", "PassengerId: must be a number"),
        ("PassengerId", "", "PassengerId: is required"),
        ("PassengerId", "1.5", "PassengerId: must be a whole number"),
        ("Survived", "2", "Survived: must be one of 0, 1"),
        ("Pclass", "4", "Pclass: must be one of 1, 2, 3"),
        ("Pclass", "", "Pclass: is required"),
        ("Name", "  ", "Name: is required"),
        ("Sex", "unknown", "Sex: must be one of male, female"),
        ("Age", "101", "Age: must be between 0 and 100, got '101'"),
        ("Age", "-1", "Age: must be between 0 and 100, got '-1'"),
        ("Age", "old", "Age: must be a number"),
        ("SibSp", "-1", "SibSp: must be at least 0"),
        ("Parch", "0.5", "Parch: must be a whole number"),
        ("Fare", "-3", "Fare: must be at least 0"),
        ("Embarked", "X", "Embarked: must be one of C, Q, S"),
        # Non-finite and oversized values: each used to pass and then break the COPY or every training.
        ("PassengerId", "3000000000", "PassengerId: must be at most 2147483647, got '3000000000'"),
        ("PassengerId", "inf", "PassengerId: must be a number, got 'inf'"),
        ("SibSp", "inf", "SibSp: must be a number, got 'inf'"),
        ("SibSp", "2147483648", "SibSp: must be at most 2147483647"),
        ("Parch", "1e400", "Parch: must be a number, got '1e400'"),
        ("Age", "-inf", "Age: must be a number, got '-inf'"),
        ("Age", "nan", "Age: must be a number, got 'nan'"),
        ("Fare", "Infinity", "Fare: must be a number, got 'Infinity'"),
        ("Fare", "NaN", "Fare: must be a number, got 'NaN'"),
        ("Fare", "1e300", "Fare: must be at most 1000000, got '1e300'"),
        ("Name", "x" * 200_000, "Name: must be at most 1000 characters, got 200000"),
        ("Ticket", "7" * 1001, "Ticket: must be at most 1000 characters, got 1001"),
    ],
)
def test_invalid_values_are_rejected_with_the_field_named(field, value, expected):
    result = check(**{field: value})
    assert result.valid.empty
    assert list(result.rejected["field"]) == [field]
    assert result.rejected["reason"].iloc[0].startswith(expected)


def test_blanks_allowed_where_the_schema_allows_them():
    result = check(Survived="", Age="", Fare="", Cabin="", Embarked="", Ticket="")
    row = result.valid.iloc[0]
    assert result.rejected.empty
    assert pd.isna(row["Survived"]) and pd.isna(row["Age"]) and pd.isna(row["Cabin"]) and pd.isna(row["Embarked"])


def test_duplicate_ids_keep_the_first():
    frame = pd.DataFrame([GOOD, {**GOOD, "Name": "Other"}])
    result = schema.validate(frame)
    assert list(result.valid["Name"]) == [GOOD["Name"]]
    assert result.rejected.to_dict("records") == [{"position": 1, "field": "PassengerId", "reason": "PassengerId: duplicate of an earlier row"}]


def test_every_bad_field_of_a_record_is_reported():
    result = check(Pclass="9", Sex="x", Age="200")
    assert list(result.rejected["field"]) == ["Pclass", "Sex", "Age"]
    assert schema.reasons_by_position(result.rejected)[0].count(";") == 2


def test_prediction_instances_need_no_id_and_accept_json_types():
    inst = pd.DataFrame([{"Name": "A", "Sex": "male", "Age": 22.0, "Pclass": 3, "SibSp": 1, "Parch": 0, "Fare": 7.25,
                          "Embarked": "S", "Cabin": None}])
    result = schema.validate(inst, require_id=False)
    assert result.rejected.empty and result.valid.iloc[0]["Fare"] == 7.25


def test_json_non_finite_numbers_are_rejected_and_nan_is_missing():
    """JSON values reach the schema as floats: inf is never a value, NaN is pandas' missing value."""
    inst = {"Name": "A", "Sex": "male", "Age": float("nan"), "Pclass": 3, "SibSp": 0, "Parch": 0, "Fare": 7.25}
    result = schema.validate(pd.DataFrame([inst, {**inst, "SibSp": float("inf")}, {**inst, "Fare": float("-inf")}]),
                             require_id=False)
    assert len(result.valid) == 1 and pd.isna(result.valid.iloc[0]["Age"])
    assert list(result.rejected["reason"]) == ["SibSp: must be a number, got 'inf'", "Fare: must be a number, got '-inf'"]


def test_quoted_values_are_short_and_printable():
    result = check(Sex="\x1b[2J" + "y" * 500)
    reason = result.rejected["reason"].iloc[0]
    assert reason == "Sex: must be one of male, female, got '?[2J" + "y" * 76 + "…'"
