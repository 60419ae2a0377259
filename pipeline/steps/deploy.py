"""Deploy step: point the InferenceService at a model version, wait until it serves it, then promote it."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any, Callable

from pipeline import registry
from pipeline.errors import PipelineError
from pipeline.settings import Settings
from pipeline.store import postgres

logger = logging.getLogger(__name__)

GROUP, API_VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
DEPLOYABLE = ("approved", "production")
# Used only when the InferenceService is absent (the chart normally creates it); the tag is
# versions.env IMG_TAG, which a test keeps in step.
MODEL_SERVER_IMAGE = "titanic-model-server:0.1.0"
# KServe's modelStatus.transitionStatus values that will not resolve by waiting longer.
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")


class DeployFailed(PipelineError):
    """The InferenceService did not become Ready with the new model; the previous one was restored."""


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
    poll_interval: float = 2.0,
) -> dict:
    """Deploy `version`; `api` is a kubernetes CustomObjectsApi (built from the pod's service account if None)."""
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
        isvc = InferenceService(api or _custom_objects_api(), namespace, settings.model_name,
                                request_timeout=settings.kube_request_timeout)
        result["previous_uri"] = isvc.rollout(uri, timeout=timeout, poll_interval=poll_interval)
        result["namespace"] = namespace
    # Only now, with the new model serving, does the registry change.
    conn = postgres.connect(settings)
    try:
        result["previous_version"] = registry.promote(conn, settings.model_name, version)
    finally:
        conn.close()
    logger.info("model %s version %s is in production (%s)", settings.model_name, version, target)
    return result


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


def inference_service_body(name: str, namespace: str, uri: str, image: str = MODEL_SERVER_IMAGE,
                           log_level: str = "INFO") -> dict:
    """The InferenceService as charts/titanic renders it; used only to create it when it is absent."""

    def component(role: str) -> dict:
        # STORAGE_URI on the custom predictor makes KServe's storage initializer fetch the model.
        storage = [{"name": "STORAGE_URI", "value": uri}] if role == "predictor" else []
        # The transformer reads drift references (S3) and stored features (Redis) with the step pods' settings.
        settings_from = {"envFrom": [{"configMapRef": {"name": "titanic-config"}},
                                     {"secretRef": {"name": "titanic-secrets"}}]} if role == "transformer" else {}
        return {
            "minReplicas": 1,
            "maxReplicas": 1,
            "serviceAccountName": "titanic-models",
            "securityContext": POD_SECURITY,
            "containers": [
                {
                    "name": "kserve-container",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "args": [role, "--model_name", name],
                    "ports": [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}],
                    **settings_from,
                    "env": [*storage, {"name": "MODEL_NAME", "value": name}, {"name": "LOG_LEVEL", "value": log_level}],
                    "readinessProbe": {"httpGet": {"path": f"/v1/models/{name}", "port": "http1"},
                                       "periodSeconds": 5, "failureThreshold": 3},
                    "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http1"},
                                      "periodSeconds": 20, "timeoutSeconds": 3, "failureThreshold": 3},
                    "resources": RESOURCES[role],
                    "securityContext": CONTAINER_SECURITY,
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        }

    return {
        "apiVersion": f"{GROUP}/{API_VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "titanic", "app.kubernetes.io/component": "model-server",
                       "app.kubernetes.io/part-of": "titanic-mlops"},
            "annotations": {"serving.kserve.io/deploymentMode": "Standard", "serving.kserve.io/autoscalerClass": "none"},
        },
        "spec": {"predictor": component("predictor"), "transformer": component("transformer")},
    }


def find_storage_uri(isvc: dict) -> tuple[str, str]:
    """(JSON pointer, value) of the predictor's model location, wherever the spec keeps it.

    The chart may use `predictor.model.storageUri`, `predictor.storageUris[0].uri` or the
    `STORAGE_URI` env of the custom `kserve-container`; the deploy step patches exactly that field.
    """
    predictor = isvc.get("spec", {}).get("predictor", {})
    if predictor.get("model", {}).get("storageUri"):
        return "/spec/predictor/model/storageUri", predictor["model"]["storageUri"]
    if predictor.get("storageUris"):
        return "/spec/predictor/storageUris/0/uri", predictor["storageUris"][0]["uri"]
    for i, container in enumerate(predictor.get("containers") or []):
        for j, env in enumerate(container.get("env") or []):
            if env.get("name") == "STORAGE_URI":
                return f"/spec/predictor/containers/{i}/env/{j}/value", env.get("value", "")
    raise PipelineError(f"InferenceService {isvc['metadata']['name']} has no predictor storageUri to patch")


def readiness(isvc: dict) -> tuple[bool, str | None]:
    """(ready, failure message): Ready only once the controller has seen the current generation."""
    status = isvc.get("status") or {}
    if status.get("observedGeneration", 0) < isvc["metadata"].get("generation", 0):
        return False, None
    model_status = status.get("modelStatus") or {}
    if model_status.get("transitionStatus") in FAILED_TRANSITIONS:
        info = model_status.get("lastFailureInfo") or {}
        return False, f"{model_status['transitionStatus']}: {info.get('reason', '')} {info.get('message', '')}".strip()
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return ready, None


class InferenceService:
    """The few calls the deploy step makes on one InferenceService."""

    def __init__(self, api: Any, namespace: str, name: str, clock: Callable[[], float] = time.monotonic, *,
                 request_timeout: float):
        self.api, self.namespace, self.name, self.clock = api, namespace, name, clock
        self.request_timeout = request_timeout  # seconds per API call: the client's default is to wait forever

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

    def set_uri(self, path: str, expected: str, uri: str) -> dict:
        # JSON patch with a `test`: only this one field changes, and only if nobody changed it meanwhile.
        ops = [{"op": "test", "path": path, "value": expected}, {"op": "replace", "path": path, "value": uri}]
        return self.api.patch_namespaced_custom_object(
            GROUP, API_VERSION, self.namespace, PLURAL, self.name, ops, _content_type="application/json-patch+json",
            _request_timeout=self.request_timeout,
        )

    def rollout(self, uri: str, timeout: float, poll_interval: float) -> str | None:
        """Serve `uri`; returns the previous URI. On failure restores it and raises DeployFailed."""
        current = self.get()
        if current is None:
            logger.info("creating InferenceService %s/%s with %s", self.namespace, self.name, uri)
            body = inference_service_body(self.name, self.namespace, uri)
            current = self.api.create_namespaced_custom_object(
                GROUP, API_VERSION, self.namespace, PLURAL, body, _request_timeout=self.request_timeout
            )
            path, previous = find_storage_uri(current)[0], None
        else:
            path, previous = find_storage_uri(current)
            if previous != uri:
                logger.info("patching InferenceService %s/%s: %s -> %s", self.namespace, self.name, previous, uri)
                current = self.set_uri(path, previous, uri)
        failure = self.wait_ready(uri, current["metadata"].get("generation", 0), timeout, poll_interval)
        if failure is None:
            return previous
        if previous is not None:
            restored = self.restore(path, uri, previous)
        else:
            restored = "it was created by this deploy, so there is no previous model to restore"
        raise DeployFailed(
            f"InferenceService {self.namespace}/{self.name} did not become Ready with {uri}: {failure}; "
            f"{restored}; model registry unchanged"
        )

    def restore(self, path: str, uri: str, previous: str) -> str:
        """Put `previous` back unless someone else has changed the URI meanwhile; says what happened."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.set_uri(path, uri, previous)
        except ApiException as exc:
            if exc.status != 422:  # 422: the `test` op failed, the URI is no longer ours to restore
                raise
            return "did not restore the previous storageUri: it was changed by someone else"
        return f"restored storageUri {previous}"

    def wait_ready(self, uri: str, generation: int, timeout: float, poll_interval: float) -> str | None:
        """None once Ready at `generation` or later with `uri`, else why not (failure or timeout)."""
        deadline = self.clock() + timeout
        last = "no status yet"
        while True:
            isvc = self.get()
            if isvc is None:
                return "it was deleted while waiting"
            if isvc["metadata"].get("generation", 0) >= generation and find_storage_uri(isvc)[1] != uri:
                return f"its storageUri was changed to {find_storage_uri(isvc)[1]} by someone else"
            ready, failure = readiness(isvc)
            if ready:
                logger.info("InferenceService %s/%s is Ready with %s", self.namespace, self.name, uri)
                return None
            if failure:
                return failure
            last = _ready_message(isvc) or last
            if self.clock() >= deadline:
                return f"timed out after {timeout:g}s (last Ready condition: {last})"
            time.sleep(poll_interval)


def _ready_message(isvc: dict) -> str | None:
    for condition in (isvc.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return f"{condition.get('status')} {condition.get('reason', '')} {condition.get('message', '')}".strip()
    return None


def _custom_objects_api():
    """CustomObjectsApi from the pod's service account, or the local kubeconfig outside a cluster."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()
