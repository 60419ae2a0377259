"""The declared schema of a raw passenger record and its validation, column by column.

Used by ingestion (CSV rows) and by the KServe transformer (request instances), so both
apply exactly the same rules.
"""

from __future__ import annotations

import math
import re
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
# Ticket is optional: passengers of one ticket travelled together (group features); absent means "no group".
INSTANCE_FIELDS = ["Name", "Sex", "Age", "Pclass", "SibSp", "Parch", "Fare", "Embarked", "Cabin", "Ticket"]

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


def clean_text(value) -> str:
    """A raw value as stripped text; missing (None, NaN, pd.NA, NaT) becomes ""."""
    if value is None or value is pd.NA or value != value:
        return ""
    text = str(value).strip()
    while text.endswith("\x00"):  # trailing NULs dropped, as the numpy strings of the earlier version did
        text = text.rstrip("\x00").rstrip()
    return text


# Short plain decimals (at most 15 characters: an exact mantissa and power of ten) parse alike with float() and
# pd.to_numeric; anything else ("inf", "1e5", garbage, long digit strings, which pandas rounds its own way) is
# left to pd.to_numeric, so every value parses exactly as it always has.
_PLAIN_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")


def _numbers(texts: list[str]) -> list[float]:
    """float per text, NaN for blank or garbage (the caller tells the two apart); may be ±inf."""
    out, rest = [], []
    for i, t in enumerate(texts):
        if t == "":
            out.append(math.nan)
        elif len(t) <= 15 and _PLAIN_DECIMAL.fullmatch(t):
            out.append(float(t) if "." in t else float(int(t)))  # pandas reads "-0" as the integer 0
        else:
            out.append(math.nan)
            rest.append(i)
    if rest:  # one call for the batch's unusual values
        parsed = pd.to_numeric(np.array([texts[i] for i in rest], dtype=object), errors="coerce").astype("float64")
        for i, x in zip(rest, parsed.tolist()):
            out[i] = x
    return out


def excerpt(text: str) -> str:
    """`text` as a message may quote it: printable characters only, at most QUOTE_MAX of them."""
    shown = "".join(c if c.isprintable() else "?" for c in text[:QUOTE_MAX])
    return shown + ("…" if len(text) > QUOTE_MAX else "")


def _got(template: str, text: str) -> str:
    head, _, tail = template.partition("{got}")
    return f"{head}'{excerpt(text)}'{tail}"


def _listed(choices) -> str:
    return ", ".join(str(c) for c in choices)


# Plain Python per value, column by column: a prediction request validates one record, and numpy's
# or pandas' fixed cost per call (~60 calls) was most of a request's validation; a 2 MiB file
# (~15,000 rows) still takes a fraction of a second.
def _check_number(texts, *, blank_ok, lo=None, hi=None, at_most=None, integer=False, choices=None):
    """(typed values as float64, error message per row or "") for a numeric field; the first failing rule wins.

    `hi` is the domain's bound (with `lo`: "between"), `at_most` the storage's.
    """
    nums = _numbers(texts)
    msgs = []
    for t, x in zip(texts, nums):
        known = math.isfinite(x)  # "inf" and "nan" parse as numbers, yet no field can hold them
        if t != "" and not known:
            msg = _got("must be a number, got {got}", t)
        elif integer and known and x != math.floor(x):
            msg = _got("must be a whole number, got {got}", t)
        elif lo is not None and hi is not None and (x < lo or x > hi):
            msg = _got(f"must be between {lo} and {hi}, got {{got}}", t)
        elif lo is not None and hi is None and x < lo:
            msg = _got(f"must be at least {lo}, got {{got}}", t)
        elif at_most is not None and x > at_most:
            msg = _got(f"must be at most {at_most}, got {{got}}", t)
        elif choices is not None and known and x not in choices:
            msg = _got(f"must be one of {_listed(choices)}, got {{got}}", t)
        elif not blank_ok and t == "":
            msg = "is required"
        else:
            msg = ""
        msgs.append(msg)
    return np.array(nums, dtype="float64"), msgs


def _check_choice(texts, choices, *, blank_ok, upper=False):
    values, msgs = [], []
    for t in texts:
        value = t.upper() if upper else t.lower()
        if t != "" and value not in choices:
            msgs.append(_got(f"must be one of {_listed(choices)}, got {{got}}", t))
        else:
            msgs.append("is required" if t == "" and not blank_ok else "")
        values.append(None if t == "" else value)
    return _objects(values), msgs


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)  # element by element: a value never becomes a dimension
    out[:] = values
    return out


def check(columns: Mapping[str, Sequence], n: int, *, require_id: bool = True) -> Checked:
    """The rules themselves, on plain columns (name -> n raw values; absent names are blank).

    `validate` wraps this in DataFrames; the web app and the transformer call it directly (on
    a request's one passenger, two DataFrames would cost more than the checks).
    """

    sizes: dict[str, list[int]] = {}

    def col(name: str) -> list[str]:
        text = [clean_text(v) for v in columns[name]] if name in columns else [""] * n
        sizes[name] = [len(t) for t in text]
        return text

    out: dict[str, np.ndarray] = {}
    errors: dict[str, list[str]] = {}

    pid, errors[ID] = _check_number(col(ID), blank_ok=not require_id, lo=1, at_most=INT_MAX, integer=True)
    seen: set[float] = set()
    for pos, x in enumerate(pid.tolist()):
        if x != x:
            continue
        if x in seen and errors[ID][pos] == "":
            errors[ID][pos] = "duplicate of an earlier row"  # the first one wins
        seen.add(x)
    out[ID] = pid
    out[LABEL], errors[LABEL] = _check_number(col(LABEL), blank_ok=True, integer=True, choices=(0, 1))
    out["Pclass"], errors["Pclass"] = _check_number(col("Pclass"), blank_ok=False, integer=True, choices=CLASSES)
    name = col("Name")
    errors["Name"] = ["is required" if t == "" else "" for t in name]
    out["Name"] = _objects(name)
    out["Sex"], errors["Sex"] = _check_choice(col("Sex"), SEXES, blank_ok=False)
    out["Age"], errors["Age"] = _check_number(col("Age"), blank_ok=True, lo=0, hi=100)
    out["SibSp"], errors["SibSp"] = _check_number(col("SibSp"), blank_ok=False, lo=0, at_most=INT_MAX, integer=True)
    out["Parch"], errors["Parch"] = _check_number(col("Parch"), blank_ok=False, lo=0, at_most=INT_MAX, integer=True)
    out["Fare"], errors["Fare"] = _check_number(col("Fare"), blank_ok=True, lo=0, at_most=FARE_MAX)
    out["Embarked"], errors["Embarked"] = _check_choice(col("Embarked"), PORTS, blank_ok=True, upper=True)
    for free_text in ("Ticket", "Cabin"):  # blank means unknown
        out[free_text] = _objects([t or None for t in col(free_text)])
    for field, size in sizes.items():  # an oversized value is reported by its size, whatever else is wrong
        for pos, s in enumerate(size):
            if s > MAX_TEXT:
                errors.setdefault(field, [""] * n)[pos] = f"must be at most {MAX_TEXT} characters, got {s}"

    # One entry per (record, bad field), in input order: the reason names the field.
    problems = [(pos, field, f"{field}: {m}") for field, msg in errors.items() for pos, m in enumerate(msg) if m]
    problems.sort(key=lambda p: p[0])  # stable: fields stay in schema order within a record
    ok = np.ones(n, dtype=bool)
    ok[[p[0] for p in problems]] = False
    return Checked(out, ok, problems)


def validate(frame: pd.DataFrame, *, require_id: bool = True) -> Validated:
    """Validate raw records (strings from a CSV or JSON values) column by column.

    `require_id=False` is the prediction path: PassengerId and Ticket may be absent there.
    """
    return _validated(check({c: frame[c].to_numpy() for c in frame.columns}, len(frame), require_id=require_id))


def check_records(records: Sequence[Mapping], *, require_id: bool = True) -> Checked:
    """`check` of JSON objects (a prediction request's instances); absent keys are blank, as a DataFrame's NaN
    would be. The transformer takes the typed columns from here to `features.feature_columns`, no DataFrame."""
    names = dict.fromkeys(k for record in records for k in record)
    return check({c: [r.get(c) for r in records] for c in names}, len(records), require_id=require_id)


def _validated(checked: Checked) -> Validated:
    n, ok = len(checked.ok), checked.ok
    columns = {c: checked.values[c][ok] for c in COLUMNS}
    for c in (ID, LABEL):  # nullable integers: the id is absent from requests, the label from new data
        missing = np.isnan(columns[c])
        columns[c] = pd.arrays.IntegerArray(np.where(missing, 0, columns[c]).astype("int64"), missing)
    for c in ("Pclass", "SibSp", "Parch"):
        columns[c] = columns[c].astype("int64")
    # From columns: rows of tuples plus astype cost 1.5 ms even empty, half of a prediction's validation.
    position, field, reason = (list(c) for c in zip(*checked.problems)) if checked.problems else ([], [], [])
    rejected = pd.DataFrame({"position": np.array(position, dtype="int64"), "field": pd.Series(field, dtype=object),
                             "reason": pd.Series(reason, dtype=object)})
    return Validated(valid=pd.DataFrame(columns, index=pd.RangeIndex(n)[ok]), rejected=rejected)


def reasons_by_position(rejected: pd.DataFrame) -> pd.Series:
    """All reasons of each rejected record joined into one string, indexed by position."""
    return rejected.groupby("position", sort=True)["reason"].agg("; ".join)
