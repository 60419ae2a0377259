"""Reading the transformer's answers: its 400 body, and predictions the page can trust."""

from __future__ import annotations

import pytest

from pipeline.serving.transformer import error_body
from webapp.kserve_client import _valid_prediction, parse_rejection
from webapp.passenger import FieldError


def test_structured_400_body_of_the_transformer():
    errors = [{"instance": 0, "field": "Age", "message": "must be a number, got 'old'"},
              {"instance": 2, "field": "Pclass", "message": "must be one of [1, 2, 3], got '9'"}]
    assert parse_rejection(error_body(errors)) == [
        FieldError("Age", "must be a number, got 'old'", 0), FieldError("Pclass", "must be one of [1, 2, 3], got '9'", 2)]


def test_message_only_400_body_is_parsed_line_by_line():
    body = {"error": "instance 1: Sex: must be one of ['male', 'female'], got 'x'\ninstance 3: Fare: must be >= 0, got '-1'"}
    assert parse_rejection(body) == [FieldError("Sex", "must be one of ['male', 'female'], got 'x'", 1),
                                     FieldError("Fare", "must be >= 0, got '-1'", 3)]


def test_400_without_a_field_gives_no_field_error():
    assert parse_rejection({"error": 'expected {"instances": [...]} with at least one instance'}) == []


@pytest.mark.parametrize("prediction, ok", [
    ({"survived": 1, "probability": 0.93}, True),
    ({"survived": 0, "probability": 0}, True),
    ({"survived": 2, "probability": 0.5}, False),
    ({"survived": 1, "probability": 1.5}, False),
    ({"survived": 1, "probability": "0.9"}, False),
    ({"survived": 1}, False),
    ([1, 0.9], False),
])
def test_only_well_formed_predictions_reach_the_page(prediction, ok):
    assert _valid_prediction(prediction) is ok
