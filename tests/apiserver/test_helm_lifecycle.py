"""Helm operations never un-deploy the served model: install -> the deploy step serves v -> upgrade ->
rollback -> an upgrade the API server rejects (make deploy is atomic) -> uninstall -> install again."""

from __future__ import annotations

import json

from tests.apiserver.conftest import helm, make

RELEASE, NAMESPACE = "titanic", "mlops"
SERVED = "s3://models/titanic/20261201T000000-lifecycle"


def storage_uri(kube) -> str | None:
    isvc = json.loads(kube.kubectl("-n", NAMESPACE, "get", "inferenceservice", "titanic", "-o", "json").stdout)
    return isvc["spec"]["predictor"]["model"].get("storageUri")


def serve(kube, uri: str) -> None:
    """Point the InferenceService at `uri` with the deploy step's own patch (not a helm value)."""
    from pipeline.steps import deploy

    isvc = deploy.InferenceService(deploy.custom_objects_api(kube.kubeconfig), NAMESPACE, "titanic",
                                   request_timeout=10)
    path, previous = deploy.find_storage_uri(isvc.get())
    isvc.set_uri(path, previous, uri)


def history(kube) -> list[dict]:
    return json.loads(helm(kube, "history", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)


def webapp_spec(kube) -> dict:
    return json.loads(kube.kubectl("-n", NAMESPACE, "get", "deployment", "titanic-webapp", "-o", "json").stdout)["spec"]


def test_no_helm_operation_changes_the_served_model(kube, platform):
    serve(kube, SERVED)
    assert storage_uri(kube) == SERVED

    make(kube, "deploy", DEPLOY_ARGS="--set config.logLevel=DEBUG")  # an upgrade that changes the model server
    assert storage_uri(kube) == SERVED
    assert history(kube)[-1]["status"] == "deployed"

    helm(kube, "rollback", RELEASE, "-n", NAMESPACE, "--wait")
    assert storage_uri(kube) == SERVED
    first = history(kube)[0]["revision"]
    helm(kube, "rollback", RELEASE, str(first), "-n", NAMESPACE, "--wait")  # back to the very first install
    assert storage_uri(kube) == SERVED


def test_an_upgrade_the_api_server_rejects_changes_nothing(kube, platform):
    serve(kube, SERVED)
    before, revisions = webapp_spec(kube), len(history(kube))
    # Valid for the chart's schema, refused by the API server: a request above its limit.
    result = make(kube, "deploy", check=False,
                  DEPLOY_ARGS="--set webapp.replicas=3 --set-string webapp.resources.requests.memory=2Gi")
    assert result.returncode != 0
    assert "must be less than or equal to memory limit" in result.stderr + result.stdout
    after = history(kube)
    assert after[-1]["status"] == "deployed" and len(after) == revisions + 2  # the failed one, then its rollback
    assert webapp_spec(kube)["replicas"] == before["replicas"]
    assert webapp_spec(kube)["template"] == before["template"]
    assert storage_uri(kube) == SERVED


def test_uninstall_leaves_nothing_behind_and_install_works_again(kube, platform):
    helm(kube, "uninstall", RELEASE, "-n", NAMESPACE, "--wait")
    kinds = kube.kubectl("api-resources", "--namespaced", "--verbs=list", "-o", "name").stdout.split()
    left = kube.kubectl("-n", NAMESPACE, "get", ",".join(kinds), "-l", f"app.kubernetes.io/instance={RELEASE}",
                        "-o", "name", "--ignore-not-found").stdout.split()
    assert left == []
    make(kube, "deploy")
    assert history(kube)[-1]["status"] == "deployed"
    assert storage_uri(kube) is None  # a fresh install serves nothing until the deploy step runs
