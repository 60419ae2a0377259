"""Deploy step: InferenceService body, rollout/rollback logic, and the registry switch.

No Kubernetes cluster can run on the test machine (no container image can be pulled), so the
KServe API is faked: `FakeKubeAPI` is a local HTTP server speaking the three endpoints the step
uses (GET/POST/PATCH of `serving.kserve.io/v1beta1` inferenceservices, JSON patch included), and
a scripted "controller" plays KServe's status updates. The real `kubernetes` client talks to it,
so request shapes and content types are exercised. The registry is real Postgres.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubernetes import client as k8s_client

from pipeline import registry
from pipeline.errors import EXIT_REFUSED, EXIT_UNAVAILABLE, ModelNotFound, PipelineError
from pipeline.steps import deploy
from pipeline.store import postgres
from tests.conftest import settings_env
from tests.inputs import CRD_SCHEMAS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "titanic-model-server:test"
ISVC_SCHEMA = CRD_SCHEMAS / "serving.kserve.io" / "inferenceservice_v1beta1.json"
ISVC_PATH = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/?]+))?")


class FakeKubeAPI(ThreadingHTTPServer):
    """In-process stand-in for the API server's InferenceService endpoints (no cluster here).

    `controller(isvc)` is called on every GET, like KServe reconciling between two polls.
    """

    daemon_threads = True

    def __init__(self, controller=None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.objects: dict[tuple[str, str], dict] = {}
        self.calls: list[tuple[str, str, str | None]] = []  # (method, name, content type)
        self.controller = controller or (lambda isvc: None)
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def api(self) -> k8s_client.CustomObjectsApi:
        return k8s_client.CustomObjectsApi(k8s_client.ApiClient(k8s_client.Configuration(host=self.url)))

    def put(self, isvc: dict, generation: int = 1) -> None:
        isvc = copy.deepcopy(isvc)
        isvc["metadata"]["generation"] = generation
        self.objects[(isvc["metadata"]["namespace"], isvc["metadata"]["name"])] = isvc

    def uri(self, namespace: str = "mlops", name: str = "titanic") -> str:
        return deploy.find_storage_uri(self.objects[(namespace, name)])[1]


class _Handler(BaseHTTPRequestHandler):
    server: FakeKubeAPI

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                           "message": message, "code": code})

    def _route(self):
        match = ISVC_PATH.match(self.path)
        if not match:
            self._status(404, "NotFound", f"no route {self.path}")
            return None
        self.server.calls.append((self.command, match.group(2), self.headers.get("Content-Type")))
        return match.group(1), match.group(2)

    def _body(self):
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")

    def do_GET(self):
        route = self._route()
        if route is None:
            return
        with self.server.lock:
            isvc = self.server.objects.get(route)
            if isvc is None:
                self._status(404, "NotFound", f'inferenceservices.serving.kserve.io "{route[1]}" not found')
                return
            self.server.controller(isvc)
            self._reply(200, isvc)

    def do_POST(self):
        route = self._route()
        if route is None:
            return
        body = self._body()
        key = (route[0], body["metadata"]["name"])
        with self.server.lock:
            if key in self.server.objects:
                self._status(409, "AlreadyExists", "already exists")
                return
            self.server.put(body)
            self._reply(201, self.server.objects[key])

    def do_PATCH(self):
        route = self._route()
        if route is None:
            return
        if self.headers.get("Content-Type") != "application/json-patch+json":
            self._status(415, "UnsupportedMediaType", "this fake only speaks JSON patch")
            return
        ops = self._body()
        with self.server.lock:
            isvc = self.server.objects.get(route)
            if isvc is None:
                self._status(404, "NotFound", "not found")
                return
            patched = copy.deepcopy(isvc)
            for op in ops:
                *parents, leaf = [int(p) if p.isdigit() else p for p in op["path"].lstrip("/").split("/")]
                target = patched
                for part in parents:
                    target = target[part]
                if op["op"] == "test" and target[leaf] != op["value"]:
                    self._status(422, "Invalid", f"test failed at {op['path']}")
                    return
                if op["op"] in ("replace", "add"):
                    target[leaf] = op["value"]
                if op["op"] == "remove":
                    del target[leaf]
            if patched["spec"] != isvc["spec"]:  # the API server bumps generation on spec changes only
                patched["metadata"]["generation"] += 1
            self.server.objects[route] = patched
            self._reply(200, patched)


def _ready(isvc: dict, ready: bool = True, reason: str = "") -> None:
    """What KServe writes once it has reconciled the current generation."""
    isvc["status"] = {
        "observedGeneration": isvc["metadata"]["generation"],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False", "reason": reason}],
    }


def healthy(isvc: dict) -> None:
    _ready(isvc)


def broken_for(bad_uri: str):
    """A controller whose predictor never becomes ready with `bad_uri` (e.g. a corrupt model)."""

    def controller(isvc: dict) -> None:
        bad = deploy.find_storage_uri(isvc)[1] == bad_uri
        _ready(isvc, ready=not bad, reason="MinimumReplicasUnavailable" if bad else "")

    return controller


@pytest.fixture
def kube():
    server = FakeKubeAPI()
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def models(settings):
    """Registry with v1 in production and v2, v3 approved, v4 rejected; yields a reader of statuses."""
    conn = postgres.connect(settings)
    for version, status in (("v1", "production"), ("v2", "approved"), ("v3", "approved"), ("v4", "rejected")):
        registry.register(conn, settings.model_name, version, artifact_uri=deploy.model_uri(settings, version),
                          metrics={"accuracy": 0.8}, params={}, feature_set="fs1")
        registry.set_status(conn, settings.model_name, version, status)

    def statuses() -> dict[str, str]:
        return {r["version"]: r["status"] for r in registry.list_versions(conn, settings.model_name)}

    yield statuses
    conn.close()


@pytest.fixture
def serving_v1(kube, settings):
    """The InferenceService as the chart created it, serving v1."""
    kube.put(deploy.inference_service_body(settings.model_name, "mlops", deploy.model_uri(settings, "v1"), IMAGE))
    return kube


def _unknown_keys(instance, schema: dict, path: str = "") -> list[str]:
    """Keys the CRD schema does not declare (the schema itself allows them, the API server prunes them)."""
    found = []
    if isinstance(instance, dict) and "properties" in schema and "additionalProperties" not in schema:
        for key, value in instance.items():
            if key not in schema["properties"]:
                found.append(f"{path}.{key}")
            else:
                found += _unknown_keys(value, schema["properties"][key], f"{path}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            found += _unknown_keys(item, schema["items"], f"{path}[{i}]")
    return found


def test_inference_service_body_validates_against_the_kserve_crd_schema():
    schema = json.loads(ISVC_SCHEMA.read_text())
    body = deploy.inference_service_body("titanic", "mlops", "s3://models/titanic/v7", IMAGE, "ab" * 32)

    jsonschema.Draft7Validator(schema).validate(body)
    assert _unknown_keys(body, schema) == []
    assert deploy.find_storage_uri(body) == ("/spec/predictor/model/storageUri", "s3://models/titanic/v7")
    model = body["spec"]["predictor"]["model"]
    assert model["runtime"] == "titanic-model-server"  # the chart's ServingRuntime holds the predictor container
    assert model["env"] == [{"name": "MODEL_SHA256", "value": "ab" * 32}]
    (container,) = body["spec"]["transformer"]["containers"]
    assert container["name"] == "kserve-container"  # KServe finds the custom container by this name
    assert container["args"][0] == "transformer" and container["image"] == IMAGE
    assert container["securityContext"]["runAsNonRoot"] is True
    for role in ("predictor", "transformer"):
        assert body["spec"][role]["serviceAccountName"] == "titanic-models"


def test_schema_check_catches_a_misspelt_field():
    schema = json.loads(ISVC_SCHEMA.read_text())
    body = deploy.inference_service_body("titanic", "mlops", "s3://models/titanic/v7", IMAGE)
    body["spec"]["predictor"]["serviceAccount_name"] = "x"
    body["spec"]["predictor"]["minReplicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(body)
    assert _unknown_keys(body, schema) == [".spec.predictor.serviceAccount_name"]


def test_body_matches_what_the_chart_renders():
    """Created only when absent, the InferenceService must equal the chart's, so render it with real helm."""
    helm = os.environ.get("HELM", str(ROOT / "bin" / "helm"))
    kube_version = next(line.split("=", 1)[1] for line in (ROOT / "versions.env").read_text().splitlines()
                        if line.startswith("KUBE_VERSION="))
    rendered = subprocess.run(
        [helm, "template", "titanic", str(ROOT / "charts" / "titanic"), "--namespace", "mlops",
         "--kube-version", kube_version, "--show-only", "templates/inferenceservice.yaml"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    chart = yaml.safe_load(rendered)
    pointer, chart_uri = deploy.find_storage_uri(chart)
    assert chart_uri is None  # the chart never renders the served version
    image = chart["spec"]["transformer"]["containers"][0]["image"]
    body = deploy.inference_service_body("titanic", "mlops", "s3://models/titanic/v7", image)

    assert pointer == deploy.find_storage_uri(body)[0]  # the field the deploy step patches is the chart's
    del body["spec"]["predictor"]["model"]["storageUri"]
    assert body["spec"] == chart["spec"]
    assert chart["metadata"]["annotations"].items() <= body["metadata"]["annotations"].items()
    assert body["metadata"]["labels"].items() <= chart["metadata"]["labels"].items()


def test_model_server_image_default_is_the_release_and_the_chart_passes_its_own():
    import pipeline
    from pipeline.settings import Settings

    assert Settings.model_fields["model_server_image"].default == f"titanic-model-server:{pipeline.__version__}"
    rendered = subprocess.run(
        [os.environ.get("HELM", str(ROOT / "bin" / "helm")), "template", "titanic", str(ROOT / "charts" / "titanic"),
         "--kube-version", "1.36.1", "--set", "image.tag=abc123"], capture_output=True, text=True, check=True, timeout=120).stdout
    objects = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(rendered) if o}
    runtime = objects[("ServingRuntime", "titanic-model-server")]["spec"]["containers"][0]["image"]
    assert objects[("ConfigMap", "titanic-config")]["data"]["MODEL_SERVER_IMAGE"] == runtime == "titanic-model-server:abc123"


@pytest.mark.parametrize(
    "predictor, pointer",
    [
        ({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://m/a"}}, "/spec/predictor/model/storageUri"),
        ({"storageUris": [{"uri": "s3://m/a"}], "containers": [{"name": "kserve-container"}]},
         "/spec/predictor/storageUris/0/uri"),
        ({"containers": [{"name": "kserve-container", "env": [{"name": "X", "value": "1"},
                                                               {"name": "STORAGE_URI", "value": "s3://m/a"}]}]},
         "/spec/predictor/containers/0/env/1/value"),
    ],
)
def test_find_storage_uri_follows_each_way_kserve_takes_a_model_location(predictor, pointer):
    assert deploy.find_storage_uri({"metadata": {"name": "t"}, "spec": {"predictor": predictor}}) == (pointer, "s3://m/a")


def test_rollout_patches_only_the_uri_waits_for_ready_and_promotes(settings, models, serving_v1):
    serving_v1.controller = healthy
    before = copy.deepcopy(serving_v1.objects[("mlops", "titanic")])

    result = deploy.run(settings, "v2", "mlops", timeout=5, api=serving_v1.api(), serving_check=None, poll_interval=0.01)

    after = serving_v1.objects[("mlops", "titanic")]
    assert serving_v1.uri() == deploy.model_uri(settings, "v2") == result["storage_uri"]
    assert result["previous_uri"] == deploy.model_uri(settings, "v1")
    assert result["previous_version"] == "v1"
    # the one patch was a JSON patch guarded by a test of the old value; nothing else changed
    patches = [c for c in serving_v1.calls if c[0] == "PATCH"]
    assert patches == [("PATCH", "titanic", "application/json-patch+json")]
    before["spec"]["predictor"]["model"]["storageUri"] = deploy.model_uri(settings, "v2")
    before["spec"]["predictor"]["model"]["env"] = []  # no hash recorded for these hand-registered versions
    assert after["spec"] == before["spec"]
    assert models() == {"v1": "archived", "v2": "production", "v3": "approved", "v4": "rejected"}


def test_status_of_an_older_generation_is_not_taken_for_ready(settings, models, serving_v1):
    """Ready=True left over from v1 must not count: only a status for the patched generation does."""
    lag = {"polls": 0}

    def slow_controller(isvc):
        lag["polls"] += 1
        if lag["polls"] <= 3:
            isvc["status"] = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}
        else:
            _ready(isvc)

    serving_v1.controller = slow_controller
    deploy.run(settings, "v2", "mlops", timeout=5, api=serving_v1.api(), serving_check=None, poll_interval=0.01)
    assert lag["polls"] >= 4
    assert models()["v2"] == "production"


def test_timeout_restores_the_previous_uri_and_leaves_the_registry_unchanged(settings, models, serving_v1):
    serving_v1.controller = broken_for(deploy.model_uri(settings, "v2"))
    started = time.monotonic()

    with pytest.raises(deploy.DeployFailed) as failure:
        deploy.run(settings, "v2", "mlops", timeout=0.5, api=serving_v1.api(), serving_check=None, poll_interval=0.05)

    assert time.monotonic() - started >= 0.5
    message = str(failure.value)
    assert "timed out after 0.5s" in message and "MinimumReplicasUnavailable" in message
    assert f"restored storageUri {deploy.model_uri(settings, 'v1')}" in message
    assert "registry unchanged" in message
    assert isinstance(failure.value, PipelineError)  # the CLI turns it into a non-zero exit
    assert failure.value.exit_code == EXIT_UNAVAILABLE  # a slow rollout, not a failed one: Airflow retries it
    assert serving_v1.uri() == deploy.model_uri(settings, "v1")
    assert [c[0] for c in serving_v1.calls].count("PATCH") == 2  # forward, then back
    assert models() == {"v1": "production", "v2": "approved", "v3": "approved", "v4": "rejected"}


def test_a_failed_model_load_rolls_back_without_waiting_for_the_timeout(settings, models, serving_v1):
    def failing_load(isvc):
        _ready(isvc, ready=False)
        isvc["status"]["modelStatus"] = {"transitionStatus": "BlockedByFailedLoad",
                                         "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "bad pickle"}}

    serving_v1.controller = failing_load
    started = time.monotonic()
    with pytest.raises(deploy.DeployFailed, match="BlockedByFailedLoad: ModelLoadFailed bad pickle") as failure:
        deploy.run(settings, "v3", "mlops", timeout=30, api=serving_v1.api(), serving_check=None, poll_interval=0.01)
    assert failure.value.exit_code == EXIT_REFUSED  # the model does not load: a retry cannot help
    assert time.monotonic() - started < 10
    assert serving_v1.uri() == deploy.model_uri(settings, "v1")
    assert models()["v1"] == "production" and models()["v3"] == "approved"


def test_creates_the_inference_service_when_absent(settings, models, kube):
    kube.controller = healthy
    deploy.run(settings, "v2", "mlops", timeout=5, api=kube.api(), serving_check=None, poll_interval=0.01)

    created = kube.objects[("mlops", settings.model_name)]
    jsonschema.Draft7Validator(json.loads(ISVC_SCHEMA.read_text())).validate(created)
    assert kube.uri(name=settings.model_name) == deploy.model_uri(settings, "v2")
    assert [c[0] for c in kube.calls][:2] == ["GET", "POST"]
    assert models()["v2"] == "production"


def test_redeploying_the_production_version_is_a_no_op(settings, models, serving_v1):
    serving_v1.controller = healthy
    result = deploy.run(settings, "v1", "mlops", timeout=5, api=serving_v1.api(), serving_check=None, poll_interval=0.01)
    assert result["previous_uri"] == result["storage_uri"] == deploy.model_uri(settings, "v1")
    assert [c[0] for c in serving_v1.calls if c[0] != "GET"] == []
    assert models()["v1"] == "production"


@pytest.mark.parametrize("version, error", [("v4", "is rejected"), ("v9", "no version")])
def test_refuses_rejected_or_unknown_versions_before_touching_the_cluster(settings, models, serving_v1, version, error):
    with pytest.raises(PipelineError, match=error):
        deploy.run(settings, version, "mlops", timeout=5, api=serving_v1.api(), serving_check=None, poll_interval=0.01)
    assert serving_v1.calls == []
    assert models()["v1"] == "production"


def test_target_local_only_switches_the_registry(settings, models):
    result = deploy.run(settings, "v3", target="local", api=object())  # any API call would fail on object()
    assert result["previous_version"] == "v1" and result["target"] == "local"
    assert models() == {"v1": "archived", "v2": "approved", "v3": "production", "v4": "rejected"}
    with pytest.raises(ModelNotFound):
        deploy.run(settings, "nope", target="local")


def test_no_transaction_is_held_open_while_waiting_for_the_rollout(settings, models, serving_v1):
    """The wait can last --timeout (300 s): an open transaction meanwhile would block migrations on
    model_versions, and a dropped connection (a Postgres failover) would lose the promote after the
    cluster already serves the new model."""
    seen = []

    def controller(isvc):
        if deploy.find_storage_uri(isvc)[1] == deploy.model_uri(settings, "v2") and not seen:
            other = postgres.connect(settings, migrated=False)
            try:
                with other, other.cursor() as cur:
                    cur.execute("SET LOCAL lock_timeout = '200ms'")
                    try:
                        cur.execute("LOCK TABLE model_versions IN ACCESS EXCLUSIVE MODE")
                        seen.append("free")
                    except Exception as exc:  # LockNotAvailable: someone holds a lock on the table
                        seen.append(f"locked: {type(exc).__name__}")
            finally:
                other.close()
        _ready(isvc)

    serving_v1.controller = controller
    deploy.run(settings, "v2", "mlops", timeout=5, api=serving_v1.api(), serving_check=None, poll_interval=0.01)
    assert seen == ["free"]
    assert models()["v2"] == "production"


def test_a_version_rejected_during_the_rollout_is_not_promoted_and_no_longer_served(settings, models, serving_v1):
    """The gate's verdict can change while the new model rolls out (a re-evaluation): promote re-checks it,
    and the InferenceService goes back to the production version."""
    serving_v1.controller = healthy

    def reject_then_serve(version: str) -> None:
        conn = postgres.connect(settings, migrated=False)
        try:
            registry.set_status(conn, settings.model_name, version, "rejected", "re-evaluated")
        finally:
            conn.close()
        return None  # the new model answers: the rollout itself succeeds

    with pytest.raises(deploy.DeployFailed) as failure:
        deploy.run(settings, "v2", "mlops", timeout=5, api=serving_v1.api(), serving_check=reject_then_serve,
                   poll_interval=0.01)
    assert "version v2 is rejected, no longer approved: not promoted" in str(failure.value)
    assert f"restored storageUri {deploy.model_uri(settings, 'v1')}" in str(failure.value)
    assert serving_v1.uri() == deploy.model_uri(settings, "v1")
    assert models() == {"v1": "production", "v2": "rejected", "v3": "approved", "v4": "rejected"}
