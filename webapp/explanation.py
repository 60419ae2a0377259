"""The few factors that moved one prediction most, in plain words ("female: +28 points"), for the result card."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from pipeline import features

from .passenger import FIELDS

PORTS = {"C": "Cherbourg", "Q": "Queenstown", "S": "Southampton"}
CLASS_NAMES = {1: "1st class", 2: "2nd class", 3: "3rd class"}


def _known(value: Any) -> bool:
    return value is not None and value != "" and not (isinstance(value, float) and math.isnan(value))


def _money(v: float) -> str:
    return f"{v:.2f}"


# feature -> its value for this passenger in words (the model's input features: pipeline.features)
WORDS: dict[str, Callable[[Any], str]] = {
    "Sex": str,
    "Pclass": lambda v: CLASS_NAMES.get(int(v), f"class {v}"),
    "Title": lambda v: f"title {v}",
    "Age": lambda v: f"age {v:g}" if _known(v) else "age unknown",
    "Fare": lambda v: f"fare {_money(v)}" if _known(v) else "fare unknown",
    "Embarked": lambda v: f"boarded at {PORTS[v]}" if v in PORTS else "port unknown",
    "SibSp": lambda v: f"{int(v)} sibling(s)/spouse aboard",
    "Parch": lambda v: f"{int(v)} parent(s)/child(ren) aboard",
    "FamilySize": lambda v: f"family of {int(v)}",
    "IsAlone": lambda v: "travelling alone" if v else "travelling with family",
    "HasCabin": lambda v: "cabin recorded" if v else "no cabin recorded",
    "PclassFare": lambda v: f"class × fare {_money(v)}" if _known(v) else "class × fare unknown",
    "AgeFare": lambda v: f"age × fare {_money(v)}" if _known(v) else "age × fare unknown",
    "FarePerPerson": lambda v: f"fare per person {_money(v)}" if _known(v) else "fare per person unknown",
    # Group statistics come from the transformer's lookup, not from the form: named, without a value.
    "GroupKnown": lambda v: "fellow travellers whose fate is known",
    "GroupSurvival": lambda v: "how fellow travellers fared",
    "GroupWCKnown": lambda v: "women and children of the group whose fate is known",
    "GroupWCSurvival": lambda v: "how the group's women and children fared",
}


@dataclass(frozen=True)
class Factor:
    feature: str
    words: str  # the passenger's value, e.g. "female", "3rd class"
    points: float  # contribution in percentage points of survival probability
    width: float  # bar length, % of the largest factor's

    @property
    def text(self) -> str:
        sign = "+" if self.points >= 0 else "−"
        return f"{self.words}: {sign}{abs(self.points):.0f} points"


def factors(instance: dict[str, Any], explanation: dict[str, Any], top: int = 5) -> list[Factor]:
    """The `top` contributions by size, labelled with this passenger's values (the training feature code)."""
    row = {c: v[0] for c, v in features.feature_columns({f: [instance.get(f)] for f in FIELDS}).items()}
    ranked = sorted(explanation["contributions"].items(), key=lambda fc: -abs(fc[1]))[:top]
    largest = max((abs(c) for _, c in ranked), default=0.0) or 1.0
    out = []
    for feature, c in ranked:
        value = row.get(feature)
        words = WORDS.get(feature, lambda v: f"{feature} {v}")(value)
        out.append(Factor(feature, words, c * 100, round(abs(c) / largest * 100, 1)))
    return out
