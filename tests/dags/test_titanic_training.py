"""The `titanic_training` DAG, loaded by the pinned Airflow and rendered into the pods it would create.

Runs in `.venv-airflow` (Airflow cannot share the main venv). No database and no cluster: the DAG
comes from a `DagBag`, each task is rendered with a test context, and its pod is built by the
operator's own `build_pod_request_obj(dry_run=True)`, then validated with `kubernetes-validate`.
"""

from __future__ import annotations

import ast
import copy
from types import SimpleNamespace
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from datetime import timedelta
from pathlib import Path

import kubernetes_validate
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException, ParamValidationError
from airflow.serialization.serialized_objects import DagSerialization
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

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


def build_pod(dag, task_id: str, params: dict | None = None, run_id: str = "manual__test") -> dict:
    """The pod `task_id` would create, rendered from a fresh copy of the task, as a JSON-ready dict."""
    task = copy.deepcopy(dag.get_task(task_id))
    context = {"ti": FakeTaskInstance(task_id), "run_id": run_id, "dag": dag,
               "dag_run": SimpleNamespace(run_id=run_id, run_type="manual"),
               "params": {**{k: dag.params[k] for k in dag.params}, **(params or {})}}
    task.render_template_fields(context)
    return ApiClient().sanitize_for_serialization(task.build_pod_request_obj(context, dry_run=True))


def base_container(pod: dict) -> dict:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "base")


def sidecar_container(pod: dict) -> dict:
    return next(c for c in pod["spec"]["containers"] if c["name"] == PodDefaults.SIDECAR_CONTAINER_NAME)


def kubelet_expand(arg: str, env: dict[str, str]) -> str:
    """What Kubernetes makes of `$` in a container's args (k8s.io/kubernetes third_party/forked/golang/expansion).

    `$$` is one literal `$`; `$(NAME)` becomes the value of NAME if the container defines it and
    stays as written otherwise; any other `$` is kept.
    """
    out, i = [], 0
    while i < len(arg):
        if arg.startswith("$$", i):
            out.append("$")
            i += 2
        elif arg.startswith("$(", i) and (end := arg.find(")", i + 2)) != -1:
            out.append(env.get(arg[i + 2:end], arg[i:end + 1]))
            i = end + 1
        else:
            out.append(arg[i])
            i += 1
    return "".join(out)


def restricted_violations(pod: dict) -> list[str]:
    """What Pod Security `restricted` (the `mlops` namespace's enforce level) would refuse in `pod`."""
    spec, problems = pod["spec"], []
    pod_sc = spec.get("securityContext") or {}
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc, name = c.get("securityContext") or {}, c["name"]
        caps = sc.get("capabilities") or {}
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        checks = {
            "privileged": not sc.get("privileged"),
            "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
            "capabilities drop ALL": "ALL" in caps.get("drop", []),
            "no added capabilities": set(caps.get("add", [])) <= {"NET_BIND_SERVICE"},
            "runAsNonRoot": sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True,
            "runAsUser not 0": sc.get("runAsUser", pod_sc.get("runAsUser")) != 0,
            "seccomp RuntimeDefault": seccomp in ("RuntimeDefault", "Localhost"),
        }
        problems += [f"{name}: {check}" for check, ok in checks.items() if not ok]
    allowed_volumes = {"name", "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
    problems += [f"volume {v['name']}" for v in spec.get("volumes", []) if set(v) - allowed_volumes]
    problems += [field for field in ("hostNetwork", "hostPID", "hostIPC") if spec.get(field)]
    return problems


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
    assert set(dag.params) == {"dataset_url", "dataset_sha256", "min_accuracy", "group_features"}
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

    assert container["image"] == os.environ.get("TITANIC_PIPELINE_IMAGE", "titanic-pipeline:0.1.0")
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
    assert args["train"] == ["train", "--feature-set", "fs-456", "--n-jobs", "2", "--run-id", "manual__test",
                             "--trigger", "manual",  # lineage: the relay's record of this run names its alert
                             "--group-features"]
    assert base_container(build_pod(dag, "train", {"group_features": False}))["args"][-1] == "--no-group-features"
    # a run id is the caller's text: a `$(VAR)` in it must reach the step verbatim, not expanded by the kubelet
    assert base_container(build_pod(dag, "train", run_id="x$(HOME)"))["args"][-4] == "x$$(HOME)"
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


def exit_codes(path: Path) -> dict[str, int]:
    """The EXIT_* constants a module assigns, read without importing it (the DAG's venv has no project code)."""
    tree = ast.parse(path.read_text())
    return {node.targets[0].id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name) and node.targets[0].id.startswith("EXIT_")}


PIPELINE_EXIT = exit_codes(ROOT / "pipeline" / "errors.py")


def dag_module(dag):
    """The DAG file as DagBag loaded it (its constants and helpers)."""
    return sys.modules[type(dag.get_task("train")).__module__]


def test_the_dag_mirrors_the_pipelines_exit_codes_and_retries_only_what_can_pass(dag):
    mirrored = exit_codes(DAG_FILE)
    assert mirrored and mirrored.items() <= PIPELINE_EXIT.items()
    not_retried = set(dag_module(dag).NOT_RETRIED)
    assert not_retried == {PIPELINE_EXIT[n] for n in ("EXIT_REFUSED", "EXIT_USAGE", "EXIT_CREDENTIALS")}
    assert PIPELINE_EXIT["EXIT_UNAVAILABLE"] not in not_retried and PIPELINE_EXIT["EXIT_UNEXPECTED"] not in not_retried


def test_rejected_model_skips_deploy_with_the_exit_code_evaluate_uses(dag):
    code = PIPELINE_EXIT["EXIT_MODEL_REJECTED"]
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
    assert sidecar_container(build_pod(bag.dags["titanic_training"], "train"))["image"] == "titanic-pipeline:9.9.9"


# What titanic-config and titanic-secrets put into every step pod's environment (envFrom).
POD_ENV = {"DATABASE_URL": "postgresql://titanic:pg-password@pg-rw.data:5432/titanic", "S3_SECRET_KEY": "s3-key-value",
           "DATASET_URL": "https://example.org/train.csv", "DATASET_SHA256": "ab" * 32}
HOSTILE = ["$(DATABASE_URL)", "http://host/?k=$(S3_SECRET_KEY)", "$$(S3_SECRET_KEY)", "$$$(DATABASE_URL)",
           "s3://raw/$(S3_SECRET_KEY", "$"]


def test_kubelet_expansion_model_expands_what_kubernetes_expands():
    """The model the next test relies on: unescaped, a param would leak the secret."""
    assert kubelet_expand("http://host/?k=$(S3_SECRET_KEY)", POD_ENV) == "http://host/?k=s3-key-value"
    assert kubelet_expand("$$(S3_SECRET_KEY) $(UNSET) $x $", POD_ENV) == "$(S3_SECRET_KEY) $(UNSET) $x $"


@pytest.mark.parametrize("hostile", HOSTILE)
def test_params_reach_the_pod_args_as_literal_text(dag, hostile):
    """Even when validation is bypassed, a param's `$(VAR)` is not expanded from the pod's Secret env."""
    params = {"dataset_url": hostile, "dataset_sha256": hostile, "min_accuracy": hostile}
    for step in STEPS:
        args = [kubelet_expand(a, POD_ENV) for a in base_container(build_pod(dag, step, params))["args"]]
        assert not any("pg-password" in a or "s3-key-value" in a for a in args), (step, args)
        if step == "ingest":
            assert args == ["ingest", "--source", hostile, "--sha256", hostile]
        if step == "evaluate":
            assert args[-2:] == ["--min-accuracy", hostile]
    # the defaults still come from the pod's configuration, expanded by the kubelet
    args = [kubelet_expand(a, POD_ENV) for a in base_container(build_pod(dag, "ingest"))["args"]]
    assert args == ["ingest", "--source", POD_ENV["DATASET_URL"], "--sha256", POD_ENV["DATASET_SHA256"]]


@pytest.fixture(scope="module")
def serialized_dag(dag):
    """The DAG as the scheduler and API server hold it: serialized by the DAG processor, read back."""
    return DagSerialization.from_dict(json.loads(json.dumps(DagSerialization.to_dict(dag))))


def validate_conf(serialized_dag, conf: dict) -> dict:
    # exactly what SerializedDAG.create_dagrun does with the conf of a triggered run
    return serialized_dag.params.deep_merge(conf).validate()


@pytest.mark.parametrize("conf", [
    *({"dataset_url": url} for url in HOSTILE),
    {"dataset_url": "file:///etc/passwd"},
    {"dataset_url": "/data/train.csv"},
    {"dataset_url": "ftp://example.org/train.csv"},
    {"dataset_url": "https://example.org/a b.csv"},
    {"dataset_url": "https://example.org/train.csv\n"},
    {"dataset_url": "https://example.org/" + "a" * 2048},
    {"dataset_url": 42},
    *({"dataset_sha256": value} for value in
      ["$(DATASET_SHA256)", "abc", "a" * 63, "a" * 65, "g" * 64, "a" * 64 + "\n", " " + "a" * 63]),
    *({"min_accuracy": value} for value in [1.5, -0.1, "0.9", "$(DATABASE_URL)", None, True]),
    *({"group_features": value} for value in ["true", 1, None, "--no-group-features"]),
], ids=lambda conf: repr(conf)[:70])
def test_a_run_with_an_invalid_param_is_refused(serialized_dag, conf):
    with pytest.raises(ParamValidationError):
        validate_conf(serialized_dag, conf)


@pytest.mark.parametrize("conf", [
    {},
    {"dataset_url": "s3://raw/titanic/batch2.csv", "dataset_sha256": "AB" * 32, "min_accuracy": 0},
    {"dataset_url": "https://example.org/data/train.csv?version=2&x=%24", "min_accuracy": 1},
    {"dataset_url": "http://files.mlops.svc:8080/train.csv", "dataset_sha256": "", "min_accuracy": 0.85},
    {"group_features": False},
], ids=repr)
def test_a_run_with_valid_params_is_accepted(serialized_dag, conf):
    assert validate_conf(serialized_dag, conf) == {**{k: serialized_dag.params[k] for k in serialized_dag.params},
                                                   **conf}


def test_every_step_has_an_execution_timeout(dag):
    timeouts = {task.task_id: task.execution_timeout for task in dag.tasks}
    startup = {task.task_id: timedelta(seconds=task.startup_timeout_seconds) for task in dag.tasks}
    for step in STEPS:
        assert timeouts[step] is not None and timeouts[step] > startup[step], step
        assert timeouts[step] <= timedelta(hours=2), step  # a hung step frees the single run slot soon
        assert dag.get_task(step).on_kill_action.value == "delete_pod"  # a timed-out step's pod does not live on
    assert all(timeouts["train"] > timeouts[step] for step in STEPS if step != "train")
    args = base_container(build_pod(dag, "deploy"))["args"]
    rollout_wait = timedelta(seconds=float(args[args.index("--timeout") + 1]))
    # the pod may take its start-up time, then waits for Ready, then restores the previous model
    assert timeouts["deploy"] >= startup["deploy"] + 2 * rollout_wait


@pytest.mark.parametrize("step", STEPS)
def test_xcom_sidecar_runs_the_preloaded_pipeline_image_under_restricted(dag, step):
    pod = build_pod(dag, step)
    sidecar, base = sidecar_container(pod), base_container(pod)
    assert sidecar["image"] == base["image"] == dag.get_task(step).image  # loaded by `kind load`
    assert sidecar["image"].startswith("titanic-pipeline:")
    assert sidecar["imagePullPolicy"] == "IfNotPresent"
    assert "alpine" not in json.dumps(pod)  # nothing of this pod comes from Docker Hub
    assert sidecar["command"] == ["sh", "-c", PodDefaults.XCOM_CMD]  # the provider's loop, run by the image's sh
    assert set(sidecar["resources"]["requests"]) == set(sidecar["resources"]["limits"]) == {"cpu", "memory"}
    assert {"mountPath": "/airflow/xcom", "name": "xcom"} in sidecar["volumeMounts"]
    assert restricted_violations(pod) == []


def test_restricted_check_catches_a_privileged_sidecar(dag):
    pod = build_pod(dag, "ingest")
    sidecar_container(pod)["securityContext"] = {"allowPrivilegeEscalation": True, "runAsUser": 0}
    assert restricted_violations(pod) == [
        f"{PodDefaults.SIDECAR_CONTAINER_NAME}: {check}" for check in
        ("allowPrivilegeEscalation false", "capabilities drop ALL", "runAsUser not 0")]


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


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """A real kube-apiserver (tests/kube.py, no node): the operator's cleanup reads and patches real pods."""
    if str(ROOT) not in sys.path:  # pytest runs this folder without the repository on the path
        sys.path.insert(0, str(ROOT))
    from tests import kube as local_kube

    missing = [name for name in ("etcd", "kube-apiserver", "kubectl") if not (ROOT / "bin" / name).exists()]
    if missing:
        pytest.skip(f"bin/{missing[0]} is missing (`make kube-tools tools` builds it)")
    root = Path(tempfile.mkdtemp(prefix="titanic-kube-"))
    cluster = local_kube.up(root, kwok=False)
    yield cluster
    local_kube.down(root)


def failed_pod(cluster, task, exit_code: int):
    """A pod of `task` whose base container has terminated with `exit_code` (its status written as a kubelet would)."""
    name = f"titanic-{task.task_id}-{exit_code}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": task.base_container_name, "image": task.image}]}}))
    terminated = {"name": task.base_container_name, "ready": False, "restartCount": 0, "image": task.image,
                  "imageID": "", "state": {"terminated": {"exitCode": exit_code, "reason": "Error"}}}
    cluster.kubectl("-n", "default", "patch", "pod", name, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"phase": "Failed", "containerStatuses": [terminated]}}))
    return task.pod_manager.read_pod(k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=name, namespace="default")))


@pytest.mark.parametrize("step, code, outcome", [
    ("train", 1, AirflowFailException), ("ingest", 2, AirflowFailException), ("features", 77, AirflowFailException),
    ("train", 75, AirflowException), ("deploy", 70, AirflowException), ("train", 137, AirflowException),
    ("evaluate", 99, AirflowSkipException), ("evaluate", 75, AirflowException)])
def test_a_failed_step_is_retried_only_when_its_exit_code_says_a_retry_can_pass(dag, api_server, step, code, outcome):
    """The operator's own cleanup against a real API server: AirflowFailException ends the task without retries."""
    task = copy.deepcopy(dag.get_task(step))
    task.config_file = api_server.kubeconfig
    pod = failed_pod(api_server, task, code)
    with pytest.raises(AirflowException) as raised:
        task.cleanup(pod=pod, remote_pod=pod, context=None)
    assert type(raised.value) is outcome, raised.value
    if outcome is AirflowFailException:
        assert str(raised.value).startswith(f"exit code {code}, ")
