"""Raw passenger records for serving tests: train.csv rows and random valid passengers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import schema
from tests.conftest import TRAIN_CSV

TITLES = ["Mr.", "Mrs.", "Miss.", "Master.", "Dr.", "Rev.", "Col.", "Mlle.", "Ms.", "Countess.", ""]


def train_rows() -> pd.DataFrame:
    """train.csv as the strings ingestion reads."""
    return pd.read_csv(TRAIN_CSV, dtype=str, keep_default_na=False)


def random_passengers(n: int, seed: int = 0) -> pd.DataFrame:
    """`n` random passengers that pass validation, covering missing values and rare categories."""
    rng = np.random.default_rng(seed)
    age = np.round(rng.uniform(0.17, 80, n), 2)
    fare = np.round(rng.lognormal(3, 1.2, n), 4)
    titles = rng.choice(TITLES, n)
    surnames = rng.choice(["Smith", "Brown", "Kelly", "Andersson", "Sage"], n)
    frame = pd.DataFrame({
        "Name": [f"{s}, {t} Test" if t else f"{s} Test" for s, t in zip(surnames, titles)],
        "Sex": rng.choice(["male", "female"], n),
        "Age": np.where(rng.random(n) < 0.2, np.nan, age),
        "Pclass": rng.integers(1, 4, n),
        "SibSp": rng.integers(0, 9, n),
        "Parch": rng.integers(0, 7, n),
        "Fare": np.where(rng.random(n) < 0.05, np.nan, np.minimum(fare, 600)),
        "Embarked": rng.choice(["C", "Q", "S", ""], n, p=[0.2, 0.1, 0.65, 0.05]),
        "Cabin": [f"{d}{k}" if d else "" for d, k in zip(rng.choice(list("ABCDEFGT") + [""] * 8, n),
                                                         rng.integers(1, 150, n))],
    })
    assert schema.validate(frame, require_id=False).rejected.empty
    return frame


def instances(frame: pd.DataFrame) -> list[dict]:
    """JSON-ready request instances: the prediction fields, missing values as null."""
    out = frame[[f for f in schema.INSTANCE_FIELDS if f in frame.columns]].astype(object)  # Ticket is optional
    out = out.where(out.notna() & (out != ""), None)
    return out.to_dict("records")
