"""Model quality by repeated stratified k-fold on train.csv: today's features, + group features, the gender rule.

Group statistics are learned inside each fold from its training labels only: training rows get
leave-one-out features, test rows the fold's statistics, as unseen passengers would in serving.
The forest's parameters are fixed (the seed search's usual winner) so the comparison is of
features, not of one lucky search. Gains are paired by fold (the folds' difficulty cancels).

The candidates were chosen on the folds of SEED; the chosen definition is scored again on the
fresh folds of CONFIRM_SEED, so that picking the best of several on the same folds does not
flatter it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import RepeatedStratifiedKFold

from pipeline import features, model, schema
from tests.conftest import TRAIN_CSV

SPLITS, REPEATS, SEED, CONFIRM_SEED = 5, 5, 42, 7
FOREST = {"classifier__n_estimators": 200, "classifier__max_depth": 10, "classifier__min_samples_split": 10,
          "classifier__min_samples_leaf": 2}
BASELINE, CHOSEN = "today's features", "+ group features"


def surname_fare(frame: pd.DataFrame) -> np.ndarray:
    """An alternative group id: surname (before the comma) and fare, i.e. a family travelling on one fare."""
    surname = pd.Series(features._text(frame["Name"].to_numpy())).str.split(",").str[0].str.strip().str.upper()
    fare = np.round(frame["Fare"].to_numpy(dtype="float64", na_value=np.nan), 1).astype(str)
    return (surname + "|" + fare).to_numpy(dtype=object)


# name -> (group ids of the validated frame, "no group" share left NaN for the median imputer as before)
GROUPINGS = {
    CHOSEN: (features.passenger_groups, False),
    "+ group features, no-group share imputed": (features.passenger_groups, True),
    "+ group features by ticket": (lambda f: np.strings.replace(np.strings.upper(features._text(f["Ticket"])), " ", ""), False),
    "+ group features by surname and fare": (surname_fare, False),
}


def fold_features(X: pd.DataFrame, groups, wc, y: pd.Series, train, test, impute: bool):
    """(train, test) features of one fold, with group features learned from the fold's training labels only."""
    stats = features.group_statistics(groups[train], wc[train], y.iloc[train])
    g_train = features.group_features(groups[train], wc[train], stats, own_survived=y.iloc[train], index=X.index[train])
    g_test = features.group_features(groups[test], wc[test], stats, index=X.index[test])
    if impute:  # the earlier "no group" value: NaN, filled by the Pipeline's median imputer
        for g in (g_train, g_test):
            g.loc[g["GroupKnown"] == 0, "GroupSurvival"] = np.nan
            g.loc[g["GroupWCKnown"] == 0, "GroupWCSurvival"] = np.nan
    return pd.concat([X.iloc[train], g_train], axis=1), pd.concat([X.iloc[test], g_test], axis=1)


def cross_validate(frame: pd.DataFrame, seed: int = SEED, groupings: dict = GROUPINGS) -> dict:
    """Accuracy mean ± std over SPLITS x REPEATS folds for each candidate, and each one's paired gain over today's."""
    X = features.transform(frame)
    y = frame[schema.LABEL].astype(int)
    wc = features.woman_or_child(X)
    ids = {name: (np.asarray(make(frame), dtype=object), impute) for name, (make, impute) in groupings.items()}
    scores: dict[str, list[float]] = {"gender rule": [], BASELINE: [], **{name: [] for name in groupings}}
    for train, test in RepeatedStratifiedKFold(n_splits=SPLITS, n_repeats=REPEATS, random_state=seed).split(X, y):
        y_test = y.iloc[test].to_numpy()
        scores["gender rule"].append(float(np.mean((X["Sex"].iloc[test].to_numpy() == "female") == y_test)))
        base = model.build_pipeline(SEED).set_params(**FOREST).fit(X.iloc[train], y.iloc[train])
        scores[BASELINE].append(float(np.mean(base.predict(X.iloc[test]) == y_test)))
        for name, (groups, impute) in ids.items():
            Xg_train, Xg_test = fold_features(X, groups, wc, y, train, test, impute)
            grouped = model.build_pipeline(SEED, group_features=True).set_params(**FOREST).fit(Xg_train, y.iloc[train])
            scores[name].append(float(np.mean(grouped.predict(Xg_test) == y_test)))

    def summary(s) -> dict:
        return {"mean": round(float(np.mean(s)), 4), "std": round(float(np.std(s)), 4), "folds": len(s)}

    out = {name: summary(s) for name, s in scores.items()}
    for name in groupings:
        gain = np.subtract(scores[name], scores[BASELINE])
        out[name]["gain"] = {**summary(gain), "exceeds_std": bool(gain.mean() > gain.std())}
    return out


def run() -> dict:
    raw = pd.read_csv(TRAIN_CSV, dtype=str, keep_default_na=False)
    valid = schema.validate(raw).valid
    return {"cv": f"{REPEATS}x repeated stratified {SPLITS}-fold", "accuracy": cross_validate(valid),
            f"confirmation (fresh folds, seed {CONFIRM_SEED})": cross_validate(
                valid, CONFIRM_SEED, {CHOSEN: GROUPINGS[CHOSEN]})}
