"""The deploy step as its pod runs it: `python -m pipeline deploy` with a real token of the `titanic-pipeline`
ServiceAccount (TokenRequest) against the real API server and the chart's InferenceService, promoting in the real
registry only once the real model server answers with the new version.

No KServe controller runs here (its image cannot be pulled), so `KServeStandIn` does its part, and says so:
it turns the InferenceService's model into the predictor Deployment (which the real Deployment controller rolls
out on the kwok node) and writes the status KServe would write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from pipeline import registry
from pipeline.steps import deploy
from pipeline.store import postgres
from tests.apiserver.conftest import Poller, make
from tests.conftest import REPO, settings_env

NAMESPACE, NAME = "mlops", "titanic"


class KServeStandIn(Poller):
    """Stands in for KServe's controller (not runnable here): predictor Deployment + InferenceService status."""

    interval = 0.2

    def __init__(self, kube, serves=lambda uri: True):
        super().__init__()
        self.kube, self.serves, self.reconciled = kube, serves, 0

    def poll(self):
        got = self.kube.kubectl("-n", NAMESPACE, "get", "inferenceservice", NAME, "-o", "json", check=False)
        if got.returncode == 0:
            self.reconcile(json.loads(got.stdout))

    def reconcile(self, isvc: dict) -> None:
        generation = isvc["metadata"]["generation"]
        uri = isvc["spec"]["predictor"].get("model", {}).get("storageUri")
        if self.reconciled == generation or not uri:
            return
        template = {"metadata": {"labels": {"app": f"{NAME}-predictor", "serving.kserve.io/inferenceservice": NAME},
                                 "annotations": {deploy.SOURCE_URI_ANNOTATION: uri}},
                    "spec": {"securityContext": deploy.POD_SECURITY, "containers": [{
                        "name": "kserve-container", "image": "titanic-model-server:stand-in",
                        "securityContext": deploy.CONTAINER_SECURITY,
                        "resources": deploy.RESOURCES["predictor"]}]}}
        predictor = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"{NAME}-predictor"},
                     "spec": {"replicas": 1, "selector": {"matchLabels": {"app": f"{NAME}-predictor"}},
                              "template": template}}
        self.kube.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=json.dumps(predictor))
        ready = self.serves(uri)
        self.reconciled = generation
        # As KServe's Standard mode reports it: observedGeneration is the predictor Deployment's (found on a real
        # KServe 0.20), so only the Deployment's template tells that the new storageUri was seen.
        status = {"status": {"deploymentMode": "Standard", "observedGeneration": 1, "conditions": [
            {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": _now(),
             "reason": "" if ready else "MinimumReplicasUnavailable"}]}}
        self.kube.kubectl("-n", NAMESPACE, "patch", "inferenceservice", NAME, "--subresource=status",
                          "--type=merge", "-p", json.dumps(status))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@pytest.fixture(scope="module")
def pipeline_kubeconfig(kube, platform, tmp_path_factory):
    """A kubeconfig holding a real token of the titanic-pipeline ServiceAccount, as its step pods get one."""
    token = kube.kubectl("-n", NAMESPACE, "create", "token", "titanic-pipeline", "--duration=3600s").stdout.strip()
    config = json.loads(open(kube.kubeconfig).read())
    config["users"] = [{"name": "titanic-pipeline", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "titanic-pipeline"
    path = tmp_path_factory.mktemp("pipeline") / "kubeconfig"
    path.write_text(json.dumps(config))
    return path


def run_deploy(settings, kubeconfig, version: str, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(settings_env(settings), KUBECONFIG=str(kubeconfig), KUBE_REQUEST_TIMEOUT="10")
    return subprocess.run([sys.executable, "-m", "pipeline", "deploy", "--version", version, "--namespace", NAMESPACE,
                           "--timeout", str(timeout)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def model_spec(kube) -> dict:
    isvc = json.loads(kube.kubectl("-n", NAMESPACE, "get", "inferenceservice", NAME, "-o", "json").stdout)
    return isvc["spec"]["predictor"]["model"]


def test_deploys_with_the_pipeline_token_and_promotes_once_the_version_answers(kube, pipeline_kubeconfig, model_server):
    settings = model_server.settings.model_copy(update={"kserve_url": model_server.transformer_url})
    version = model_server.model_version
    with KServeStandIn(kube):
        result = run_deploy(settings, pipeline_kubeconfig, version)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["storage_uri"] == deploy.model_uri(settings, version) == model_spec(kube)["storageUri"]
    conn = postgres.connect(settings)
    try:
        entry = registry.get(conn, settings.model_name, version)
    finally:
        conn.close()
    assert entry["status"] == "production"
    # The predictor checks the artefact against the hash recorded at training before unpickling it.
    assert model_spec(kube)["env"] == [{"name": "MODEL_SHA256", "value": registry.recorded_sha256(entry, "model.joblib")}]
    rollout = json.loads(kube.kubectl("-n", NAMESPACE, "get", "deployment", f"{NAME}-predictor", "-o", "json").stdout)
    assert rollout["status"]["updatedReplicas"] == rollout["status"]["availableReplicas"] == 1


def test_a_version_that_never_answers_is_rolled_back_and_not_promoted(kube, pipeline_kubeconfig, model_server,
                                                                       settings):
    # Its own registry (the `settings` fixture's schema): the shared trained model's stays as it is.
    settings = settings.model_copy(update={"kserve_url": model_server.transformer_url})
    conn = postgres.connect(settings)
    try:  # approved, but the model server keeps answering with the served version (as a failed load would)
        registry.register(conn, settings.model_name, "never-answers", artifact_uri=deploy.model_uri(settings, "x"),
                          metrics={"accuracy": 0.9}, params={}, feature_set="fs")
        registry.set_status(conn, settings.model_name, "never-answers", "approved")
    finally:
        conn.close()
    before = model_spec(kube).get("storageUri")
    with KServeStandIn(kube):
        result = run_deploy(settings, pipeline_kubeconfig, "never-answers", timeout=5)
    assert result.returncode != 0
    assert "still answers with version" in result.stderr and "restored storageUri" in result.stderr, result.stderr
    assert model_spec(kube).get("storageUri") == before
    conn = postgres.connect(settings)
    try:
        assert registry.get(conn, settings.model_name, "never-answers")["status"] == "approved"  # not promoted
    finally:
        conn.close()


def test_a_stale_guard_is_refused_with_422(kube, pipeline_kubeconfig, platform):
    from kubernetes.client.exceptions import ApiException

    isvc = deploy.InferenceService(deploy.custom_objects_api(str(pipeline_kubeconfig)), NAMESPACE, NAME,
                                   request_timeout=10)
    path, current = deploy.find_storage_uri(isvc.get())
    with pytest.raises(ApiException) as refused:
        isvc.set_uri(path, "s3://models/titanic/not-what-is-there", "s3://models/titanic/mine")
    assert refused.value.status == 422
    assert deploy.find_storage_uri(isvc.get())[1] == current
    # restore() after someone else's change: says so and leaves their value
    assert "changed by someone else" in isvc.restore(path, "s3://models/titanic/mine", "s3://x", [])


def test_pipeline_token_cannot_delete_or_replace_the_inference_service(kube, pipeline_kubeconfig, platform):
    from kubernetes.client.exceptions import ApiException

    api = deploy.custom_objects_api(str(pipeline_kubeconfig))
    with pytest.raises(ApiException) as refused:
        api.delete_namespaced_custom_object(deploy.GROUP, deploy.API_VERSION, NAMESPACE, deploy.PLURAL, NAME)
    assert refused.value.status == 403


def test_creates_the_inference_service_when_absent_and_helm_adopts_it(kube, pipeline_kubeconfig, model_server):
    settings = model_server.settings.model_copy(update={"kserve_url": model_server.transformer_url})
    kube.kubectl("-n", NAMESPACE, "delete", "inferenceservice", NAME, "--wait")
    with KServeStandIn(kube):
        result = run_deploy(settings, pipeline_kubeconfig, model_server.model_version)
    assert result.returncode == 0, result.stderr
    served = deploy.model_uri(settings, model_server.model_version)
    assert model_spec(kube)["storageUri"] == served
    # The chart's next upgrade takes it over (Helm's ownership marks) and keeps the served model.
    make(kube, "deploy")
    assert model_spec(kube)["storageUri"] == served
