"""webapp.explanation.factors: the result card's factors in words, for every feature a model can have."""

from pipeline import features
from webapp.explanation import WORDS, factors

PASSENGER = {"Pclass": 3, "Name": "Braund, Mr. Owen Harris", "Sex": "male", "Age": 22, "SibSp": 1, "Parch": 0,
             "Ticket": "A/5 21171", "Fare": 7.25, "Cabin": "", "Embarked": "S"}


def test_every_model_feature_has_words():
    assert set(features.FEATURE_COLUMNS + features.GROUP_FEATURES) <= set(WORDS)


def test_factors_rank_by_size_and_word_each_feature():
    contributions = {"Sex": -0.2, "Pclass": -0.1, "GroupSurvival": 0.15, "Age": 0.01, "GroupKnown": -0.02,
                     "Fare": 0.0}
    out = factors(PASSENGER, {"contributions": contributions}, top=4)
    assert [f.feature for f in out] == ["Sex", "GroupSurvival", "Pclass", "GroupKnown"]
    assert [f.text for f in out] == ["male: −20 points", "how fellow travellers fared: +15 points",
                                     "3rd class: −10 points", "fellow travellers whose fate is known: −2 points"]
    assert out[0].width == 100.0 and out[1].width == 75.0
