"""The declared schema of a raw passenger record and its vectorised validation.

Used by ingestion (CSV rows) and by the KServe transformer (request instances), so both
apply exactly the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
# Largest value of the Postgres `integer` columns (migrations/0001_init.sql): PassengerId, SibSp, Parch.
INT_MAX = 2**31 - 1
# Far above any real fare (the highest is 512.33) and far inside float32, to which the forest converts
# its inputs: a larger finite fare would break every later training as surely as infinity.
FARE_MAX = 1_000_000
# Longest value of any field (the longest real one, a Name, has 82 characters).
MAX_TEXT = 1000
# How much of a bad value a message quotes back: the value may be anything a file or a client sent.
QUOTE_MAX = 80


@dataclass(frozen=True)
class Checked:
    """Typed values of every record (float64 numbers, NaN/None for blanks), which records passed,
    and one (position, field, reason) per bad field."""

    values: dict[str, np.ndarray]
    ok: np.ndarray
    problems: list[tuple[int, str, str]]


@dataclass(frozen=True)
class Validated:
    """Typed valid records, and the positions of invalid ones with a reason naming each bad field."""

    valid: pd.DataFrame
    rejected: pd.DataFrame  # columns: position (0-based row of the input), field, reason


# Variable-width strings: with fixed-width ones a single 200,000-character value would widen every
# element of its column to 800 kB.
_STR = np.dtypes.StringDType()


def _text(values) -> np.ndarray:
    """Strings with surrounding blanks removed; missing (None/NaN) becomes ""."""
    arr = np.asarray(values, dtype=object)
    return np.strings.strip(np.where(pd.isna(arr), "", arr).astype(_STR))


def _number(text: np.ndarray) -> np.ndarray:
    """float64, NaN for blank or garbage (the caller tells the two apart); may be ±inf."""
    return pd.to_numeric(np.where(text == "", None, text).astype(object), errors="coerce").astype("float64")


def excerpt(text: str) -> str:
    """`text` as a message may quote it: printable characters only, at most QUOTE_MAX of them."""
    shown = "".join(c if c.isprintable() else "?" for c in text[:QUOTE_MAX])
    return shown + ("…" if len(text) > QUOTE_MAX else "")


# numpy, not pandas: a prediction request validates one record, and ~60 pandas operations of
# ~50 µs each would cost more than the model; numpy keeps large files vectorised all the same.
def _first_error(text: np.ndarray, checks: list[tuple[np.ndarray, str]]) -> np.ndarray:
    """The message of the first failing check per row ("" when all pass), built only for failing rows."""
    msg = np.full(len(text), "", dtype=object)
    pending = np.ones(len(text), dtype=bool)
    for bad, template in checks:
        hit = pending & bad
        if hit.any():
            head, got, tail = template.partition("{got}")
            msg[hit] = [f"{head}'{excerpt(str(t))}'{tail}" for t in text[hit]] if got else template
            pending &= ~hit
    return msg


def _listed(choices) -> str:
    return ", ".join(str(c) for c in choices)


def _check_number(text, *, blank_ok, lo=None, hi=None, at_most=None, integer=False, choices=None):
    """(typed values as float64, error message per row or "") for a numeric field.

    `hi` is the domain's bound (with `lo`: "between"), `at_most` the storage's.
    """
    num = _number(text)
    blank = text == ""
    known = np.isfinite(num)  # "inf" and "nan" parse as numbers, yet no field can hold them
    checks = [(~blank & ~known, "must be a number, got {got}")]
    with np.errstate(invalid="ignore"):
        if integer:
            checks.append((known & (num != np.floor(num)), "must be a whole number, got {got}"))
        if lo is not None and hi is not None:
            checks.append(((num < lo) | (num > hi), f"must be between {lo} and {hi}, got {{got}}"))
        elif lo is not None:
            checks.append((num < lo, f"must be at least {lo}, got {{got}}"))
        if at_most is not None:
            checks.append((num > at_most, f"must be at most {at_most}, got {{got}}"))
        if choices is not None:
            checks.append((known & ~np.isin(num, choices), f"must be one of {_listed(choices)}, got {{got}}"))
    if not blank_ok:
        checks.append((blank, "is required"))
    return num, _first_error(text, checks)


def _check_choice(text, choices, *, blank_ok, upper=False):
    value = np.strings.upper(text) if upper else np.strings.lower(text)
    blank = text == ""
    checks = [(~blank & ~np.isin(value, choices), f"must be one of {_listed(choices)}, got {{got}}")]
    if not blank_ok:
        checks.append((blank, "is required"))
    return np.where(blank, None, value.astype(object)), _first_error(text, checks)


def check(columns: Mapping[str, Sequence], n: int, *, require_id: bool = True) -> Checked:
    """The rules themselves, on plain columns (name -> n raw values; absent names are blank).

    `validate` wraps this in DataFrames; the web app calls it directly, because building two
    DataFrames would cost more than the checks for the one passenger of a form.
    """

    sizes: dict[str, np.ndarray] = {}

    def col(name: str) -> np.ndarray:
        text = _text(columns[name]) if name in columns else np.full(n, "", dtype=_STR)
        sizes[name] = np.strings.str_len(text)
        return text

    out: dict[str, np.ndarray] = {}
    errors: dict[str, np.ndarray] = {}

    pid, errors[ID] = _check_number(col(ID), blank_ok=not require_id, lo=1, at_most=INT_MAX, integer=True)
    known = np.flatnonzero(~np.isnan(pid))
    first = known[np.unique(pid[known], return_index=True)[1]]
    dup = np.zeros(n, dtype=bool)
    dup[known] = True
    dup[first] = False
    errors[ID][(errors[ID] == "") & dup] = "duplicate of an earlier row"  # the first one wins
    out[ID] = pid
    out[LABEL], errors[LABEL] = _check_number(col(LABEL), blank_ok=True, integer=True, choices=(0, 1))
    out["Pclass"], errors["Pclass"] = _check_number(col("Pclass"), blank_ok=False, integer=True, choices=CLASSES)
    name = col("Name")
    errors["Name"] = _first_error(name, [(name == "", "is required")])
    out["Name"] = name.astype(object)
    out["Sex"], errors["Sex"] = _check_choice(col("Sex"), SEXES, blank_ok=False)
    out["Age"], errors["Age"] = _check_number(col("Age"), blank_ok=True, lo=0, hi=100)
    out["SibSp"], errors["SibSp"] = _check_number(col("SibSp"), blank_ok=False, lo=0, at_most=INT_MAX, integer=True)
    out["Parch"], errors["Parch"] = _check_number(col("Parch"), blank_ok=False, lo=0, at_most=INT_MAX, integer=True)
    out["Fare"], errors["Fare"] = _check_number(col("Fare"), blank_ok=True, lo=0, at_most=FARE_MAX)
    out["Embarked"], errors["Embarked"] = _check_choice(col("Embarked"), PORTS, blank_ok=True, upper=True)
    for free_text in ("Ticket", "Cabin"):  # blank means unknown
        text = col(free_text)
        out[free_text] = np.where(text == "", None, text.astype(object))
    for field, size in sizes.items():  # an oversized value is reported by its size, whatever else is wrong
        long = size > MAX_TEXT
        if long.any():
            msg = errors.setdefault(field, np.full(n, "", dtype=object))
            msg[long] = [f"must be at most {MAX_TEXT} characters, got {s}" for s in size[long]]

    # One entry per (record, bad field), in input order: the reason names the field.
    problems = [(int(pos), field, f"{field}: {msg[pos]}") for field, msg in errors.items()
                for pos in np.flatnonzero(msg != "")]
    problems.sort(key=lambda p: p[0])  # stable: fields stay in schema order within a record
    ok = np.ones(n, dtype=bool)
    ok[[p[0] for p in problems]] = False
    return Checked(out, ok, problems)


def validate(frame: pd.DataFrame, *, require_id: bool = True) -> Validated:
    """Validate raw records (strings from a CSV or JSON values) column by column.

    `require_id=False` is the prediction path: PassengerId and Ticket may be absent there.
    """
    n = len(frame)
    checked = check({c: frame[c].to_numpy() for c in frame.columns}, n, require_id=require_id)
    ok = checked.ok
    columns = {c: checked.values[c][ok] for c in COLUMNS}
    for c in (ID, LABEL):  # nullable integers: the id is absent from requests, the label from new data
        missing = np.isnan(columns[c])
        columns[c] = pd.arrays.IntegerArray(np.where(missing, 0, columns[c]).astype("int64"), missing)
    for c in ("Pclass", "SibSp", "Parch"):
        columns[c] = columns[c].astype("int64")
    rejected = pd.DataFrame(checked.problems, columns=["position", "field", "reason"]).astype({"position": "int64"})
    return Validated(valid=pd.DataFrame(columns, index=pd.RangeIndex(n)[ok]), rejected=rejected)


def reasons_by_position(rejected: pd.DataFrame) -> pd.Series:
    """All reasons of each rejected record joined into one string, indexed by position."""
    return rejected.groupby("position", sort=True)["reason"].agg("; ".join)
