"""The quality gate, against real Postgres, Redis and S3: approve good models, reject weak ones."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline import registry
from pipeline.errors import EXIT_MODEL_REJECTED, ModelNotFound
from pipeline.steps import deploy, evaluate, ingest, train
from pipeline.steps import features as features_step
from pipeline.store import postgres
from tests.conftest import REPO, TRAIN_CSV, make_settings, settings_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gate(services):
    """An isolated deployment with a feature set, a good candidate and a weak one (trained on shuffled labels)."""
    settings = make_settings(services, "gate")
    ingest.run(settings, source=str(TRAIN_CSV))
    feature_set = features_step.run(settings)["feature_set"]
    good = train.run(settings, feature_set=feature_set, n_iter=2, cv=3, seed=42, cv_repeats=1)["version"]

    conn = postgres.connect(settings)
    try:
        with conn, conn.cursor() as cur:  # shuffle the labels in place, train, then restore them
            cur.execute("CREATE TABLE true_labels AS SELECT passenger_id, survived FROM passengers")
            cur.execute("SELECT passenger_id, survived FROM passengers ORDER BY passenger_id")
            ids, labels = zip(*cur.fetchall())
            shuffled = np.random.default_rng(0).permutation(labels)
            cur.executemany("UPDATE passengers SET survived = %s WHERE passenger_id = %s",
                            [(int(s), i) for s, i in zip(shuffled, ids)])
        weak = train.run(settings, feature_set=feature_set, n_iter=2, cv=3, seed=42, cv_repeats=1)["version"]
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE passengers p SET survived = t.survived FROM true_labels t WHERE t.passenger_id = p.passenger_id")
    finally:
        conn.close()
    return settings, good, weak


def clear_production(settings):
    """Undo a test's promotion: the module shares one deployment, so no production model may leak."""
    conn = postgres.connect(settings)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE model_versions SET status = 'approved' WHERE status = 'production'")
    conn.close()


def status(settings, version):
    conn = postgres.connect(settings)
    try:
        return registry.get(conn, settings.model_name, version)
    finally:
        conn.close()


def test_gate_approves_a_good_model_and_rejects_a_weak_one(gate):
    settings, good, weak = gate
    verdict = evaluate.run(settings, version=good)
    assert verdict["approved"] and evaluate.exit_code(verdict) == 0
    assert verdict["accuracy"] >= 0.78 and verdict["holdout_size"] == 179
    row = status(settings, good)
    assert row["status"] == "approved" and "minimum" in row["reason"]

    # the weak model is scored on the true hold-out labels of the candidate's feature snapshot
    verdict = evaluate.run(settings, version=weak)
    assert not verdict["approved"] and evaluate.exit_code(verdict) == EXIT_MODEL_REJECTED
    assert verdict["accuracy"] < 0.7
    row = status(settings, weak)
    assert row["status"] == "rejected" and "< minimum 0.7800" in row["reason"]


def test_gate_compares_with_production_on_the_same_holdout(gate):
    settings, good, weak = gate
    evaluate.run(settings, version=good)
    deploy.run(settings, good, target="local")
    try:
        # an equally good retrain passes within the tolerance ...
        same = train.run(settings, feature_set=status(settings, good)["feature_set"], n_iter=2, cv=3, seed=42, cv_repeats=1)["version"]
        verdict = evaluate.run(settings, version=same, min_accuracy=0.0, tolerance=0.01)
        assert verdict["approved"] and verdict["production_version"] == good
        assert verdict["production_accuracy"] == verdict["accuracy"]
        # the reason says what was compared: the same rows, neither model trained on them; repeated CV only quoted
        assert any("both on the same 179 hold-out rows, neither trained on them" in r for r in verdict["reasons"])
        assert any(r.startswith("repeated CV 0.") and "over 5 folds" in r and "not gated" in r for r in verdict["reasons"])
        # ... and is rejected when it must beat production by a margin (negative tolerance)
        verdict = evaluate.run(settings, version=same, min_accuracy=0.0, tolerance=-0.05)
        assert not verdict["approved"]
        assert any("< production" in r for r in verdict["reasons"])
        # the weak model loses against production even with no minimum
        verdict = evaluate.run(settings, version=weak, min_accuracy=0.0, tolerance=0.01)
        assert not verdict["approved"] and verdict["production_accuracy"] > verdict["accuracy"] + 0.1
        # re-evaluating the production model never demotes it
        evaluate.run(settings, version=good, min_accuracy=0.99)
        assert status(settings, good)["status"] == "production"
    finally:
        clear_production(settings)


def test_cli_exit_codes(gate):
    settings, good, weak = gate
    env = {**settings_env(settings), "PATH": "/usr/bin:/bin"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pipeline", "evaluate", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    rejected = cli("--version", weak)
    assert rejected.returncode == EXIT_MODEL_REJECTED == 99
    result = json.loads(rejected.stdout.strip().splitlines()[-1])
    assert result["approved"] is False and result["version"] == weak and result["reasons"]

    approved = cli("--version", good, "--min-accuracy", "0.5")
    assert approved.returncode == 0 and json.loads(approved.stdout.strip().splitlines()[-1])["approved"] is True

    unknown = cli("--version", "nope")
    assert unknown.returncode == 1 and "error: evaluate: model titanic has no version 'nope'" in unknown.stderr


def test_unknown_version_is_a_clear_error(settings):
    with pytest.raises(ModelNotFound, match="no version 'nope'"):
        evaluate.run(settings, version="nope")


def test_production_is_not_scored_on_rows_it_was_trained_on(gate):
    """A production model split with another seed trained on most of the candidate's hold-out: scored
    there, it would look far better than it is and veto good candidates (leakage into the gate)."""
    from pipeline import model
    from pipeline.steps.features import read_snapshot

    settings, good, _ = gate
    feature_set = status(settings, good)["feature_set"]
    other = train.run(settings, feature_set=feature_set, n_iter=2, cv=3, seed=7, cv_repeats=1)["version"]
    conn = postgres.connect(settings)
    try:
        registry.set_status(conn, settings.model_name, other, "approved")
        registry.promote(conn, settings.model_name, other)
    finally:
        conn.close()
    try:
        verdict = evaluate.run(settings, version=good, min_accuracy=0.0, tolerance=0.01)

        cand, prod = (model.load_json(settings, status(settings, v)["artifact_uri"]) for v in (good, other))
        snapshot = read_snapshot(settings, feature_set)
        unseen = [i for i in cand["holdout_ids"] if i in set(prod["holdout_ids"])]
        assert 0 < len(unseen) < len(cand["holdout_ids"])  # the two splits overlap only in part
        expected = evaluate.holdout_accuracy(settings, status(settings, other), snapshot.loc[unseen],
                                             prod["feature_columns"])
        leaky = evaluate.holdout_accuracy(settings, status(settings, other),
                                          snapshot.loc[cand["holdout_ids"]], prod["feature_columns"])
        assert leaky > expected  # what the gate must not use
        assert verdict["production_version"] == other
        assert verdict["production_accuracy"] == expected and verdict["compared_rows"] == len(unseen)
    finally:
        clear_production(settings)


def test_a_version_promoted_while_being_evaluated_stays_production(gate, monkeypatch):
    """evaluate reads the status, scores (seconds), then writes its verdict: a deploy promoting the
    version meanwhile must not be undone by a late "rejected" (no production model at all)."""
    settings, good, _ = gate
    score = evaluate.holdout_accuracy

    def promote_then_score(*args, **kwargs):
        conn = postgres.connect(settings)
        try:
            registry.set_status(conn, settings.model_name, good, "approved")
            registry.promote(conn, settings.model_name, good)
        finally:
            conn.close()
        return score(*args, **kwargs)

    monkeypatch.setattr(evaluate, "holdout_accuracy", promote_then_score)
    try:
        verdict = evaluate.run(settings, version=good, min_accuracy=0.99)
        assert not verdict["approved"]
        assert status(settings, good)["status"] == "production"
    finally:
        clear_production(settings)


def test_a_group_production_model_is_scored_with_its_own_training_labels(gate):
    settings, good, _ = gate
    feature_set = status(settings, good)["feature_set"]
    grouped = train.run(settings, feature_set=feature_set, n_iter=1, cv=3, seed=42, cv_repeats=0, group_features=True)
    assert evaluate.run(settings, version=grouped["version"], min_accuracy=0.0)["approved"]
    deploy.run(settings, grouped["version"], target="local")
    try:
        verdict = evaluate.run(settings, version=good, min_accuracy=0.0, tolerance=1.0)
        # the same split seed, so the same hold-out: production's group features come from the labels it was
        # trained on, and it scores exactly what its train step reported for those rows
        assert verdict["production_version"] == grouped["version"] and verdict["compared_rows"] == 179
        assert verdict["production_accuracy"] == grouped["metrics"]["accuracy"]
    finally:
        clear_production(settings)
