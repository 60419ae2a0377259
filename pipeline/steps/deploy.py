"""Deploy step: point the InferenceService at a model version, wait until it serves it, then promote it."""

from __future__ import annotations

import argparse
import functools
import logging
import time
from typing import Any, Callable

from pipeline import registry
from pipeline.errors import EXIT_UNAVAILABLE, PipelineError
from pipeline.model import MODEL_FILE
from pipeline.settings import Settings
from pipeline.store import postgres

logger = logging.getLogger(__name__)

GROUP, API_VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
DEPLOYABLE = ("approved", "production")
# KServe's modelStatus.transitionStatus values that will not resolve by waiting longer.
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")
# Where KServe writes the storageUri into the predictor Deployment's pod template (its storage initializer reads it).
SOURCE_URI_ANNOTATION = "internal.serving.kserve.io/storage-initializer-sourceuri"


class DeployFailed(PipelineError):
    """The InferenceService did not become Ready with the new model; the previous one was restored."""


class DeployTimedOut(DeployFailed):
    """Not Ready within --timeout, with no failure reported (a slow node, a pod still starting): the previous
    model was restored, and a retry may succeed, so Airflow retries it (EX_TEMPFAIL)."""

    exit_code = EXIT_UNAVAILABLE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", required=True, help="model version to deploy (approved or already production)")
    parser.add_argument("--namespace", default="mlops", help="namespace of the InferenceService")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for Ready before rolling back")
    parser.add_argument(
        "--target",
        choices=("cluster", "local"),
        default="cluster",
        help="cluster: patch the InferenceService, then promote; local: only promote in the registry",
    )


def run(
    settings: Settings,
    version: str,
    namespace: str = "mlops",
    timeout: float = 300,
    target: str = "cluster",
    *,
    api: Any = None,
    apps: Any = None,
    serving_check: Callable[[str], str | None] | None | str = "http",
    poll_interval: float = 2.0,
) -> dict:
    """Deploy `version`. `api`/`apps`: kubernetes CustomObjectsApi/AppsV1Api (from the pod's service account, or
    the kubeconfig, when None); `serving_check(version)` says what the served model answers (None: `version`)."""
    conn = postgres.connect(settings)
    try:
        entry = registry.get(conn, settings.model_name, version)
    finally:
        # closed before the rollout: no transaction (and no connection to lose) during a wait of --timeout
        conn.close()
    if entry["status"] not in DEPLOYABLE:
        raise PipelineError(
            f"model {settings.model_name} version {version} is {entry['status']}; only {' or '.join(DEPLOYABLE)} "
            "versions are deployed"
        )
    uri = model_uri(settings, version)
    result = {"version": version, "target": target, "storage_uri": uri, "previous_uri": None}
    if target == "cluster":
        if api is None:
            api, apps = kube_apis()
        if serving_check == "http":
            serving_check = functools.partial(answered_version, settings)
        isvc = InferenceService(api, namespace, settings.model_name, request_timeout=settings.kube_request_timeout,
                                apps=apps, serving_check=serving_check, image=settings.model_server_image)
        sha256 = registry.recorded_sha256(entry, MODEL_FILE)
        result["previous_uri"] = isvc.rollout(uri, version, sha256, timeout=timeout, poll_interval=poll_interval)
        result["namespace"] = namespace
    # Only now, with the new model serving, does the registry change.
    conn = postgres.connect(settings)
    try:
        result["previous_version"] = registry.promote(conn, settings.model_name, version)
    except registry.NotApproved as exc:  # rejected while rolling out: the cluster must not keep serving it
        if target != "cluster":
            raise
        raise DeployFailed(f"{exc}; InferenceService {namespace}/{settings.model_name}: {isvc.undo(uri)}") from exc
    finally:
        conn.close()
    logger.info("model %s version %s is in production (%s)", settings.model_name, version, target)
    return result


# One passenger of the training data: the deploy step asks the model server which version answers.
PROBE_PASSENGER = {"Pclass": 3, "Name": "Braund, Mr. Owen Harris", "Sex": "male", "Age": 22, "SibSp": 1,
                   "Parch": 0, "Ticket": "A/5 21171", "Fare": 7.25, "Cabin": "", "Embarked": "S"}


def answered_version(settings: Settings, version: str) -> str | None:
    """None when a prediction through KSERVE_URL comes from `version`; else what came back instead."""
    import requests

    url = f"{settings.kserve_url.rstrip('/')}/v1/models/{settings.model_name}:predict"
    try:
        response = requests.post(url, json={"instances": [PROBE_PASSENGER]}, timeout=5)
    except requests.RequestException as exc:
        return f"the model server does not answer ({type(exc).__name__})"
    if response.status_code != 200:
        return f"the model server answers {response.status_code}"
    served = response.json().get("model_version")
    return None if served == version else f"the model server still answers with version {served}"


def model_uri(settings: Settings, version: str) -> str:
    """Where train writes a version, and so where the predictor's storage initializer reads it."""
    return f"s3://{settings.bucket_models}/{settings.model_name}/{version}"


# Mirrors charts/titanic (inferenceService.* and the security contexts of values.yaml); a test
# renders the chart with helm and compares, so the two cannot drift apart.
RESOURCES = {
    "predictor": {"requests": {"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "64Mi"},
                  "limits": {"cpu": "1", "memory": "768Mi", "ephemeral-storage": "512Mi"}},
    "transformer": {"requests": {"cpu": "50m", "memory": "192Mi", "ephemeral-storage": "64Mi"},
                    "limits": {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "512Mi"}},
}
POD_SECURITY = {"fsGroup": 1000, "runAsGroup": 1000, "runAsNonRoot": True, "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False,
                      "readOnlyRootFilesystem": True, "runAsGroup": 1000, "runAsNonRoot": True, "runAsUser": 1000,
                      "seccompProfile": {"type": "RuntimeDefault"}}


def inference_service_body(name: str, namespace: str, uri: str, image: str, sha256: str | None = None,
                           log_level: str = "INFO") -> dict:
    """The InferenceService as charts/titanic renders it (plus the served model); used only to create it when
    it is absent. The predictor's container comes from the chart's ServingRuntime `<name>-model-server`."""
    pod = {"serviceAccountName": "titanic-models", "securityContext": POD_SECURITY,
           "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]}
    model = {"modelFormat": {"name": f"{name}-onnx-sklearn"}, "runtime": f"{name}-model-server", "protocolVersion": "v1",
             "storageUri": uri, "resources": RESOURCES["predictor"], **_model_env(sha256)}
    transformer = {
        "name": "kserve-container",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        # the chart's value inferenceService.transformer.predictorTimeoutSeconds (default 5, measured in #16)
        "args": ["transformer", "--model_name", name, "--predictor_request_timeout_seconds", "5"],
        "ports": [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}],
        # The transformer reads drift references (S3) and stored features (Redis) with the step pods' settings.
        "envFrom": [{"configMapRef": {"name": "titanic-config"}}, {"secretRef": {"name": "titanic-secrets-read"}}],
        "env": [{"name": "MODEL_NAME", "value": name}, {"name": "LOG_LEVEL", "value": log_level}],
        "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": "http1"}, "periodSeconds": 5,
                         "failureThreshold": 60},
        "readinessProbe": {"httpGet": {"path": f"/v1/models/{name}", "port": "http1"},
                           "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http1"},
                          "periodSeconds": 20, "timeoutSeconds": 3, "failureThreshold": 3},
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},  # the chart's drainSeconds
        "resources": RESOURCES["transformer"],
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": f"{GROUP}/{API_VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "titanic", "app.kubernetes.io/component": "model-server",
                       "app.kubernetes.io/part-of": "titanic-mlops", "networking.kserve.io/visibility": "cluster-local",
                       # Helm's ownership marks: the next `make deploy` adopts it instead of refusing to.
                       "app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"serving.kserve.io/deploymentMode": "Standard", "serving.kserve.io/autoscalerClass": "none",
                            "meta.helm.sh/release-name": "titanic", "meta.helm.sh/release-namespace": namespace},
        },
        "spec": {"predictor": {"minReplicas": 1, "maxReplicas": 1, **pod, "model": model},
                 "transformer": {"minReplicas": 1, "maxReplicas": 1, **pod, "containers": [transformer]}},
    }


def _model_env(sha256: str | None) -> dict:
    """The predictor's MODEL_SHA256 (checked before unpickling), beside storageUri: also never rendered by Helm."""
    return {"env": [{"name": "MODEL_SHA256", "value": sha256}]} if sha256 else {}


def find_storage_uri(isvc: dict) -> tuple[str, str | None]:
    """(JSON pointer, value) of the predictor's model location, wherever the spec keeps it.

    The chart uses `predictor.model.storageUri` (None before the first deploy); `predictor.storageUris[0].uri`
    and the `STORAGE_URI` env of a custom `kserve-container` are KServe's other ways, patched the same way.
    """
    predictor = isvc.get("spec", {}).get("predictor", {})
    if "model" in predictor:  # no storageUri yet: a fresh install, the chart never renders one
        return "/spec/predictor/model/storageUri", predictor["model"].get("storageUri")
    if predictor.get("storageUris"):
        return "/spec/predictor/storageUris/0/uri", predictor["storageUris"][0]["uri"]
    for i, container in enumerate(predictor.get("containers") or []):
        for j, env in enumerate(container.get("env") or []):
            if env.get("name") == "STORAGE_URI":
                return f"/spec/predictor/containers/{i}/env/{j}/value", env.get("value", "")
    raise PipelineError(f"InferenceService {isvc['metadata']['name']} has no predictor storageUri to patch")


def readiness(isvc: dict) -> tuple[bool, str | None]:
    """(ready, failure message): Ready only once the controller has seen the current generation.

    In KServe's Standard (raw Deployment) mode status.observedGeneration is the predictor Deployment's, not the
    InferenceService's (found on a real KServe 0.20 controller: it stays 1 while the generation grows); there the
    predictor Deployment's pod template (InferenceService.predictor_rollout) proves the new spec was seen."""
    status = isvc.get("status") or {}
    if status.get("deploymentMode") != "Standard" and \
            status.get("observedGeneration", 0) < isvc["metadata"].get("generation", 0):
        return False, None
    model_status = status.get("modelStatus") or {}
    if model_status.get("transitionStatus") in FAILED_TRANSITIONS:
        info = model_status.get("lastFailureInfo") or {}
        return False, f"{model_status['transitionStatus']}: {info.get('reason', '')} {info.get('message', '')}".strip()
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return ready, None


class InferenceService:
    """The few calls the deploy step makes on one InferenceService (and the predictor Deployment KServe makes)."""

    def __init__(self, api: Any, namespace: str, name: str, clock: Callable[[], float] = time.monotonic, *,
                 request_timeout: float, apps: Any = None, serving_check: Callable[[str], str | None] | None = None,
                 image: str = ""):
        self.api, self.namespace, self.name, self.clock = api, namespace, name, clock
        self.request_timeout = request_timeout  # seconds per API call: the client's default is to wait forever
        # apps (AppsV1Api) and serving_check are skipped when None: unit tests against a fake KServe API.
        self.apps, self.serving_check, self.image = apps, serving_check, image

    def get(self) -> dict | None:
        # kubernetes is imported lazily: it is the `deploy` extra, and `--target local` runs without it.
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(
                GROUP, API_VERSION, self.namespace, PLURAL, self.name, _request_timeout=self.request_timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _patch(self, ops: list[dict]) -> dict:
        return self.api.patch_namespaced_custom_object(
            GROUP, API_VERSION, self.namespace, PLURAL, self.name, ops, _content_type="application/json-patch+json",
            _request_timeout=self.request_timeout,
        )

    def set_uri(self, path: str, expected: str | None, uri: str | None, env: list | None = None, *,
                current: dict | None = None) -> dict:
        """JSON patch guarded by a `test`: only this field (and the model's env: its hash) changes, and only if
        nobody changed it meanwhile (else 422). `expected`/`uri` None: the field is absent before/after.
        `current`: the InferenceService as the caller read it (else read now), for the guard of an absent field."""
        parent = path.rsplit("/", 1)[0]
        if expected is None:  # `test` cannot name an absent field: test the object that would hold it
            ops = [{"op": "test", "path": parent, "value": _at(current or self.get() or {}, parent)}]
        else:
            ops = [{"op": "test", "path": path, "value": expected}]
        ops.append({"op": "add", "path": path, "value": uri} if uri is not None else {"op": "remove", "path": path})
        if parent == "/spec/predictor/model" and env is not None:
            ops.append({"op": "add", "path": f"{parent}/env", "value": env})
        return self._patch(ops)

    def rollout(self, uri: str, version: str, sha256: str | None, timeout: float, poll_interval: float) -> str | None:
        """Serve `uri`; returns the previous URI. On any failure restores it and raises DeployFailed."""
        current = self.get()
        if current is None:
            logger.info("creating InferenceService %s/%s with %s", self.namespace, self.name, uri)
            body = inference_service_body(self.name, self.namespace, uri, self.image, sha256)
            current = self.api.create_namespaced_custom_object(
                GROUP, API_VERSION, self.namespace, PLURAL, body, _request_timeout=self.request_timeout
            )
            path, previous, previous_env, created = find_storage_uri(current)[0], None, None, True
        else:
            (path, previous), created = find_storage_uri(current), False
            previous_env = (current["spec"]["predictor"].get("model") or {}).get("env", [])
            if previous != uri:
                logger.info("patching InferenceService %s/%s: %s -> %s", self.namespace, self.name, previous, uri)
                current = self.set_uri(path, previous, uri, _model_env(sha256).get("env", []), current=current)
        try:
            outcome = self.wait_ready(uri, version, current["metadata"].get("generation", 0), timeout, poll_interval)
        except Exception as exc:  # an API or network error while waiting: the outcome is unknown, so undo
            outcome = DeployFailed, f"{type(exc).__name__} while waiting: {exc}"
        self._replaced = (path, previous, previous_env, created)  # what `undo` puts back
        if outcome is None:
            return previous
        error, failure = outcome
        raise error(
            f"InferenceService {self.namespace}/{self.name} did not serve {uri}: {failure}; "
            f"{self.undo(uri)}; model registry unchanged"
        )

    def undo(self, uri: str) -> str:
        """Put back what the last `rollout` replaced with `uri`; says what happened."""
        path, previous, env, created = self._replaced
        if created:
            return "it was created by this deploy, so there is no previous model to restore"
        if previous == uri:
            return "it already pointed there before this deploy, so nothing to restore"
        return self.restore(path, uri, previous, env)

    def restore(self, path: str, uri: str, previous: str | None, env: list | None) -> str:
        """Put `previous` (and its env) back unless someone else has changed the URI meanwhile; says what happened."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.set_uri(path, uri, previous, env)
        except ApiException as exc:
            if exc.status != 422:  # 422: the `test` op failed, the URI is no longer ours to restore
                return f"could not restore the previous storageUri ({exc.status} {exc.reason})"
            return "did not restore the previous storageUri: it was changed by someone else"
        except Exception as exc:  # the API is unreachable: say so, the registry still names the old version
            return f"could not restore the previous storageUri ({type(exc).__name__})"
        return f"restored storageUri {previous}" if previous else "removed the new storageUri again"

    def wait_ready(self, uri: str, version: str, generation: int, timeout: float,
                   poll_interval: float) -> tuple[type[DeployFailed], str] | None:
        """None once the new model serves: the InferenceService Ready at `generation` with `uri`, the predictor
        Deployment fully rolled out (Ready alone stays True while the old pod serves), and the model server
        answering with `version`. Else the error to raise (DeployTimedOut when waiting longer might help) and why."""
        deadline = self.clock() + timeout
        last = "no status yet"
        while True:
            isvc = self.get()
            if isvc is None:
                return DeployFailed, "it was deleted while waiting"
            if isvc["metadata"].get("generation", 0) >= generation and find_storage_uri(isvc)[1] != uri:
                return DeployFailed, f"its storageUri was changed to {find_storage_uri(isvc)[1]} by someone else"
            ready, failure = readiness(isvc)
            rollout = self.predictor_rollout(uri)
            # The model status can still be the previous pods' (found on a real node: the crash-looping predictor
            # of an InferenceService without a model said BlockedByFailedLoad while the new pod loaded fine):
            # a failure counts once the predictor Deployment runs only pods of the new spec, and they fail.
            if failure and (rollout is None or self.predictor_failing(uri)):
                return DeployFailed, failure
            if ready:
                waiting = rollout or (self.serving_check and self.serving_check(version))
                if not waiting:
                    logger.info("InferenceService %s/%s serves %s", self.namespace, self.name, uri)
                    return None
                last = waiting
            else:
                last = _ready_message(isvc) or last
            if self.clock() >= deadline:
                return DeployTimedOut, f"timed out after {timeout:g}s (last: {last})"
            time.sleep(poll_interval)

    def _predictor(self):
        from kubernetes.client.exceptions import ApiException

        try:
            return self.apps.read_namespaced_deployment(f"{self.name}-predictor", self.namespace,
                                                        _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def predictor_failing(self, uri: str) -> bool:
        """True when every predictor pod is of the spec that loads `uri` and not all are available (or when the
        Deployment is not watched): then a failed model status is about them, not about the previous pods."""
        if self.apps is None:
            return True
        d = self._predictor()
        return d is not None and _loads(d) == uri and (d.status.observed_generation or 0) >= d.metadata.generation \
            and (d.status.replicas or 0) == (d.status.updated_replicas or 0) \
            and (d.status.available_replicas or 0) < (d.spec.replicas or 0)

    def predictor_rollout(self, uri: str | None = None) -> str | None:
        """None when the predictor Deployment loads `uri` (its pod template says so) and has rolled out completely
        (as `kubectl rollout status`), else why not."""
        if self.apps is None:
            return None
        d = self._predictor()
        if d is None:
            return "the predictor Deployment does not exist yet"
        loads = _loads(d)
        if uri is not None and loads != uri:
            return f"the predictor Deployment loads {loads}, not {uri} yet"
        want, status = d.spec.replicas or 0, d.status
        if (status.observed_generation or 0) < d.metadata.generation:
            return "the predictor Deployment's new spec is not observed yet"
        if (status.updated_replicas or 0) < want or (status.replicas or 0) > (status.updated_replicas or 0):
            return f"the predictor rollout has {status.updated_replicas or 0} of {want} new pods, {status.replicas} in all"
        if (status.available_replicas or 0) < want:
            return f"{status.available_replicas or 0} of {want} new predictor pods are available"
        return None


def _loads(deployment) -> str | None:
    """The storageUri KServe wrote into a predictor Deployment's pod template."""
    meta = deployment.spec.template.metadata
    return ((meta and meta.annotations) or {}).get(SOURCE_URI_ANNOTATION)


def _at(document: dict, pointer: str) -> Any:
    for key in pointer.strip("/").split("/"):
        document = document[int(key)] if isinstance(document, list) else document[key]
    return document


def _ready_message(isvc: dict) -> str | None:
    for condition in (isvc.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return f"{condition.get('status')} {condition.get('reason', '')} {condition.get('message', '')}".strip()
    return None


def _load_config(kubeconfig: str | None = None) -> None:
    """The pod's service account in a cluster; the kubeconfig (KUBECONFIG, or `kubeconfig`) outside."""
    from kubernetes import config

    if kubeconfig is None:
        try:
            config.load_incluster_config()
            return
        except config.ConfigException:
            pass
    config.load_kube_config(config_file=kubeconfig)


def kube_apis(kubeconfig: str | None = None):
    """(CustomObjectsApi, AppsV1Api) on one loaded configuration."""
    from kubernetes import client

    _load_config(kubeconfig)
    return client.CustomObjectsApi(), client.AppsV1Api()


def custom_objects_api(kubeconfig: str | None = None):
    return kube_apis(kubeconfig)[0]
