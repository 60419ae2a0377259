"""Validation of one raw passenger, shared by the form and the JSON API."""

import pytest

from webapp.passenger import DEFAULTS, FIELDS, validate, validate_form

from .conftest import VALID


def test_valid_passenger_is_normalised():
    clean, errors = validate({**VALID, "Sex": " Female ", "Embarked": "c", "Age": "38", "Pclass": "1"})
    assert errors == []
    assert clean == {**VALID, "Sex": "female", "Embarked": "C", "Age": 38.0, "Pclass": 1, "Ticket": None}


def test_ticket_is_optional_text_and_kept():
    clean, errors = validate({**VALID, "Ticket": " PC 17599 "})
    assert errors == [] and clean["Ticket"] == "PC 17599"
    _, errors = validate({**VALID, "Ticket": "x" * 41})
    assert [e.field for e in errors] == ["Ticket"] and "40" in errors[0].message


def test_form_defaults_are_valid():
    clean, errors = validate_form({k: "" if v is None else str(v) for k, v in DEFAULTS.items()})
    assert errors == []
    assert set(clean) == set(FIELDS)


def test_unknown_optional_values_become_none():
    clean, errors = validate({**VALID, "Age": "", "Fare": None, "Embarked": " ", "Cabin": ""})
    assert errors == []
    assert clean["Age"] is None and clean["Fare"] is None and clean["Embarked"] is None and clean["Cabin"] is None


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("Name", "", "Name is required"),
        ("Name", "x" * 201, "at most 200 characters"),
        ("Name", 42, "must be text"),
        ("Sex", "", "Sex is required"),
        ("Sex", "unknown", "Sex must be one of male, female, got 'unknown'"),
        ("Age", "old", "Age must be a number"),
        ("Age", -1, "between 0 and 100"),
        ("Age", 101, "between 0 and 100"),
        ("Age", True, "must be a number"),
        ("Age", "nan", "must be a number"),
        ("Pclass", "", "Ticket class is required"),
        ("Pclass", 4, "Ticket class must be one of 1, 2, 3, got '4'"),
        ("Pclass", "first", "Ticket class must be a number, got 'first'"),
        ("SibSp", "", "is required"),
        ("SibSp", -1, "at least 0"),
        ("SibSp", 1.5, "whole number"),
        ("Parch", "two", "must be a number"),
        ("Parch", -2, "at least 0"),
        ("Fare", "free", "Fare must be a number"),
        ("Fare", -5, "at least 0"),
        ("Embarked", "X", "Port of embarkation must be one of C, Q, S, got 'X'"),
        ("Cabin", "C" * 41, "at most 40 characters"),
        ("SibSp", "inf", "Siblings / spouses aboard must be a number, got 'inf'"),
        ("SibSp", float("inf"), "Siblings / spouses aboard must be a number, got 'inf'"),
        ("Parch", "3000000000", "Parents / children aboard must be at most 2147483647"),
        ("Age", float("-inf"), "Age must be a number, got '-inf'"),
        ("Fare", "Infinity", "Fare must be a number, got 'Infinity'"),
        ("Sex", "m" * 5000, "Sex must be at most 1000 characters, got 5000"),
    ],
)
def test_each_invalid_field_is_named(field, value, message):
    _, errors = validate({**VALID, field: value}, instance=3)
    assert [(e.field, e.instance) for e in errors] == [(field, 3)]
    assert message in errors[0].message


def test_json_nan_of_an_optional_number_is_missing():
    clean, errors = validate({**VALID, "Age": float("nan"), "Fare": float("nan")})
    assert errors == [] and clean["Age"] is None and clean["Fare"] is None


def test_unknown_key_is_reported():
    _, errors = validate({**VALID, "age": 3})
    assert [e.field for e in errors] == ["age"]
    assert "unknown field" in errors[0].message


def test_missing_required_fields_are_all_reported():
    _, errors = validate({})
    assert {e.field for e in errors} == {"Name", "Sex", "Pclass", "SibSp", "Parch"}
