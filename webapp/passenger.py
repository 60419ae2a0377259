"""The raw passenger a user describes: field definitions, defaults and validation.

The same rules serve the HTML form (strings) and the JSON API (typed values). They mirror
the transformer's checks so that most mistakes are reported before a network hop; the
transformer stays the authority and its 400 field errors are shown the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FIELDS = ("Name", "Sex", "Age", "Pclass", "SibSp", "Parch", "Fare", "Embarked", "Cabin")

SEXES = {"female": "Female", "male": "Male"}
CLASSES = {1: "1st class", 2: "2nd class", 3: "3rd class"}
PORTS = {"S": "Southampton", "C": "Cherbourg", "Q": "Queenstown"}

# A typical 3rd-class passenger; the form opens with these values.
DEFAULTS: dict[str, Any] = {
    "Name": "Dean, Mrs. Bertram (Eva Georgetta Light)",
    "Sex": "female",
    "Age": 33,
    "Pclass": 3,
    "SibSp": 1,
    "Parch": 2,
    "Fare": 20.575,
    "Embarked": "S",
    "Cabin": "",
}

MAX_NAME = 200
MAX_CABIN = 40
MAX_AGE = 100  # same bounds as pipeline.schema, which the transformer applies


@dataclass(frozen=True)
class FieldError:
    """One invalid field; `instance` is the index in a list request (0 for a single one)."""

    field: str
    message: str
    instance: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"instance": self.instance, "field": self.field, "message": self.message}


class _Invalid(ValueError):
    pass


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(value: Any, *, integer: bool) -> float | int:
    # Booleans are ints in Python but never a sensible age or fare.
    if isinstance(value, bool):
        raise _Invalid("must be a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _Invalid("must be a number") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Invalid("must be a number")
    if integer:
        if value != int(value):
            raise _Invalid("must be a whole number")
        return int(value)
    return float(value)


def _in_range(value: float, low: float, high: float | None = None) -> float:
    if high is None and value < low:
        raise _Invalid(f"must be at least {low:g}")
    if high is not None and not low <= value <= high:
        raise _Invalid(f"must be between {low:g} and {high:g}")
    return value


def _name(value: Any) -> str:
    if _blank(value):
        raise _Invalid("is required")
    if not isinstance(value, str):
        raise _Invalid("must be text")
    value = value.strip()
    if len(value) > MAX_NAME:
        raise _Invalid(f"must be at most {MAX_NAME} characters")
    return value


def _sex(value: Any) -> str:
    if _blank(value):
        raise _Invalid("is required")
    if not isinstance(value, str) or value.strip().lower() not in SEXES:
        raise _Invalid("must be 'female' or 'male'")
    return value.strip().lower()


def _age(value: Any) -> float | None:
    if _blank(value):
        return None  # unknown: the model's imputer fills it, as for 177 training passengers
    return _in_range(_number(value, integer=False), 0, MAX_AGE)


def _pclass(value: Any) -> int:
    if _blank(value):
        raise _Invalid("is required")
    try:
        number = _number(value, integer=True)
    except _Invalid:
        number = None
    if number not in CLASSES:
        raise _Invalid("must be 1, 2 or 3")
    return int(number)


def _relatives(value: Any) -> int:
    if _blank(value):
        raise _Invalid("is required")
    return int(_in_range(_number(value, integer=True), 0))


def _fare(value: Any) -> float | None:
    if _blank(value):
        return None
    return _in_range(_number(value, integer=False), 0)


def _embarked(value: Any) -> str | None:
    if _blank(value):
        return None
    if not isinstance(value, str) or value.strip().upper() not in PORTS:
        raise _Invalid("must be one of C, Q, S")
    return value.strip().upper()


def _cabin(value: Any) -> str | None:
    if _blank(value):
        return None
    if not isinstance(value, str):
        raise _Invalid("must be text")
    value = value.strip()
    if len(value) > MAX_CABIN:
        raise _Invalid(f"must be at most {MAX_CABIN} characters")
    return value


_PARSERS = {
    "Name": _name,
    "Sex": _sex,
    "Age": _age,
    "Pclass": _pclass,
    "SibSp": _relatives,
    "Parch": _relatives,
    "Fare": _fare,
    "Embarked": _embarked,
    "Cabin": _cabin,
}

LABELS = {
    "Name": "Name",
    "Sex": "Sex",
    "Age": "Age",
    "Pclass": "Ticket class",
    "SibSp": "Siblings / spouses aboard",
    "Parch": "Parents / children aboard",
    "Fare": "Fare",
    "Embarked": "Port of embarkation",
    "Cabin": "Cabin",
}


def validate(raw: Mapping[str, Any], instance: int = 0) -> tuple[dict[str, Any], list[FieldError]]:
    """Normalise one passenger; returns the clean instance and the errors (empty when valid).

    Missing optional fields become None; unknown keys are reported so that typos
    (`"age"` for `"Age"`) do not silently fall back to an imputed value.
    """
    clean: dict[str, Any] = {}
    errors: list[FieldError] = []
    for field in FIELDS:
        try:
            clean[field] = _PARSERS[field](raw.get(field))
        except _Invalid as exc:
            errors.append(FieldError(field, f"{LABELS[field]} {exc}", instance))
    for key in raw:
        if key not in _PARSERS:
            errors.append(FieldError(str(key)[:50], f"unknown field (expected one of {', '.join(FIELDS)})", instance))
    return clean, errors


def validate_form(form: Mapping[str, str]) -> tuple[dict[str, Any], list[FieldError]]:
    """Validate the HTML form; unrelated form keys (buttons, tokens) are ignored."""
    return validate({field: form.get(field, "") for field in FIELDS})
