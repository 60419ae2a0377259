"""The `titanic_training` DAG, loaded by the pinned Airflow and rendered into the pods it would create.

Runs in `.venv-airflow` (Airflow cannot share the main venv). No database and no cluster: the DAG
comes from a `DagBag`, each task is rendered with a test context, and its pod is built by the
operator's own `build_pod_request_obj(dry_run=True)`, then validated with `kubernetes-validate`.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import kubernetes_validate
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import ApiClient

ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = ROOT / "dags" / "titanic_training.py"
STEPS = ["ingest", "features", "train", "evaluate", "deploy"]
PINS = dict(
    line.split("=", 1)
    for line in (ROOT / "versions.env").read_text().splitlines()
    if line.strip() and not line.startswith("#")
)
KUBE_MINOR = ".".join(PINS["KUBE_VERSION"].split(".")[:2])
XCOM = {"ingest": {"batch_id": "b-123"}, "features": {"feature_set": "fs-456"}, "train": {"version": "v-789"}}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["titanic_training"]  # get_dag() would query the metadata database


class FakeTaskInstance:
    """The parts of a task instance that rendering and pod labels read; XCom as the steps return it."""

    dag_id, map_index, try_number = "titanic_training", -1, 1

    def __init__(self, task_id):
        self.task_id = task_id

    def xcom_pull(self, task_ids=None, key="return_value", **kwargs):
        return XCOM[task_ids]


def build_pod(dag, task_id: str, params: dict | None = None) -> dict:
    """The pod `task_id` would create, rendered from a fresh copy of the task, as a JSON-ready dict."""
    task = copy.deepcopy(dag.get_task(task_id))
    context = {"ti": FakeTaskInstance(task_id), "run_id": "manual__test", "dag": dag,
               "params": {**{k: dag.params[k] for k in dag.params}, **(params or {})}}
    task.render_template_fields(context)
    return ApiClient().sanitize_for_serialization(task.build_pod_request_obj(context, dry_run=True))


def base_container(pod: dict) -> dict:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "base")


def test_dagbag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert list(dagbag.dags) == ["titanic_training"]


def test_graph_is_five_pods_in_a_line(dag):
    assert sorted(dag.task_ids) == sorted(STEPS)
    for task in dag.tasks:
        assert isinstance(task, KubernetesPodOperator), task.task_id
    for upstream, downstream in zip(STEPS, STEPS[1:]):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    assert dag.get_task("ingest").upstream_task_ids == set()
    assert dag.get_task("deploy").downstream_task_ids == set()


def test_dag_settings(dag):
    assert type(dag.timetable).__name__ == "NullTimetable"  # no schedule: manual, API and drift relay
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert {"titanic", "training"} <= set(dag.tags)
    assert dag.doc_md and "ingest" in dag.doc_md
    assert set(dag.params) == {"dataset_url", "dataset_sha256", "min_accuracy"}
    for task in dag.tasks:
        assert task.owner == "titanic-mlops"
        assert task.retries >= 1
        assert task.retry_exponential_backoff > 1  # exponential, not a constant delay
        assert task.retry_delay <= timedelta(minutes=1) and task.max_retry_delay is not None


@pytest.mark.parametrize("step", STEPS)
def test_each_pod_is_the_pipeline_step_as_configured(dag, step):
    pod = build_pod(dag, step)
    container = base_container(pod)
    spec = pod["spec"]

    assert container["image"] == f"titanic-pipeline:{PINS['IMG_TAG']}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert not container.get("command")  # the image's ENTRYPOINT `python -m pipeline` runs
    assert container["args"][0] == step
    assert pod["metadata"]["namespace"] == "mlops"
    assert spec["serviceAccountName"] == "titanic-pipeline"
    assert spec["restartPolicy"] == "Never"  # retries belong to Airflow, not the kubelet
    assert container["envFrom"] == [{"configMapRef": {"name": "titanic-config"}},
                                    {"secretRef": {"name": "titanic-secrets"}}]
    assert not container.get("env")  # no configuration, let alone credentials, in the DAG
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    for c in spec["containers"]:  # the XCom sidecar too
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"mountPath": "/tmp", "name": "tmp"} in container["volumeMounts"]
    assert {"mountPath": "/airflow/xcom", "name": "xcom"} in container["volumeMounts"]  # return.json


@pytest.mark.parametrize("step", STEPS)
def test_each_pod_validates_against_the_kubernetes_schema(dag, step):
    pod = build_pod(dag, step)
    kubernetes_validate.validate(pod, KUBE_MINOR, strict=True)


def test_schema_validation_catches_a_broken_pod(dag):
    pod = build_pod(dag, "train")
    base_container(pod)["resources"]["limits"]["memory"] = ["1Gi"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBE_MINOR, strict=True)


def test_identifiers_flow_through_xcom(dag):
    args = {step: base_container(build_pod(dag, step))["args"] for step in STEPS}
    assert args["features"] == ["features", "--batch", "b-123"]
    assert args["train"] == ["train", "--feature-set", "fs-456", "--n-jobs", "2"]
    assert base_container(build_pod(dag, "train"))["resources"]["limits"]["cpu"] == "2"  # one fit per CPU of the limit
    assert args["evaluate"] == ["evaluate", "--version", "v-789", "--min-accuracy", "0.78"]
    assert args["deploy"] == ["deploy", "--version", "v-789", "--namespace", "mlops", "--timeout", "300",
                              "--target", "cluster"]


def test_dataset_params_default_to_the_pods_configuration(dag):
    assert base_container(build_pod(dag, "ingest"))["args"] == [
        "ingest", "--source", "$(DATASET_URL)", "--sha256", "$(DATASET_SHA256)"]  # expanded by the kubelet
    given = {"dataset_url": "s3://raw/titanic/batch2.csv", "dataset_sha256": "ab" * 32, "min_accuracy": 0.9}
    assert base_container(build_pod(dag, "ingest", given))["args"] == [
        "ingest", "--source", "s3://raw/titanic/batch2.csv", "--sha256", "ab" * 32]
    assert base_container(build_pod(dag, "evaluate", given))["args"][-2:] == ["--min-accuracy", "0.9"]


def test_pod_lifecycle_and_logs(dag):
    for task in dag.tasks:
        assert task.on_finish_action.value == "delete_succeeded_pod"  # failed pods stay for debugging
        assert task.get_logs is True
        assert task.do_xcom_push is True


def test_rejected_model_skips_deploy_with_the_exit_code_evaluate_uses(dag):
    tree = ast.parse((ROOT / "pipeline" / "errors.py").read_text())
    (code,) = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
               and any(getattr(t, "id", None) == "EXIT_MODEL_REJECTED" for t in node.targets)]
    assert dag.get_task("evaluate").skip_on_exit_code == [code]
    # ... and that constant is what `pipeline evaluate` returns for a rejection
    evaluate = ast.parse((ROOT / "pipeline" / "steps" / "evaluate.py").read_text())
    (exit_code,) = [f for f in evaluate.body if isinstance(f, ast.FunctionDef) and f.name == "exit_code"]
    assert "EXIT_MODEL_REJECTED" in {n.id for n in ast.walk(exit_code) if isinstance(n, ast.Name)}
    assert any(isinstance(n, ast.ImportFrom) and n.module == "pipeline.errors"
               and "EXIT_MODEL_REJECTED" in {a.name for a in n.names} for n in evaluate.body)
    for step in ("ingest", "features", "train", "deploy"):
        assert not dag.get_task(step).skip_on_exit_code, step
    # deploy runs only when evaluate succeeded: a skipped evaluate skips it instead of failing it
    assert dag.get_task("deploy").trigger_rule == "all_success"


def test_image_comes_from_the_environment_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("TITANIC_PIPELINE_IMAGE", "titanic-pipeline:9.9.9")
    bag = DagBag(dag_folder=str(DAG_FILE))
    assert {t.image for t in bag.dags["titanic_training"].tasks} == {"titanic-pipeline:9.9.9"}


def test_dag_file_imports_no_project_or_data_code():
    tree = ast.parse(DAG_FILE.read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules <= {"__future__", "os", "datetime", "airflow", "kubernetes"}


def test_importing_the_dag_file_opens_no_connection_and_starts_no_process():
    """Top-level code must be cheap: executed under an audit hook that records network, DB and processes."""
    script = textwrap.dedent(f"""
        import json, runpy, sys
        from airflow.sdk import DAG
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        # Warm-up: Airflow imports some modules lazily on the first DAG (croniter runs `file` then);
        # that is the framework's cost, paid by every DAG; only what the DAG file adds is measured.
        with DAG("warm_up", schedule=None):
            KubernetesPodOperator(task_id="t", image="x")
        before = set(sys.modules)
        events = []
        WATCH = ("socket.connect", "socket.getaddrinfo", "sqlite3.connect", "subprocess.Popen", "os.system",
                 "urllib.Request", "os.exec", "os.posix_spawn")
        sys.addaudithook(lambda event, args: event.startswith(WATCH) and events.append(event))
        runpy.run_path({str(DAG_FILE)!r})
        heavy = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("pipeline", "pandas", "sklearn", "psycopg2", "redis"))
        print(json.dumps({{"events": events, "heavy": heavy}}))
    """)
    env = {**os.environ, "AIRFLOW_HOME": os.environ.get("AIRFLOW_HOME", "/tmp/airflow-test-home")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"events": [], "heavy": []}


def test_audit_hook_would_see_a_connection(tmp_path):
    """The check above is not vacuous: a DAG file that connects at import is caught."""
    bad = tmp_path / "bad_dag.py"
    bad.write_text("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=0.1)\nexcept OSError:\n    pass\n")
    script = textwrap.dedent(f"""
        import json, runpy, sys
        events = []
        sys.addaudithook(lambda event, args: event.startswith("socket.connect") and events.append(event))
        runpy.run_path({str(bad)!r})
        print(json.dumps(events))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["socket.connect"]


@pytest.fixture(scope="module")
def cli_flags() -> dict[str, set[str]]:
    """Flags of each `python -m pipeline <step>`, read from the real parser in the main venv (where the CLI lives)."""
    script = textwrap.dedent("""
        import json
        from pipeline.__main__ import build_parser
        (sub,) = [a for a in build_parser()._actions if a.dest == "step"]
        print(json.dumps({name: [o for a in p._actions for o in a.option_strings] for name, p in sub.choices.items()}))
    """)
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {step: set(flags) for step, flags in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


@pytest.mark.parametrize("step", STEPS)
def test_every_flag_the_dag_passes_exists_in_the_cli(dag, cli_flags, step):
    args = base_container(build_pod(dag, step))["args"]
    passed = {a for a in args if a.startswith("--")}
    assert passed and passed <= cli_flags[step]
