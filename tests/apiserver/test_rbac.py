"""Least privilege, proven by the API server's authorizer (SubjectAccessReview through `kubectl auth can-i
--as`): for every ServiceAccount of the chart and for Airflow's, what it must be allowed and what refused."""

from __future__ import annotations

import pytest

SA = "system:serviceaccount:{}:{}"
PIPELINE = SA.format("mlops", "titanic-pipeline")
WEBAPP = SA.format("mlops", "titanic-webapp")
MODELS = SA.format("mlops", "titanic-models")
AIRFLOW = SA.format("airflow", "airflow-scheduler")

# (who, verb, resource, namespace or None for cluster scope)
ALLOWED = [
    (PIPELINE, "get", "inferenceservices.serving.kserve.io", "mlops"),
    (PIPELINE, "create", "inferenceservices.serving.kserve.io", "mlops"),
    (PIPELINE, "patch", "inferenceservices.serving.kserve.io", "mlops"),
    (PIPELINE, "watch", "inferenceservices.serving.kserve.io", "mlops"),
    (PIPELINE, "get", "deployments.apps/titanic-predictor", "mlops"),  # waits for the predictor's rollout
    (AIRFLOW, "create", "pods", "mlops"),
    (AIRFLOW, "get", "pods", "mlops"),
    (AIRFLOW, "list", "pods", "mlops"),
    (AIRFLOW, "watch", "pods", "mlops"),
    (AIRFLOW, "patch", "pods", "mlops"),
    (AIRFLOW, "delete", "pods", "mlops"),
    (AIRFLOW, "get", "pods/log", "mlops"),
    (AIRFLOW, "create", "pods/exec", "mlops"),
    (AIRFLOW, "list", "events", "mlops"),
]
REFUSED = [
    (PIPELINE, "delete", "inferenceservices.serving.kserve.io", "mlops"),
    (PIPELINE, "update", "inferenceservices.serving.kserve.io", "mlops"),
    (PIPELINE, "list", "inferenceservices.serving.kserve.io", "data"),
    (PIPELINE, "get", "secrets", "mlops"),
    (PIPELINE, "list", "secrets", "mlops"),
    (PIPELINE, "create", "pods", "mlops"),
    (PIPELINE, "patch", "deployments.apps/titanic-predictor", "mlops"),
    (PIPELINE, "get", "deployments.apps/titanic-webapp", "mlops"),
    (PIPELINE, "list", "nodes", None),
    (PIPELINE, "create", "namespaces", None),
    (WEBAPP, "get", "pods", "mlops"),
    (WEBAPP, "get", "secrets", "mlops"),
    (WEBAPP, "get", "inferenceservices.serving.kserve.io", "mlops"),
    (MODELS, "get", "secrets", "mlops"),
    (MODELS, "list", "pods", "mlops"),
    (MODELS, "patch", "inferenceservices.serving.kserve.io", "mlops"),
    (AIRFLOW, "get", "secrets", "mlops"),
    (AIRFLOW, "list", "secrets", "mlops"),
    (AIRFLOW, "create", "pods", "data"),
    (AIRFLOW, "create", "pods", "default"),
    (AIRFLOW, "delete", "inferenceservices.serving.kserve.io", "mlops"),
    (AIRFLOW, "patch", "inferenceservices.serving.kserve.io", "mlops"),
    (AIRFLOW, "create", "rolebindings.rbac.authorization.k8s.io", "mlops"),
    (AIRFLOW, "list", "nodes", None),
    (AIRFLOW, "create", "clusterroles.rbac.authorization.k8s.io", None),
]


def can(kube, who, verb, resource, namespace) -> str:
    scope = ["-n", namespace] if namespace else []
    return kube.kubectl("auth", "can-i", verb, resource, *scope, "--as", who, check=False).stdout.strip()


@pytest.mark.parametrize("who,verb,resource,namespace", ALLOWED, ids=lambda v: str(v).rsplit(":", 1)[-1])
def test_allowed(kube, platform, who, verb, resource, namespace):
    assert can(kube, who, verb, resource, namespace) == "yes"


@pytest.mark.parametrize("who,verb,resource,namespace", REFUSED, ids=lambda v: str(v).rsplit(":", 1)[-1])
def test_refused(kube, platform, who, verb, resource, namespace):
    assert can(kube, who, verb, resource, namespace) == "no"


def test_every_chart_service_account_is_in_the_tables(kube, platform):
    accounts = kube.kubectl("-n", "mlops", "get", "serviceaccounts", "-l", "app.kubernetes.io/instance=titanic",
                            "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
    covered = {who.rsplit(":", 1)[1] for who, *_ in ALLOWED + REFUSED if ":mlops:" in who}
    assert accounts and set(accounts) == covered
