"""The declared schema of a raw passenger record and its vectorised validation.

Used by ingestion (CSV rows) and by the KServe transformer (request instances), so both
apply exactly the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Kaggle column order; Survived is the label and may be absent (unlabelled data).
COLUMNS = ["PassengerId", "Survived", "Pclass", "Name", "Sex", "Age", "SibSp", "Parch", "Ticket", "Fare", "Cabin", "Embarked"]
LABEL = "Survived"
ID = "PassengerId"
REQUIRED_COLUMNS = [c for c in COLUMNS if c != LABEL]
# What a person knows about a passenger: the fields a prediction request carries.
INSTANCE_FIELDS = ["Name", "Sex", "Age", "Pclass", "SibSp", "Parch", "Fare", "Embarked", "Cabin"]

SEXES = ("male", "female")
PORTS = ("C", "Q", "S")
CLASSES = (1, 2, 3)


@dataclass(frozen=True)
class Validated:
    """Typed valid records, and the positions of invalid ones with a reason naming each bad field."""

    valid: pd.DataFrame
    rejected: pd.DataFrame  # columns: position (0-based row of the input), field, reason


def _text(col: pd.Series) -> pd.Series:
    """Strings with surrounding blanks removed; missing (None/NaN) becomes ""."""
    return col.fillna("").astype(str).str.strip()


def _number(text: pd.Series) -> pd.Series:
    # float64 (NaN for blank/garbage), never a nullable dtype whose NA would leak into the masks
    return pd.to_numeric(text.where(text != ""), errors="coerce").astype("float64")


def _first_error(text: pd.Series, checks: list[tuple[pd.Series, str]]) -> pd.Series:
    """The message of the first failing check per row ("" when all pass).

    Messages are built only for failing rows: building them for every row costs more than
    the checks themselves on large files.
    """
    msg = pd.Series("", index=text.index, dtype=object)
    pending = pd.Series(True, index=text.index)
    for bad, template in checks:
        hit = pending & bad
        if hit.any():
            head, _, tail = template.partition("{got}")
            msg[hit] = head + "'" + text[hit] + "'" + tail if _ else template
            pending &= ~hit
    return msg


def _check_number(text, *, blank_ok, lo=None, hi=None, integer=False, choices=None):
    """(typed values as float64, error message per row or "") for a numeric field."""
    num = _number(text)
    blank = (text == "").to_numpy()
    checks = [(~blank & num.isna(), "must be a number, got {got}")]
    if integer:
        checks.append((num.notna() & (num != np.floor(num)), "must be a whole number, got {got}"))
    if lo is not None:
        checks.append((num < lo, f"must be >= {lo}, got {{got}}"))
    if hi is not None:
        checks.append((num > hi, f"must be <= {hi}, got {{got}}"))
    if choices is not None:
        checks.append((num.notna() & ~num.isin(choices), f"must be one of {list(choices)}, got {{got}}"))
    if not blank_ok:
        checks.append((pd.Series(blank, index=text.index), "is required"))
    return num, _first_error(text, checks)


def _check_choice(text, choices, *, blank_ok, upper=False):
    value = text.str.upper() if upper else text.str.lower()
    blank = text == ""
    checks = [(~blank & ~value.isin(choices), f"must be one of {list(choices)}, got {{got}}")]
    if not blank_ok:
        checks.append((blank, "is required"))
    return value.where(~blank, None), _first_error(text, checks)


def validate(frame: pd.DataFrame, *, require_id: bool = True) -> Validated:
    """Validate raw records (strings from a CSV or JSON values) column by column.

    `require_id=False` is the prediction path: PassengerId and Ticket may be absent there.
    """
    n = len(frame)
    index = pd.RangeIndex(n)
    frame = frame.reset_index(drop=True)

    def col(name: str) -> pd.Series:
        return _text(frame[name]) if name in frame else pd.Series([""] * n, index=index, dtype=object)

    out: dict[str, pd.Series] = {}
    errors: dict[str, pd.Series] = {}

    pid_text = col(ID)
    pid, errors[ID] = _check_number(pid_text, blank_ok=not require_id, lo=1, integer=True)
    dup = pid.notna() & pid.duplicated(keep="first")
    errors[ID] = errors[ID].mask((errors[ID] == "") & dup, "duplicate of an earlier row")  # first one wins
    out[ID] = pid.where(errors[ID] == "").astype("Int64")

    surv, errors[LABEL] = _check_number(col(LABEL), blank_ok=True, integer=True, choices=(0, 1))
    out[LABEL] = surv.where(errors[LABEL] == "").astype("Int64")
    pclass, errors["Pclass"] = _check_number(col("Pclass"), blank_ok=False, integer=True, choices=CLASSES)
    out["Pclass"] = pclass
    name = col("Name")
    errors["Name"] = _first_error(name, [(name == "", "is required")])
    out["Name"] = name
    out["Sex"], errors["Sex"] = _check_choice(col("Sex"), SEXES, blank_ok=False)
    out["Age"], errors["Age"] = _check_number(col("Age"), blank_ok=True, lo=0, hi=100)
    out["SibSp"], errors["SibSp"] = _check_number(col("SibSp"), blank_ok=False, lo=0, integer=True)
    out["Parch"], errors["Parch"] = _check_number(col("Parch"), blank_ok=False, lo=0, integer=True)
    out["Ticket"] = col("Ticket")
    out["Fare"], errors["Fare"] = _check_number(col("Fare"), blank_ok=True, lo=0)
    out["Cabin"] = col("Cabin")
    out["Embarked"], errors["Embarked"] = _check_choice(col("Embarked"), PORTS, blank_ok=True, upper=True)

    # One row per (record, bad field), in input order: the reason names the field.
    parts = []
    for field, msg in errors.items():
        bad = msg != ""
        if bad.any():
            parts.append(pd.DataFrame({"position": index[bad.to_numpy()], "field": field, "reason": field + ": " + msg[bad]}))
    rejected = (
        pd.concat(parts).sort_values(["position"], kind="stable").reset_index(drop=True)
        if parts else pd.DataFrame({"position": pd.Series(dtype="int64"), "field": pd.Series(dtype="string"),
                                     "reason": pd.Series(dtype="string")})
    )
    ok = ~index.isin(rejected["position"])
    valid = pd.DataFrame(out, index=index).loc[ok]
    valid = valid.astype({"Pclass": "int64", "SibSp": "int64", "Parch": "int64", "Age": "float64", "Fare": "float64"})
    for c in ("Ticket", "Cabin"):  # free text: blank means unknown
        valid[c] = valid[c].replace("", pd.NA)
    return Validated(valid=valid, rejected=rejected)


def reasons_by_position(rejected: pd.DataFrame) -> pd.Series:
    """All reasons of each rejected record joined into one string, indexed by position."""
    return rejected.groupby("position", sort=True)["reason"].agg("; ".join)
