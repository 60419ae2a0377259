"""The model page against real Postgres (model_versions) and S3 (the version's folder)."""

from __future__ import annotations

import re
import json

import pytest

from pipeline import registry
from pipeline.store import s3 as s3_store
from webapp import create_app

from .conftest import closed_port_url

pytestmark = pytest.mark.integration

# The smallest valid PNG (1x1): the page only has to pass the bytes through.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


@pytest.fixture
def app(settings):
    return create_app({"SETTINGS": settings.model_copy(update={"kserve_url": closed_port_url()})})


def _register(db, settings, version, status, accuracy):
    registry.register(db, settings.model_name, version, artifact_uri=f"s3://{settings.bucket_models}/titanic/{version}",
                      metrics={"accuracy": accuracy, "f1": 0.75}, params={"n_estimators": 200, "max_depth": 6},
                      feature_set="fs-20261126-1")
    if status == "production":
        registry.set_status(db, settings.model_name, version, "approved")  # only an approved version is promoted
        registry.promote(db, settings.model_name, version)
    elif status != "candidate":
        registry.set_status(db, settings.model_name, version, status, reason="accuracy below the gate")


def test_model_page_shows_production_version_metadata_plots_and_history(app, settings, db, s3):
    _register(db, settings, "v1", "production", 0.80)
    _register(db, settings, "v2", "production", 0.84)  # v1 becomes archived
    _register(db, settings, "v3", "rejected", 0.70)
    metadata = {
        "version": "v2", "feature_columns": ["Pclass", "Sex", "Title", "FamilySize"],
        "params": {"n_estimators": 300, "max_depth": None},
        "metrics": {"accuracy": 0.8412, "roc_auc": 0.88, "confusion_matrix": [[90, 10], [18, 61]], "cv_mean": 0.83,
                    "cv_std": 0.012, "holdout_size": 179, "train_size": 712},
        "data_sha256": "7d118fef8b6ccf7f81111877bc388536f7b1e498a655e3d649d19aaa010e9f6f",
        "feature_set": "fs-20261126-1", "library_versions": {"scikit-learn": "1.9.1"},
        "code_version": {"package": "0.1.0", "git_commit": "0123456789abcdef0123"},
    }
    s3_store.put_bytes(s3, settings.bucket_models, "titanic/v2/metadata.json", json.dumps(metadata).encode())
    s3_store.put_bytes(s3, settings.bucket_models, "titanic/v2/roc_curve.png", PNG, "image/png")

    client = app.test_client()
    html = client.get("/model").get_data(as_text=True)
    assert 'id="production-version">v2<' in html
    assert "0.841" in html and "roc auc" in html  # metrics from metadata.json
    assert "n_estimators" in html and ">300<" in html and ">None<" in html  # params from metadata.json
    assert "712 passengers for training, 179 held out" in html and "0.830 ± 0.012 (best of the search)" in html
    assert "0.1.0 @ 0123456789ab" in html
    assert metadata["data_sha256"] in html and "fs-20261126-1" in html
    assert "scikit-learn 1.9.1" in html and "FamilySize" in html
    for name in ("confusion_matrix", "roc_curve", "feature_importances"):
        assert f'src="/model/v2/plots/{name}.png"' in html
    history = html[html.index('id="versions"'):]
    for version, status in (("v3", "rejected"), ("v2", "production"), ("v1", "archived")):
        assert re.search(rf">{version}</a></td>\s*<td[^>]*>\s*<span[^>]*>{status}</span>", history), (version, status)
    assert "accuracy below the gate" in history

    plot = client.get("/model/v2/plots/roc_curve.png")
    assert plot.status_code == 200 and plot.mimetype == "image/png" and plot.data == PNG
    assert "immutable" in plot.headers["Cache-Control"]
    assert client.get("/model/v2/plots/confusion_matrix.png").status_code == 404  # not written
    assert client.get("/model/v2/plots/model.png").status_code == 404  # not a plot name
    assert client.get("/model/..%2Fv1/plots/roc_curve.png").status_code == 404


def test_model_page_without_production_model(app, db):
    html = app.test_client().get("/model").get_data(as_text=True)
    assert 'id="no-production"' in html


def test_model_page_when_registry_is_unreachable(settings):
    broken = settings.model_copy(update={"database_url": closed_port_url().replace("http", "postgresql") + "/x"})
    response = create_app({"SETTINGS": broken}).test_client().get("/model")
    assert response.status_code == 200
    assert "model registry (Postgres) cannot be read" in response.get_data(as_text=True)


def test_model_page_of_a_real_training_run(trained_model):
    """The folder and registry rows exactly as the train/evaluate/deploy steps wrote them."""
    settings = trained_model.settings.model_copy(update={"kserve_url": closed_port_url()})
    client = create_app({"SETTINGS": settings}).test_client()
    html = client.get("/model").get_data(as_text=True)
    assert trained_model.status == "production"
    assert f'id="production-version">{trained_model.version}<' in html
    assert trained_model.metadata["data_sha256"] in html and trained_model.feature_set in html
    assert f"{trained_model.metadata['metrics']['accuracy']:.3f}" in html
    metrics = trained_model.metadata["metrics"]  # the repeated-CV figure, not the search's best score
    shown = f"{metrics['repeated_cv_mean']:.3f} ± {metrics['repeated_cv_std']:.3f}</span> over {metrics['repeated_cv_folds']} folds"
    assert f'id="repeated-cv">{shown}' in html and "best of the search" not in html
    for name in ("confusion_matrix", "roc_curve", "feature_importances"):
        plot = client.get(f"/model/{trained_model.version}/plots/{name}.png")
        assert plot.status_code == 200 and plot.data.startswith(b"\x89PNG"), name


def test_lineage_of_real_versions_side_by_side(app, settings, db):
    """Two versions trained by the real steps, the second for a drift alert the relay recorded: the lineage page
    shows why each was trained, from which batch and checksum, the gate's verdict and what each promotion replaced."""
    from pipeline.steps import deploy, evaluate, features, ingest, train
    from tests.conftest import TRAIN_CSV, TRAIN_SHA256
    from tests.fixtures.training import SEARCH

    batch = ingest.run(settings, source=str(TRAIN_CSV), sha256=TRAIN_SHA256)["batch_id"]
    feature_set = features.run(settings)["feature_set"]
    first = train.run(settings, feature_set=feature_set, **SEARCH, trigger="manual", run_id="manual__first")["version"]
    evaluate.run(settings, version=first)
    deploy.run(settings, first, target="local")
    conf = {"alertname": "TitanicFeatureDrift",
            "alerts": [{"labels": {"alertname": "TitanicFeatureDrift", "feature": "Sex", "severity": "warning"}}]}
    with db, db.cursor() as cur:  # what the relay records when it starts a run (webapp.relay.record)
        cur.execute("INSERT INTO retrain_triggers (alertname, dag_id, dag_run_id, outcome, detail, conf)"
                    " VALUES ('TitanicFeatureDrift', %s, 'drift__1', 'triggered', '', %s)",
                    (settings.airflow_dag_id, json.dumps(conf)))
    second = train.run(settings, feature_set=feature_set, **SEARCH, trigger="manual", run_id="drift__1")["version"]
    evaluate.run(settings, version=second, tolerance=1.0)  # approved whatever the split: this test is about lineage
    deploy.run(settings, second, target="local")

    client = app.test_client()
    history = client.get("/model").get_data(as_text=True)
    assert f'href="/model/versions?v={second}"' in history and "alert TitanicFeatureDrift (feature=Sex" in history
    html = client.get(f"/model/versions?v={first}&v={second}").get_data(as_text=True)
    first_col, second_col = (re.findall(rf'data-field="{field}">(.*?)</td>', html, re.S) for field in ("trigger", "batches"))
    assert "manual run manual__first" in first_col[0] and "alert TitanicFeatureDrift" in first_col[1]
    assert "feature=Sex" in first_col[1] and "severity=warning" in first_col[1] and "run drift__1" in first_col[1]
    assert all(batch in cell and TRAIN_SHA256 in cell and "891 passengers" in cell for cell in second_col)
    promoted = re.findall(r'data-field="promoted">(.*?)</td>', html, re.S)
    assert "first production version" in promoted[0] and f"archived" in promoted[0] and f"replaced by {second}" in promoted[0]
    assert f"replaced {first}" in promoted[1]
    gates = re.findall(r'data-field="gate">(.*?)</td>', html, re.S)
    assert all("approved" in g for g in gates) and "no other production model" in gates[0] and f"production {first}" in gates[1]
    repeated = re.findall(r'data-metric="repeated_cv">(.*?)</td>', html, re.S)
    assert len(repeated) == 2 and all(re.fullmatch(r"0\.\d{3} ± 0\.\d{3} \(5 folds\)", r) for r in repeated), repeated
    assert html.count(f'data-field="feature-set">{feature_set}<') == 2 and 'data-param="n_estimators"' in html
    importance = re.findall(r'data-field="importance">(.*?)</td>', html, re.S)[0]
    assert ">Sex<" in importance and "Sex_" not in importance and "impurity" not in importance  # input features

    assert client.get("/model/versions?v=nope").status_code == 404
    assert client.get("/model/versions").status_code == 400
    assert client.get(f"/model/versions?v={first}&v={second}&v=x").status_code == 400
    assert client.get("/model/versions?v=..%2Fetc").status_code == 400
