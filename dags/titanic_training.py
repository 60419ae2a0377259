"""Titanic training pipeline: one pod per step, wired together and nothing else.

`ingest` -> `features` -> `train` -> `evaluate` -> `deploy`, each `python -m pipeline <step>` in
the pipeline image, in namespace `mlops` under the `titanic-pipeline` service account. Steps pass
identifiers through XCom (batch id -> feature-set version -> model version), never data.
Configuration comes from ConfigMap `titanic-config` and Secret `titanic-secrets`.
A rejected model makes `evaluate` exit with `EXIT_MODEL_REJECTED`, which marks it skipped, so
`deploy` is skipped rather than failed. Retries follow the step's exit code (pipeline/errors.py): a
refused input, wrong arguments or refused credentials fail the task at once; a service that is
unreachable or timing out, an unexpected error or a killed pod are retried with backoff.

Every step has an `execution_timeout`: with `max_active_runs=1` a hung step would block every
later run. Params are checked against a JSON schema when a run is created, and each param that
reaches a pod's `args` is escaped (`$` -> `$$`), because Kubernetes expands `$(VAR)` in `args`
from the pod's environment, which holds `titanic-secrets`.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from airflow.sdk import DAG, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from kubernetes.client import models as k8s

# The image is set in one place: the Airflow image bakes TITANIC_PIPELINE_IMAGE from make's IMG_TAG (the
# commit) and the Airflow chart values may override it; the default is the project's release tag.
PIPELINE_IMAGE = os.environ.get("TITANIC_PIPELINE_IMAGE", "titanic-pipeline:0.1.0")
NAMESPACE = "mlops"
SERVICE_ACCOUNT = "titanic-pipeline"
CONFIG_MAP = "titanic-config"
SECRET = "titanic-secrets"
# Exit codes of `python -m pipeline <step>` from pipeline/errors.py; a DAG file must not import project code
# (tests compare both). Those a retry cannot cure fail the task at once; every other failure (75: a service
# unreachable or timing out, 70: unexpected, 128+N: killed) takes the task's retries.
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_CREDENTIALS = 77
EXIT_MODEL_REJECTED = 99
NOT_RETRIED = {EXIT_REFUSED: "the step refused its input or the state it found", EXIT_USAGE: "wrong arguments",
               EXIT_CREDENTIALS: "a service refused the credentials"}

# Requests keep the laptop cluster schedulable; limits stop one step from starving the rest.
RESOURCES = {
    "ingest": ("100m", "256Mi", "1", "512Mi"),
    "features": ("100m", "256Mi", "1", "768Mi"),
    "train": ("500m", "512Mi", "2", "1536Mi"),
    "evaluate": ("100m", "256Mi", "1", "768Mi"),
    "deploy": ("50m", "128Mi", "500m", "256Mi"),
}

# Per try, pod start-up (startup_timeout_seconds) included; deploy also waits up to its --timeout for Ready.
EXECUTION_TIMEOUT = {
    "ingest": timedelta(minutes=15),
    "features": timedelta(minutes=15),
    "train": timedelta(minutes=60),
    "evaluate": timedelta(minutes=15),
    "deploy": timedelta(minutes=15),
}
# The XCom sidecar only sleeps until Airflow has read return.json.
XCOM_SIDECAR_RESOURCES = k8s.V1ResourceRequirements(
    requests={"cpu": "1m", "memory": "10Mi"}, limits={"cpu": "50m", "memory": "32Mi"}
)
# End of string in a Param pattern: JSON Schema has no \Z, and Python's `$` also matches before a final newline.
END = r"(?![\s\S])"

POD_SECURITY = k8s.V1PodSecurityContext(
    run_as_non_root=True,
    run_as_user=1000,
    run_as_group=1000,
    fs_group=1000,
    seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
)
CONTAINER_SECURITY = k8s.V1SecurityContext(
    allow_privilege_escalation=False,
    read_only_root_filesystem=True,
    capabilities=k8s.V1Capabilities(drop=["ALL"]),
)


def exit_code(pod: k8s.V1Pod | None, container: str) -> int | None:
    """The exit code of a terminated `container` of `pod`, None while it has none."""
    for status in (pod and pod.status and pod.status.container_statuses) or []:
        if status.name == container and status.state and status.state.terminated:
            return status.state.terminated.exit_code
    return None


class PipelinePodOperator(KubernetesPodOperator):
    """KubernetesPodOperator whose XCom sidecar runs the step's own image, and whose retries follow exit codes.

    The provider's default sidecar is `alpine` from Docker Hub: the one image of a step that kind
    has not preloaded (`kind load`), so an offline cluster fails the first step on ImagePullBackOff.
    The pipeline image is on the node already and has what the sidecar runs (`sh`, `sleep`, `cat`)
    as UID 1000. The provider sets the image only through the Kubernetes connection's
    `xcom_sidecar_container_image` extra, which lives outside the DAG; hence this override.
    """

    def build_pod_request_obj(self, context=None, *, dry_run: bool = False) -> k8s.V1Pod:
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        for container in pod.spec.containers:
            if container.name == PodDefaults.SIDECAR_CONTAINER_NAME:
                container.image, container.image_pull_policy = self.image, self.image_pull_policy
                container.resources = XCOM_SIDECAR_RESOURCES
        return pod

    def cleanup(self, pod, remote_pod, xcom_result=None, context=None):
        """The provider's cleanup (it raises for a failed pod); an exit code of NOT_RETRIED fails the task at once."""
        try:
            super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
        except AirflowSkipException:
            raise
        except AirflowException as exc:
            code = exit_code(remote_pod, self.base_container_name)
            if code in NOT_RETRIED:  # the provider has no exit-code-to-retry option; AirflowFailException skips retries
                raise AirflowFailException(f"exit code {code}, {NOT_RETRIED[code]}: not retried. {exc}") from exc
            raise


def pipeline_step(step: str, arguments: list[str], **kwargs) -> KubernetesPodOperator:
    """One pipeline step as its own pod; `arguments` follow `python -m pipeline <step>`."""
    cpu_req, mem_req, cpu_lim, mem_lim = RESOURCES[step]
    return PipelinePodOperator(
        task_id=step,
        name=f"titanic-{step}",
        namespace=NAMESPACE,
        service_account_name=SERVICE_ACCOUNT,
        image=PIPELINE_IMAGE,
        image_pull_policy="IfNotPresent",  # images arrive with `kind load`, never from a registry
        arguments=[step, *arguments],  # ENTRYPOINT is `python -m pipeline`
        env_from=[
            k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=CONFIG_MAP)),
            k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=SECRET)),
        ],
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": cpu_req, "memory": mem_req},
            limits={"cpu": cpu_lim, "memory": mem_lim},
        ),
        security_context=POD_SECURITY,
        container_security_context=CONTAINER_SECURITY,
        xcom_sidecar_container_security_context=CONTAINER_SECURITY,
        # The root filesystem is read-only; temporary files (joblib, matplotlib) go here.
        volumes=[k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="512Mi"))],
        volume_mounts=[k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
        labels={"app.kubernetes.io/name": "titanic-pipeline", "app.kubernetes.io/component": step},
        # No in_cluster: the provider tries the pod's service account first, then the `kubernetes_default`
        # connection or KUBECONFIG (Airflow outside the cluster, e.g. `make local-platform-up`).
        get_logs=True,
        log_events_on_failure=True,
        do_xcom_push=True,  # the step writes its JSON result to /airflow/xcom/return.json
        on_finish_action="delete_succeeded_pod",  # failed pods stay for `kubectl logs`
        startup_timeout_seconds=300,
        execution_timeout=EXECUTION_TIMEOUT[step],  # on timeout the operator deletes the pod
        **kwargs,
    )


with DAG(
    dag_id="titanic_training",
    description="Train, evaluate and deploy the Titanic survival model, one pod per step.",
    doc_md=__doc__,
    schedule=None,  # manual, REST API, and the drift relay
    catchup=False,
    max_active_runs=1,
    tags=["titanic", "mlops", "training"],
    default_args={
        "owner": "titanic-mlops",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    },
    params={
        "dataset_url": Param(
            "",
            type="string",
            maxLength=2048,
            pattern=rf"^((https?|s3)://[^\s$]+)?{END}",  # no `$` at all: see the module docstring
            description="CSV to ingest (http(s)://, s3://bucket/key; no `$`); empty: DATASET_URL of titanic-config.",
        ),
        "dataset_sha256": Param(
            "",
            type="string",
            pattern=rf"^([0-9a-fA-F]{{64}})?{END}",
            description="Expected sha256 of the CSV (64 hex digits); empty: DATASET_SHA256 of titanic-config.",
        ),
        "min_accuracy": Param(
            0.78, type="number", minimum=0, maximum=1, description="Hold-out accuracy a model needs to deploy."
        ),
        "group_features": Param(
            True, type="boolean",
            description="Train with the group features (fellow travellers' survival, leave-one-out in each fold).",
        ),
    },
) as dag:
    # An empty param falls back to the pod's own environment: Kubernetes expands $(VAR) in args.
    # A given param is escaped ($ -> $$, which Kubernetes turns back into $), so it is never expanded.
    ingest = pipeline_step(
        "ingest",
        [
            "--source",
            "{{ params.dataset_url | replace('$', '$$') or '$(DATASET_URL)' }}",
            "--sha256",
            "{{ params.dataset_sha256 | replace('$', '$$') or '$(DATASET_SHA256)' }}",
        ],
    )
    features = pipeline_step("features", ["--batch", "{{ ti.xcom_pull(task_ids='ingest')['batch_id'] }}"])
    train = pipeline_step(
        "train",
        [
            "--feature-set",
            "{{ ti.xcom_pull(task_ids='features')['feature_set'] }}",
            "--n-jobs",  # the default (all CPUs) would count the node's CPUs, not the pod's limit
            RESOURCES["train"][2],
            # lineage: the relay's record of this run id names the alert that started it
            "--run-id",
            "{{ run_id | replace('$', '$$') }}",
            "--trigger",
            "{{ dag_run.run_type }}",
            "{{ '--group-features' if params.group_features else '--no-group-features' }}",
        ],
    )
    evaluate = pipeline_step(
        "evaluate",
        [
            "--version",
            "{{ ti.xcom_pull(task_ids='train')['version'] }}",
            "--min-accuracy",
            "{{ params.min_accuracy | replace('$', '$$') }}",
        ],
        skip_on_exit_code=EXIT_MODEL_REJECTED,
    )
    deploy = pipeline_step(
        "deploy",
        [
            "--version",
            "{{ ti.xcom_pull(task_ids='train')['version'] }}",
            "--namespace",
            NAMESPACE,
            "--timeout",
            "300",
            "--target",
            "cluster",
        ],
    )

    ingest >> features >> train >> evaluate >> deploy
