"""Pod Security `restricted` where the project's pods run, proven by the API server's own admission:
the chart's pods and hook Jobs, the KServe pods as KServe builds them, and every step pod of the DAG as
Airflow's service account creates it (server-side dry run: admission runs, nothing is stored)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.charts import helm as chart_helm
from tests.conftest import REPO

NAMESPACE = "mlops"
AIRFLOW_SA = "system:serviceaccount:airflow:airflow-scheduler"  # charts/values/airflow.yaml scheduler.serviceAccount
AIRFLOW_PYTHON = REPO / ".venv-airflow" / "bin" / "python"


def admit(kube, pod: dict, *, as_user: str | None = None) -> subprocess.CompletedProcess:
    """Create `pod` in mlops with a server-side dry run: every admission plugin decides, nothing is persisted."""
    pod = {"apiVersion": "v1", "kind": "Pod", **pod}
    pod["metadata"] = {"name": pod.get("metadata", {}).get("name") or "dry-run", "namespace": NAMESPACE}
    args = ["create", "--dry-run=server", "-o", "name", "-f", "-"] + (["--as", as_user] if as_user else [])
    return kube.kubectl(*args, input=json.dumps(pod), check=False)


def assert_admitted(result: subprocess.CompletedProcess, what: str) -> None:
    assert result.returncode == 0, f"{what} refused: {result.stderr}"
    assert "violates PodSecurity" not in result.stderr, result.stderr  # not even a warning


def test_project_namespaces_enforce_restricted(kube, platform):
    labels = json.loads(kube.kubectl("get", "namespace", NAMESPACE, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_a_non_compliant_pod_is_refused(kube, platform):
    pod = {"spec": {"containers": [{"name": "root", "image": "titanic-pipeline:x",
                                    "securityContext": {"privileged": True}}]}}
    result = admit(kube, pod)
    assert result.returncode != 0 and "violates PodSecurity" in result.stderr and "restricted" in result.stderr


def test_the_charts_pods_run_under_restricted(kube, platform):
    """The web app's ReplicaSet created its pods (a refused pod leaves FailedCreate and no pod)."""
    deployments = json.loads(kube.kubectl("-n", NAMESPACE, "get", "deployments", "-o", "json").stdout)["items"]
    assert deployments
    for d in deployments:
        assert d["status"].get("readyReplicas") == d["spec"]["replicas"], d["metadata"]["name"]
    pods = json.loads(kube.kubectl("-n", NAMESPACE, "get", "pods", "-o", "json").stdout)["items"]
    assert any(p["metadata"]["name"].startswith("titanic-webapp") for p in pods)


def test_the_charts_hook_jobs_and_test_pod_are_admitted(kube, platform):
    objects = chart_helm.render()
    templates = [(f"Job/{o['metadata']['name']}", o["spec"]["template"]) for o in objects if o["kind"] == "Job"]
    templates += [(f"Pod/{o['metadata']['name']}", o) for o in objects if o["kind"] == "Pod"]
    assert len(templates) >= 3  # buckets, migrate, helm test
    for what, template in templates:
        assert_admitted(admit(kube, {"spec": template["spec"]}), what)


def _isvc_pod(isvc: dict, component: str, storage: dict, runtimes: dict) -> dict:
    """The pod KServe (Standard mode) makes of one component: the component's pod fields (a model runs its
    ServingRuntime's container), and for the predictor the storage initializer of the ClusterStorageContainer
    `default`, injected as KServe's pod mutator does."""
    spec = {k: v for k, v in chart_helm.kserve_pod(isvc["spec"][component], runtimes).items()
            if k not in ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "logger", "batcher")}
    if component == "predictor":
        init = {**storage["spec"]["container"], "args": ["s3://models/titanic/v1", "/mnt/models"],
                "volumeMounts": [{"name": "kserve-provision-location", "mountPath": "/mnt/models"}]}
        spec["initContainers"] = [init]
        spec["volumes"] = [*spec.get("volumes", []), {"name": "kserve-provision-location", "emptyDir": {}}]
    return {"spec": spec}


def test_kserve_predictor_and_transformer_pods_are_admitted(kube, platform):
    isvc = json.loads(kube.kubectl("-n", NAMESPACE, "get", "inferenceservice", "titanic", "-o", "json").stdout)
    storage = json.loads(kube.kubectl("get", "clusterstoragecontainer", "default", "-o", "json").stdout)
    runtimes = {r["metadata"]["name"]: r["spec"] for r in
                json.loads(kube.kubectl("-n", NAMESPACE, "get", "servingruntimes", "-o", "json").stdout)["items"]}
    for component in ("predictor", "transformer"):
        pod = _isvc_pod(isvc, component, storage, runtimes)
        if component == "predictor":
            # The storage initializer is KServe's container: it must be admitted too, or no model ever loads.
            assert pod["spec"]["initContainers"][0]["name"] == "storage-initializer"
        assert_admitted(admit(kube, pod), f"KServe {component} pod")


def _dag_pods() -> dict[str, dict]:
    """Each step's pod exactly as the pinned cncf-kubernetes provider builds it (tests/dags' build_pod)."""
    script = ("import json, sys; sys.path.insert(0, sys.argv[1]);"
              "from airflow.dag_processing.dagbag import DagBag;"
              "from tests.dags.test_titanic_training import STEPS, build_pod;"
              "dag = DagBag(dag_folder=sys.argv[1] + '/dags').dags['titanic_training'];"
              "print(json.dumps({s: build_pod(dag, s) for s in STEPS}))")
    env = {**os.environ, "AIRFLOW_HOME": str(REPO / "build" / "airflow-home")}
    out = subprocess.run([str(AIRFLOW_PYTHON), "-c", script, str(REPO)], env=env, capture_output=True, text=True,
                         check=True, timeout=300).stdout
    return json.loads(out.splitlines()[-1])


def test_every_dag_step_pod_is_admitted_as_airflow(kube, platform):
    if not AIRFLOW_PYTHON.exists():
        pytest.skip(".venv-airflow is missing (`make airflow-venv`): the provider builds the step pods")
    pods = _dag_pods()
    assert sorted(pods) == sorted(["ingest", "features", "train", "evaluate", "deploy"])
    for step, pod in pods.items():
        assert pod["metadata"]["namespace"] == NAMESPACE
        assert_admitted(admit(kube, {"metadata": {"name": f"step-{step}"}, "spec": pod["spec"]}, as_user=AIRFLOW_SA),
                        f"step pod {step}")
    # Airflow's identity matters: it may create pods in mlops, nowhere else.
    other = admit(kube, {"spec": pods["ingest"]["spec"]}, as_user="system:serviceaccount:airflow:default")
    assert other.returncode != 0 and "forbidden" in other.stderr.lower()
