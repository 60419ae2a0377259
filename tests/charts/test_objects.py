"""Assertions on the objects the chart renders: names, serving contract, security, credentials, RBAC, routing, monitoring."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from tests.charts import helm

# The image tag the chart uses when none is given (`make deploy` passes the commit-derived IMG_TAG).
IMG_TAG = yaml.safe_load((helm.CHART / "Chart.yaml").read_text())["appVersion"]


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return helm.render()


def container(spec: dict, name: str) -> dict:
    found = [c for c in spec["containers"] if c["name"] == name]
    assert len(found) == 1
    return found[0]


def test_names_follow_the_contract(objects):
    """docs/contracts.md: the names other parts (DAG, deploy step, web app) rely on."""
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {
        ("Deployment", "titanic-webapp"), ("Service", "titanic-webapp"), ("Ingress", "titanic-webapp"),
        ("InferenceService", "titanic"), ("ConfigMap", "titanic-config"), ("Secret", "titanic-secrets"),
        ("ServiceAccount", "titanic-pipeline"), ("ServiceAccount", "titanic-models"),
    } <= names
    assert helm.one(objects, "Deployment", "titanic-webapp")["spec"]["template"]["spec"][
        "containers"][0]["image"] == f"titanic-webapp:{IMG_TAG}"


def test_app_version_is_the_project_version():
    import pipeline

    assert IMG_TAG == pipeline.__version__


def test_inference_service_serving_contract(objects):
    isvc = helm.one(objects, "InferenceService", "titanic")
    runtime = helm.one(objects, "ServingRuntime", "titanic-model-server")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == "titanic-model-server"
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    # The served version is the deploy step's alone: no rendered value that a helm upgrade or rollback could apply.
    assert "storageUri" not in model
    for component, spec in (("predictor", runtime["spec"]), ("transformer", isvc["spec"]["transformer"])):
        c = container(spec, "kserve-container")
        assert c["image"] == f"titanic-model-server:{IMG_TAG}"
        assert c["imagePullPolicy"] == "IfNotPresent"
        assert c["args"][0] == component and c["args"][1:3] == ["--model_name", "titanic"]
        assert {"name": "http1", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
        assert helm.memory_bytes(c["resources"]["requests"]["memory"]) <= 256 * 2**20
    for component in ("predictor", "transformer"):
        assert isvc["spec"][component]["serviceAccountName"] == "titanic-models"
    # The transformer reads drift references (S3) and stored features (Redis) with the pipeline's settings.
    transformer = container(isvc["spec"]["transformer"], "kserve-container")
    assert transformer["envFrom"] == [{"configMapRef": {"name": "titanic-config"}},
                                      {"secretRef": {"name": "titanic-secrets-read"}}]


def test_model_version_value_pins_storage_uri():
    isvc = helm.one(helm.render("--set", "inferenceService.modelVersion=20260102T030405-abc"), "InferenceService", "titanic")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/titanic/20260102T030405-abc"
    # The deploy step finds and patches exactly this field.
    from pipeline.steps.deploy import find_storage_uri
    assert find_storage_uri(isvc) == ("/spec/predictor/model/storageUri", "s3://models/titanic/20260102T030405-abc")


def test_models_service_account_carries_kserve_s3_secret(objects):
    sa = helm.one(objects, "ServiceAccount", "titanic-models")
    secret = helm.one(objects, "Secret", sa["secrets"][0]["name"])
    annotations = secret["metadata"]["annotations"]
    assert annotations["serving.kserve.io/s3-endpoint"] == "seaweedfs-all-in-one.data.svc.cluster.local:8333"
    assert annotations["serving.kserve.io/s3-usehttps"] == "0"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["data"])
    assert secret["data"]["AWS_ACCESS_KEY_ID"] == secret["data"]["S3_ACCESS_KEY"]
    assert secret["data"]["AWS_SECRET_ACCESS_KEY"] == secret["data"]["S3_SECRET_KEY"]


def test_webapp_contract(objects):
    spec = helm.one(objects, "Deployment", "titanic-webapp")["spec"]["template"]["spec"]
    c = container(spec, "webapp")
    assert {"name": "KSERVE_URL", "value": "http://titanic-transformer.mlops.svc.cluster.local"} in c["env"]
    assert c["envFrom"] == [{"configMapRef": {"name": "titanic-config"}}, {"secretRef": {"name": "titanic-secrets-read"}}]
    assert c["ports"][0]["containerPort"] == 8000
    assert c["livenessProbe"]["tcpSocket"]["port"] == "http"
    # Ready = serves pages; /readyz (KServe answers) would keep the first `helm --wait` from ever finishing.
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_config_keys_are_settings_fields(objects):
    """Every key of titanic-config and titanic-secrets reaches pipeline.settings.Settings (or is KServe's)."""
    from pipeline.settings import Settings

    fields = {name.upper() for name in Settings.model_fields}
    config = helm.one(objects, "ConfigMap", "titanic-config")["data"]
    secret = helm.one(objects, "Secret", "titanic-secrets")["data"]
    kserve_only = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD"}
    assert set(config) <= fields, set(config) - fields
    assert set(secret) - kserve_only <= fields, set(secret) - kserve_only - fields
    assert config["KSERVE_URL"] == "http://titanic-transformer.mlops.svc.cluster.local"
    settings = Settings(**{k.lower(): v for k, v in config.items()})
    assert settings.s3_secure is False and settings.model_name == "titanic"
    assert settings.ingest_allow_local_paths is False  # step pods ingest from http(s) or S3 only


@pytest.mark.parametrize("values", [None, *helm.SCENARIOS])
def test_every_container_is_hardened_and_bounded(values):
    for where, spec in helm.pod_specs(helm.render(values=values)):
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], where
            assert c["resources"]["limits"]["memory"], where
            assert not c["image"].endswith(":latest"), where


def _secret_values(objects, name: str = "titanic-secrets") -> dict[str, str]:
    data = helm.one(objects, "Secret", name)["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def test_pods_that_only_read_s3_get_the_read_only_keys():
    """Unpickling under a shared read-write key: the public web app, the transformer and KServe's storage
    initializer get the read-only key pair; only step pods and hook Jobs can write models."""
    objects = helm.render("--set", "credentials.s3ReadAccessKey=reader", "--set", "credentials.s3ReadSecretKey=rs",
                          "--set", "credentials.s3AccessKey=writer", "--set", "credentials.s3SecretKey=ws")
    read, write = _secret_values(objects, "titanic-secrets-read"), _secret_values(objects, "titanic-secrets")
    assert (read["S3_ACCESS_KEY"], read["AWS_SECRET_ACCESS_KEY"]) == ("reader", "rs")
    assert (write["S3_ACCESS_KEY"], write["S3_SECRET_KEY"]) == ("writer", "ws")
    assert {k: v for k, v in read.items() if "S3" not in k and "AWS" not in k} == \
           {k: v for k, v in write.items() if "S3" not in k and "AWS" not in k}
    secret_of = {}
    for where, spec in helm.pod_specs(objects):
        for c in spec["containers"]:
            secret_of[where] = {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
    assert secret_of["Deployment/titanic-webapp"] == {"titanic-secrets-read"}
    assert secret_of["InferenceService/titanic/transformer"] == {"titanic-secrets-read"}
    assert helm.one(objects, "ServiceAccount", "titanic-models")["secrets"] == [{"name": "titanic-secrets-read"}]
    assert all(secret_of[w] == {"titanic-secrets"} for w in secret_of if w.startswith("Job/"))
    # Without read-only keys both Secrets hold the read-write pair (a chart installed without make credentials).
    plain = helm.render("--set", "credentials.s3AccessKey=writer", "--set", "credentials.s3SecretKey=ws")
    assert _secret_values(plain, "titanic-secrets-read")["S3_ACCESS_KEY"] == "writer"


def test_credentials_are_generated_not_literal():
    first, second = _secret_values(helm.render()), _secret_values(helm.render())
    for key in ("POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY", "AIRFLOW_PASSWORD", "ALERT_WEBHOOK_TOKEN"):
        assert first[key] != second[key], f"{key} is the same on two installs: a literal default"
        assert len(first[key]) >= 20, key
    assert first["DATABASE_URL"] == (
        f"postgresql://titanic:{first['POSTGRES_PASSWORD']}@pg-rw.data.svc.cluster.local:5432/titanic")
    defaults = yaml.safe_load((helm.CHART / "values.yaml").read_text())["credentials"]
    assert all(v == "" for v in defaults.values()), defaults


def test_given_credentials_are_used():
    values = _secret_values(helm.render(values="pinned-version-values.yaml"))
    assert values["S3_SECRET_KEY"] == "ci-only-secret-key-value"
    assert values["DATABASE_URL"].startswith("postgresql://titanic:ci-only-db-password@")


def test_existing_secret_replaces_the_generated_one():
    objects = helm.render("--set", "credentials.existingSecret=my-creds")
    assert not [o for o in objects if o["kind"] == "Secret"]
    webapp = helm.one(objects, "Deployment", "titanic-webapp")["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "my-creds"}} in webapp["envFrom"]
    assert helm.one(objects, "ServiceAccount", "titanic-models")["secrets"] == [{"name": "my-creds"}]  # no read-only one given


def test_rbac_is_limited(objects):
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    pipeline = helm.one(objects, "Role", "titanic-pipeline")
    assert pipeline["rules"] == [
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": ["get", "create", "patch", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["titanic-predictor"], "verbs": ["get"]}]
    binding = helm.one(objects, "RoleBinding", "titanic-pipeline")
    assert binding["roleRef"]["name"] == "titanic-pipeline"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "titanic-pipeline", "namespace": "mlops"}]

    launcher = helm.one(objects, "Role", "titanic-airflow-pod-launcher")
    resources = {r for rule in launcher["rules"] for r in rule["resources"]}
    assert resources == {"pods", "pods/log", "pods/exec", "events"}
    assert all(rule["apiGroups"] == [""] for rule in launcher["rules"])
    assert "metadata" not in launcher or "namespace" not in launcher["metadata"]  # release namespace only
    binding = helm.one(objects, "RoleBinding", "titanic-airflow-pod-launcher")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "airflow-scheduler", "namespace": "airflow"}]
    # Pods that need no API access get no token.
    for where, spec in helm.pod_specs(objects):
        if "InferenceService" not in where:
            assert spec.get("automountServiceAccountToken") is False, where


def test_ingress_routes_to_the_webapp(objects):
    ingress = helm.one(objects, "Ingress", "titanic-webapp")
    assert ingress["spec"]["ingressClassName"] == "traefik"
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "titanic.localhost"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = helm.one(objects, "Service", backend["name"])
    port = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]][0]
    deployment = helm.one(objects, "Deployment", "titanic-webapp")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert container_ports[port["targetPort"]] == 8000 and port["port"] == 80


def test_monitors_select_the_right_pods(objects):
    service_monitor = helm.one(objects, "ServiceMonitor", "titanic-webapp")
    service = helm.one(objects, "Service", "titanic-webapp")
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert service_monitor["spec"]["endpoints"][0]["path"] == "/metrics"

    pod_monitor = helm.one(objects, "PodMonitor", "titanic-model-server")
    # KServe labels every pod of an InferenceService with its name.
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": "titanic"}
    for where, spec in helm.pod_specs(objects):
        if where.startswith("InferenceService/"):
            ports = {p["name"] for p in spec["containers"][0]["ports"]}
            assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports, where


def test_network_policies_select_the_pods(objects):
    webapp_labels = helm.one(objects, "Deployment", "titanic-webapp")["spec"]["template"]["metadata"]["labels"]
    policy = helm.one(objects, "NetworkPolicy", "titanic-webapp")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= webapp_labels.items()
    allowed = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "traefik"}}} in allowed
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in allowed
    model = helm.one(objects, "NetworkPolicy", "titanic-model-server")
    assert model["spec"]["podSelector"]["matchLabels"] == {"serving.kserve.io/inferenceservice": "titanic"}
    model_peers = [p.get("podSelector", {}).get("matchLabels", {}) for r in model["spec"]["ingress"] for p in r["from"]]
    assert any(peer.items() <= webapp_labels.items() for peer in model_peers if peer)
    clients = helm.one(objects, "NetworkPolicy", "titanic-clients")
    assert "ingress" not in clients["spec"] and clients["spec"]["policyTypes"] == ["Ingress"]


def test_hook_jobs(objects):
    buckets = helm.one(objects, "Job", "titanic-buckets")
    migrate = helm.one(objects, "Job", "titanic-migrate")
    assert int(buckets["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        migrate["metadata"]["annotations"]["helm.sh/hook-weight"])
    for job in (buckets, migrate):
        c = job["spec"]["template"]["spec"]["containers"][0]
        assert c["image"] == f"titanic-pipeline:{IMG_TAG}"
        assert c["envFrom"][0]["configMapRef"]["name"] == "titanic-config"
    assert migrate["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    command = buckets["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "-c"]
    compile(command[2], "buckets", "exec")  # the one-liner is valid Python
    for field in ("bucket_raw", "bucket_features", "bucket_models", "s3_endpoint", "s3_access_key"):
        assert f"s.{field}" in command[2]


def test_helm_test_pod(objects):
    pod = helm.one(objects, "Pod", "titanic-test-connection")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    compile(script, "helm-test", "exec")
    assert 'web = "http://titanic-webapp.mlops.svc.cluster.local:80"' in script and 'web + "/healthz"' in script
    assert "http://titanic-transformer.mlops.svc.cluster.local" in script


def test_monitoring_slots(objects):
    dashboards = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(dashboards) == len(list((helm.CHART / "files" / "dashboards").glob("*.json"))) >= 1
    for cm in dashboards:
        for text in cm["data"].values():
            assert json.loads(text)["title"]
    rule = helm.one(objects, "PrometheusRule", "titanic")
    alerts = {r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "TitanicFeatureDrift" in alerts
    tuned = helm.one(helm.render("--set-json", "prometheusRule.driftPsiThreshold=0.35"), "PrometheusRule", "titanic")
    assert "0.35" in json.dumps(tuned["spec"])


def test_optional_objects_can_be_switched_off():
    kinds = {o["kind"] for o in helm.render(values="minimal-values.yaml")}
    assert not kinds & {"Ingress", "ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy", "Job"}
    assert {"Deployment", "InferenceService", "Secret"} <= kinds


def test_serving_containers_drain_before_they_stop(objects):
    """A rollout (retraining, upgrade) fails no request: each serving container keeps serving drainSeconds after
    its pod leaves the Service, so kube-proxy stops routing to it before its port closes."""
    isvc = helm.one(objects, "InferenceService", "titanic")["spec"]
    runtime = helm.one(objects, "ServingRuntime", "titanic-model-server")["spec"]
    webapp = helm.one(objects, "Deployment", "titanic-webapp")["spec"]["template"]["spec"]
    for c in (container(webapp, "webapp"), container(runtime, "kserve-container"),
              container(isvc["transformer"], "kserve-container")):
        assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}, c["name"]
    assert all("lifecycle" not in c for o in helm.render("--set", "drainSeconds=0")
               for c in (o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])))
