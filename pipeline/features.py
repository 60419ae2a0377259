"""Feature engineering, the one implementation: validated raw passengers -> model features.

Used by the `features` step (batch, before the feature store) and by the KServe transformer
(request instances), so training and serving compute features with the same code.

Contract:
- input: the `valid` frame of `pipeline.schema.validate(...)`, i.e. the columns of
  `INPUT_COLUMNS` typed as validate leaves them (Ticket and PassengerId are not needed);
- output: exactly `FEATURE_COLUMNS`, same index as the input; numeric features are float64
  with NaN for missing, categorical features are str with "" for missing (never NaN/None:
  the ONNX string imputer needs `missing_values=""`).

Only deterministic, data-independent transforms live here. Everything learned from data
(imputation medians, one-hot categories) is fitted inside the saved sklearn Pipeline
(`pipeline.model`), so serving sends raw values. `transform` does not use Ticket; the group
features below do, from statistics that are an input (learned from training labels), so that
this module stays pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline import schema

INPUT_COLUMNS = ["Name", "Sex", "Age", "Pclass", "SibSp", "Parch", "Fare", "Embarked", "Cabin"]

NUMERIC_FEATURES = [
    "Pclass", "Age", "SibSp", "Parch", "Fare",
    "FamilySize", "IsAlone", "HasCabin", "PclassFare", "AgeFare", "FarePerPerson",
]
# Deck (first letter of Cabin) was measured and left out: repeated 5-fold CV on train.csv scored
# 0.3 points lower with it than with HasCabin alone (FarePerPerson added 0.5 points).
CATEGORICAL_FEATURES = ["Sex", "Embarked", "Title"]
FEATURE_COLUMNS = NUMERIC_FEATURES + CATEGORICAL_FEATURES

TITLES = ("Mr", "Mrs", "Miss", "Master", "Rare")
# French/abbreviated forms folded into the common title they mean.
_TITLE_ALIASES = {"Mlle": "Miss", "Ms": "Miss", "Mme": "Mrs"}
_KNOWN_TITLE = (r"(?i)\b(Mr|Mrs|Miss|Master|Ms|Mlle|Mme|Dr|Rev|Col|Major|Capt|Sir|Lady|Don|Dona|Countess|Jonkheer)"
                r"\b(?:\.|\s|$)")


def _text(values) -> np.ndarray:
    """Strings with "" for missing, whatever the input's null representation (None, NaN, pd.NA)."""
    arr = np.asarray(values, dtype=object)
    return np.strings.strip(np.where(pd.isna(arr), "", arr).astype(str))


def _texts(values) -> list[str]:
    """`_text` as a list, in plain Python: a request has one passenger, and numpy's cost per call
    (not per element) was most of the transformer's time per request."""
    return [schema.clean_text(v) for v in values]


_KAGGLE_TITLE_RE = re.compile(r",\s*(?:the\s+)?([A-Za-z]+)\.")
_KNOWN_TITLE_RE = re.compile(_KNOWN_TITLE)


def _title(name: str, male: bool, age: float) -> str:
    found = _KAGGLE_TITLE_RE.search(name) or _KNOWN_TITLE_RE.search(name)
    raw = found.group(1).capitalize() if found else ""
    raw = _TITLE_ALIASES.get(raw, raw)
    if raw:
        return raw if raw in TITLES else "Rare"
    if male:  # a NaN age compares False: Mr / Mrs
        return "Master" if age < 13 else "Mr"
    return "Miss" if age < 18 else "Mrs"


def title(name, sex, age) -> np.ndarray:
    """Normalised title (Mr, Mrs, Miss, Master, Rare).

    Kaggle names put it after the comma ("Braund, Mr. Owen" -> Mr). Otherwise a known title
    word anywhere counts ("Mrs Jane Doe", dot optional, but not "Jr."). A name without one
    (a web form's "Jane Doe") falls back to what the title most likely is from sex and age,
    so such a request still gets a sensible prediction.
    """
    ages = np.asarray(age, dtype="float64").tolist()
    males = [s.lower() == "male" for s in _texts(sex)]
    return np.array([_title(*row) for row in zip(_texts(name), males, ages)], dtype=object)


NUMERIC_INPUTS = ["Pclass", "Age", "SibSp", "Parch", "Fare"]


def feature_columns(raw: Mapping[str, Sequence]) -> dict[str, np.ndarray]:
    """The features of validated raw columns (name -> values; numbers float64-convertible, None/NaN for
    missing): numeric features as float64 arrays, categorical ones as object arrays of str.

    The one implementation: `transform` wraps it for frames (features step, training, scoring),
    the transformer calls it on a request's validated columns without building a DataFrame.
    Arithmetic is numpy; text is plain Python per value (the regex search of pandas' `str`
    methods is a Python loop too, behind ~50 µs of fixed cost per call).
    """
    num = {c: np.asarray(raw[c], dtype="float64") for c in NUMERIC_INPUTS}
    family = num["SibSp"] + num["Parch"] + 1
    columns = {
        **num,
        "FamilySize": family,
        "IsAlone": (family == 1).astype("float64"),
        "HasCabin": np.array([t != "" for t in _texts(raw["Cabin"])], dtype="float64"),
        "PclassFare": num["Pclass"] * num["Fare"],
        "AgeFare": num["Age"] * num["Fare"],  # NaN when either is unknown: imputed in the Pipeline
        "FarePerPerson": num["Fare"] / family,  # Fare is per ticket, usually bought for the family
        "Sex": np.array([t.lower() for t in _texts(raw["Sex"])], dtype=object),
        "Embarked": np.array([t.upper() for t in _texts(raw["Embarked"])], dtype=object),
        "Title": title(raw["Name"], raw["Sex"], num["Age"]),
    }
    return {c: columns[c] for c in FEATURE_COLUMNS}


def transform(frame: pd.DataFrame) -> pd.DataFrame:
    """Features of validated raw records (`feature_columns` of the frame's columns), same index."""
    raw = {c: frame[c].to_numpy(dtype="float64", na_value=np.nan) for c in NUMERIC_INPUTS}
    raw.update({c: frame[c].to_numpy() for c in ("Name", "Sex", "Embarked", "Cabin")})
    return pd.DataFrame(feature_columns(raw), index=frame.index)


# Group features (issue 12): passengers who travelled together tended to live or die together.
# The statistics of a group are counts of its *labelled* members, learned from training labels,
# so they are an input here, never a global.
GROUP_STAT_COLUMNS = ["known", "survived", "wc_known", "wc_survived"]
GROUP_FEATURES = ["GroupKnown", "GroupSurvival", "GroupWCKnown", "GroupWCSurvival"]
# The share of a passenger with no other labelled member: "no information", not a guess. Left NaN, the
# model's median imputer filled in a typical group's shares instead (0.2 overall, 1.0 among women and
# children on train.csv), as if the group were known (bench/quality.py: 0.8444 -> 0.8469 repeated-CV
# accuracy; -1 instead scored 0.8442).
NO_GROUP_SHARE = 0.5


def group_id(ticket, fare, embarked) -> np.ndarray:
    """The group of each passenger; "" (no ticket) means no group.

    A group is the ticket without its last character, the fare and the port: tickets bought
    together carry consecutive numbers (the fare is per ticket, so it tells apart unrelated
    passengers whose numbers merely start alike). Measured on train.csv by 5x repeated
    stratified 5-fold CV, statistics inside the folds (bench/quality.py): with the "no group"
    share NO_GROUP_SHARE, 0.8469 with this id, 0.8413 with the ticket alone, 0.8424 with
    surname + fare; joining this id's groups with surname + fare groups scored 0.8483, within
    noise of this id and needing two ids (two lookups) per passenger.
    """
    ticket = np.strings.replace(np.strings.upper(_text(ticket)), " ", "")
    fare = np.round(np.asarray(fare, dtype="float64"), 1).astype(str)
    port = np.strings.upper(_text(embarked))
    gid = np.strings.add(np.strings.add(np.strings.slice(ticket, 0, -1), "|"), np.strings.add(np.strings.add(fare, "|"), port))
    return np.where(ticket == "", "", gid).astype(object)


def passenger_groups(records: pd.DataFrame) -> np.ndarray:
    """`group_id` of validated passenger records (schema.validate output): the one definition the features step,
    training and the transformer use. Records without a Ticket column (old clients) have no group."""
    ticket = records["Ticket"] if "Ticket" in records.columns else np.full(len(records), "", dtype=object)
    return group_id(ticket, records["Fare"], records["Embarked"])


def add_group_features(X: pd.DataFrame, groups, stats: pd.DataFrame) -> pd.DataFrame:
    """`X` (a `transform` frame) with the GROUP_FEATURES of `groups` from `stats`, no own label taken back: how
    evaluation, scoring and serving see a passenger."""
    extra = group_features(groups, woman_or_child(X), stats, index=X.index)
    return pd.concat([X.drop(columns=GROUP_FEATURES, errors="ignore"), extra], axis=1)


def woman_or_child(features: pd.DataFrame) -> np.ndarray:
    """Women and boys (title Master): the members whose fate a group shares most (from `transform` output)."""
    return ((features["Sex"].to_numpy() == "female") | (features["Title"].to_numpy() == "Master")).astype("float64")


def group_statistics(groups, wc, survived) -> pd.DataFrame:
    """Per group id (index): labelled members and survivors, overall and among women/children."""
    frame = pd.DataFrame({"group": np.asarray(groups, dtype=object), "known": 1.0,
                          "survived": np.asarray(survived, dtype="float64"),
                          "wc_known": np.asarray(wc, dtype="float64")})
    frame["wc_survived"] = frame["survived"] * frame["wc_known"]
    frame = frame[frame["group"] != ""]
    return frame.groupby("group")[GROUP_STAT_COLUMNS].sum()


def group_features(groups, wc, stats: pd.DataFrame, own_survived=None, index=None) -> pd.DataFrame:
    """GROUP_FEATURES of passengers from their groups' statistics.

    own_survived: the passengers' own labels when `stats` counted them (training rows): they are
    subtracted (leave-one-out), so a passenger's label never feeds its own features. An unknown
    group, or one with no other labelled member, gets the "no group" values: 0 known, share
    NO_GROUP_SHARE, the same in training and serving.
    """
    groups = np.asarray(groups, dtype=object)
    counts = stats.reindex(groups).fillna(0.0).to_numpy(dtype="float64")
    counts[groups == ""] = 0.0
    known, survived, wc_known, wc_survived = counts.T
    if own_survived is not None:
        # only where the passenger was counted: a passenger without a group has nothing to take back
        counted = (groups != "") & np.isin(groups, stats.index.to_numpy())
        own = np.where(counted, np.asarray(own_survived, dtype="float64"), 0.0)
        wc = np.where(counted, np.asarray(wc, dtype="float64"), 0.0)
        known = known - counted
        survived = survived - own
        wc_known, wc_survived = wc_known - wc, wc_survived - wc * own
    return pd.DataFrame(_group_columns(known, survived, wc_known, wc_survived), index=index)[GROUP_FEATURES]


_NO_COUNTS = (0.0, 0.0, 0.0, 0.0)


def served_group_features(groups, counts: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    """`group_features` of passengers whose labels the statistics never counted (serving), from the GROUP_STAT_COLUMNS
    of their groups by id (`GroupStatistics.counts`), as columns: no frame for a request's one passenger."""
    known, survived, wc_known, wc_survived = np.array(
        [counts.get(g, _NO_COUNTS) if g else _NO_COUNTS for g in groups], dtype="float64").reshape(-1, 4).T
    return _group_columns(known, survived, wc_known, wc_survived)


def _group_columns(known, survived, wc_known, wc_survived) -> dict[str, np.ndarray]:
    """GROUP_FEATURES from the counts of each passenger's other labelled group members; none known: the "no group"
    share."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "GroupKnown": known,
            "GroupSurvival": np.where(known > 0, survived / known, NO_GROUP_SHARE),
            "GroupWCKnown": wc_known,
            "GroupWCSurvival": np.where(wc_known > 0, wc_survived / wc_known, NO_GROUP_SHARE),
        }
