"""The raw passenger a user describes: field definitions, labels, defaults and validation.

The rules are `pipeline.schema`'s, the ones ingestion and the transformer apply, so a mistake
is reported next to its field before the network hop and the two can never disagree; this
module adds only what is particular to a web form (unknown keys, text fields, lengths).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import schema

FIELDS = tuple(schema.INSTANCE_FIELDS)

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
    "Ticket": "",
}

MAX_NAME = 200
MAX_CABIN = 40
MAX_TICKET = 40


@dataclass(frozen=True)
class FieldError:
    """One invalid field; `instance` is the index in a list request (0 for a single one)."""

    field: str
    message: str
    instance: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"instance": self.instance, "field": self.field, "message": self.message}


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
    "Ticket": "Ticket",
}


TEXT_LIMITS = {"Name": MAX_NAME, "Cabin": MAX_CABIN, "Ticket": MAX_TICKET}


def _web_errors(raw: Mapping[str, Any], instance: int) -> list[FieldError]:
    """What only a web client gets wrong: unknown keys, non-text names, oversized text."""
    errors = [
        FieldError(str(key)[:50], f"unknown field (expected one of {', '.join(FIELDS)})", instance)
        for key in raw if key not in FIELDS
    ]
    for field, limit in TEXT_LIMITS.items():
        value = raw.get(field)
        if value is not None and not isinstance(value, str):
            errors.append(FieldError(field, f"{LABELS[field]} must be text", instance))
        elif value is not None and len(value.strip()) > limit:
            errors.append(FieldError(field, f"{LABELS[field]} must be at most {limit} characters", instance))
    return errors


_INTEGERS = {"Pclass", "SibSp", "Parch"}


def _plain(field: str, value: Any) -> Any:
    """numpy scalars to JSON-friendly Python (whole-number fields as int); missing to None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if field in _INTEGERS else value


def validate_many(raws: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[FieldError]]:
    """Normalise passengers with `pipeline.schema.check` in one vectorised call.

    Returns the clean instances (valid ones only, in order) and every error, each naming its
    instance index and field; missing optional fields become None.
    """
    errors = [e for i, raw in enumerate(raws) for e in _web_errors(raw, i)]
    flagged = {(e.instance, e.field) for e in errors}
    columns = {f: [raw.get(f) for raw in raws] for f in FIELDS}
    checked = schema.check(columns, len(raws), require_id=False)
    for position, field, reason in checked.problems:
        if (position, field) not in flagged:  # one message per field: the web check is the clearer one
            errors.append(FieldError(field, f"{LABELS[field]} {reason.removeprefix(field + ': ')}", position))
    errors.sort(key=lambda e: e.instance)
    valid = np.flatnonzero(checked.ok)
    clean = [{f: _plain(f, checked.values[f][i]) for f in FIELDS} for i in valid]
    return clean, errors


def validate(raw: Mapping[str, Any], instance: int = 0) -> tuple[dict[str, Any], list[FieldError]]:
    """One passenger: the clean instance (empty when invalid) and its errors."""
    clean, errors = validate_many([raw])
    return (clean[0] if clean else {}), [FieldError(e.field, e.message, instance) for e in errors]


def validate_form(form: Mapping[str, str]) -> tuple[dict[str, Any], list[FieldError]]:
    """Validate the HTML form; unrelated form keys (buttons, tokens) are ignored."""
    return validate({field: form.get(field, "") for field in FIELDS})
