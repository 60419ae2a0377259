"""The platform around the chart: upstream values files, plain manifests, kind-config.yaml and `make cluster-up`."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml

from tests.charts import helm
from tests.inputs import CHARTS_DIR

PINS = helm.versions()
VALUES_FILES = sorted(helm.UPSTREAM_VALUES.glob("*.yaml"))
MANIFEST_FILES = sorted(helm.MANIFESTS.glob("*.yaml"))
GiB = 2**30
# Pods of the kind node itself (requests of the kubeadm/kind defaults): etcd 100Mi, apiserver 0, CoreDNS 2x70Mi,
# kindnet 50Mi, kube-proxy 0, local-path 0; the controller-manager and scheduler request no memory.
KIND_SYSTEM_REQUESTS = (100 + 2 * 70 + 50) * 2**20


def load(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def walk(node, path=()):
    """Every (path, value) in a YAML tree."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, path + (str(key),))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, path + (str(i),))


@pytest.mark.parametrize("path", VALUES_FILES + MANIFEST_FILES, ids=lambda p: p.name)
def test_parses_and_sets_resources(path):
    docs = load(path)
    assert docs
    requests = [v for p, v in walk(docs) if p[-2:] == ("requests", "memory")]
    if path.name != "namespaces.yaml":
        assert requests, f"{path.name} sets no memory requests: upstream defaults do not fit a laptop"


def test_no_bitnami_anywhere():
    for path in [*VALUES_FILES, *MANIFEST_FILES, *helm.CHART.rglob("*.yaml"), helm.REPO / "make" / "cluster.mk"]:
        assert "bitnami" not in path.read_text().lower(), path


def test_images_are_pinned():
    """Every image named in values files and manifests carries a fixed tag (no latest, no floating default)."""
    for path in [*VALUES_FILES, *MANIFEST_FILES]:
        for p, value in walk(load(path)):
            if p and p[-1] == "image" and isinstance(value, str):
                assert re.search(r":[\w.-]+$", value) and not value.endswith(":latest"), (path.name, value)
            if p and p[-1] == "tag":
                assert value and value != "latest", (path.name, p)


def test_manifest_images_match_versions_env():
    minio = [o for o in load(helm.MANIFESTS / "minio.yaml") if o["kind"] == "Deployment"][0]
    assert minio["spec"]["template"]["spec"]["containers"][0]["image"] == PINS["MINIO_IMAGE"]
    pg = load(helm.MANIFESTS / "postgres-cluster.yaml")[0]
    assert pg["spec"]["imageName"] == PINS["POSTGRES_IMAGE"] and pg["spec"]["instances"] == 1


def test_manifests_validate_offline(tmp_path):
    manifest = tmp_path / "manifests.yaml"
    manifest.write_text(yaml.safe_dump_all([o for p in MANIFEST_FILES for o in load(p)]))
    report = json.loads(helm.kubeconform(manifest).stdout)
    assert report["summary"]["invalid"] == report["summary"]["errors"] == report["summary"]["skipped"] == 0, report


def values(name):
    return load(helm.UPSTREAM_VALUES / name)[0]


def test_kube_prometheus_stack_values():
    kps = values("kube-prometheus-stack.yaml")
    assert kps["fullnameOverride"] == "kps"
    spec = kps["prometheus"]["prometheusSpec"]
    for selector in ("serviceMonitor", "podMonitor", "rule", "probe", "scrapeConfig"):
        assert spec[f"{selector}SelectorNilUsesHelmValues"] is False
    for target in ("kubeControllerManager", "kubeScheduler", "kubeEtcd", "kubeProxy"):
        assert kps[target]["enabled"] is False
    config = kps["alertmanager"]["config"]
    receivers = {r["name"]: r for r in config["receivers"]}
    assert config["route"]["receiver"] == "null" and "null" in receivers
    route = [r for r in config["route"]["routes"] if r["receiver"] == "titanic-retrain"][0]
    assert route["matchers"] == ['alertname="TitanicFeatureDrift"']
    hook = receivers["titanic-retrain"]["webhook_configs"][0]
    assert hook["url"] == "http://titanic-webapp.mlops.svc.cluster.local/hooks/alertmanager"
    secret = kps["alertmanager"]["alertmanagerSpec"]["secrets"][0]
    # The operator mounts each listed Secret at /etc/alertmanager/secrets/<name>/; make credentials writes key "token".
    assert hook["http_config"]["authorization"]["credentials_file"] == f"/etc/alertmanager/secrets/{secret}/token"
    assert f"{secret},--from-literal=token=" in (helm.REPO / "make" / "cluster.mk").read_text()
    sidecar = kps["grafana"]["sidecar"]["dashboards"]
    assert (sidecar["label"], sidecar["labelValue"], sidecar["searchNamespace"]) == ("grafana_dashboard", "1", "ALL")


def test_kserve_values():
    kserve = values("kserve-resources.yaml")["kserve"]
    assert kserve["controller"]["deploymentMode"] == "Standard"
    assert kserve["controller"]["gateway"]["ingressGateway"]["className"] == "traefik"
    # KServe's default of 2Gi per component must be overridden.
    assert helm.memory_bytes(kserve["inferenceservice"]["resources"]["requests"]["memory"]) <= 256 * 2**20
    # The controller's kube-rbac-proxy sidecar requests 300Mi unless overridden.
    assert helm.memory_bytes(kserve["controller"]["rbacProxy"]["resources"]["requests"]["memory"]) <= 64 * 2**20


def test_airflow_values():
    airflow = values("airflow.yaml")
    assert airflow["executor"] == "LocalExecutor"
    assert airflow["defaultAirflowRepository"] == "titanic-airflow"
    assert airflow["airflowVersion"] == PINS["AIRFLOW_VERSION"]
    assert f"--set defaultAirflowTag={helm.image_tag()}" in make("-n", "airflow-install")  # the commit's images
    assert airflow["postgresql"]["enabled"] is False and airflow["redis"]["enabled"] is False
    assert airflow["data"]["metadataSecretName"] == "airflow-metadata"
    assert airflow["workers"]["persistence"]["enabled"] is False
    assert airflow["dags"]["persistence"]["enabled"] is False and airflow["dags"]["gitSync"]["enabled"] is False
    assert not [p for p, _ in walk(airflow) if p and p[-1] in ("extraVolumes", "extraVolumeMounts")]
    # The project chart binds this ServiceAccount to its pod-launcher Role.
    chart_values = yaml.safe_load((helm.CHART / "values.yaml").read_text())
    assert airflow["scheduler"]["serviceAccount"]["name"] == chart_values["airflow"]["serviceAccount"]


def test_airflow_admin_user_is_the_relays():
    """The user createUserJob makes is the one the web app's relay logs in with (POST /auth/token, FAB).

    Chart >= 1.19 reads createUserJob.defaultUser; the deprecated webserver.defaultUser wins when present, so
    setting only its password would create no user and the relay could never log in.
    """
    airflow = values("airflow.yaml")
    assert "webserver" not in airflow
    user = airflow["createUserJob"]["defaultUser"]
    chart_values = yaml.safe_load((helm.CHART / "values.yaml").read_text())
    assert user["username"] == chart_values["config"]["airflowUsername"] and user["role"] == "Admin"
    assert "password" not in user  # never in a values file: passed at install from the generated Secret
    assert airflow["config"]["core"]["auth_manager"] == "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
    out = make("-n", "airflow-install")
    assert "createUserJob.defaultUser.password=" in out and "webserver.defaultUser" not in out
    # The install reads the same Secret key that `make credentials` writes and hands to the project chart.
    assert "get secret airflow-admin --ignore-not-found -o jsonpath='{.data.password}'" in out
    cluster_mk = (helm.REPO / "make" / "cluster.mk").read_text()
    assert "airflow,airflow-admin,--from-literal=username=admin --from-literal=password=$$ap" in cluster_mk
    assert 'airflowPassword: "%s"' in cluster_mk and '"$$ap"' in cluster_mk


def test_data_service_values():
    seaweed = values("seaweedfs.yaml")
    assert seaweed["allInOne"]["enabled"] and not seaweed["master"]["enabled"]
    assert seaweed["allInOne"]["s3"]["existingConfigSecret"] == "seaweedfs-s3-config"
    valkey = values("valkey.yaml")
    # valkey 0.11.0 renders <registry>/<repository>:<tag>: a registry inside repository would double it.
    image = valkey["image"]
    assert f'{image["registry"]}/{image["repository"]}:{image["tag"]}' == "docker.io/valkey/valkey:9.1.1"
    assert "." not in image["repository"].split("/")[0], "repository must not carry the registry"
    assert seaweed["allInOne"]["s3"]["port"] == 8333 and seaweed["allInOne"]["s3"]["enableAuth"] is True
    # The chart names the all-in-one Service <release>-all-in-one; the project chart and the Makefile point there.
    chart_values = yaml.safe_load((helm.CHART / "values.yaml").read_text())
    assert chart_values["config"]["s3Endpoint"] == "seaweedfs-all-in-one.data.svc.cluster.local:8333"
    assert "seaweedfs --repo" in (helm.REPO / "make" / "cluster.mk").read_text()
    traefik = values("traefik.yaml")
    assert traefik["ports"]["web"]["hostPort"] == 80 and traefik["ports"]["websecure"]["hostPort"] == 443
    assert traefik["nodeSelector"] == {"ingress-ready": "true"}


def test_kind_config():
    config = load(helm.REPO / "kind-config.yaml")[0]
    (node,) = config["nodes"]
    assert node["image"] == PINS["KIND_NODE_IMAGE"] and "@sha256:" in node["image"]
    assert node["labels"] == {"ingress-ready": "true"}
    assert {(m["containerPort"], m["hostPort"]) for m in node["extraPortMappings"]} == {(80, 80), (443, 443)}


def test_chart_versions_are_pinned_in_versions_env():
    text = (helm.REPO / "make" / "cluster.mk").read_text()
    for pin in re.findall(r"--version \$\((\w+)\)", text):
        assert PINS.get(pin), pin


def make(*args: str) -> str:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=helm.REPO, check=True,
                          capture_output=True, text=True).stdout


def test_cluster_up_sequence():
    """`make -n cluster-up` shows every step, in the order of the issue."""
    out = make("-n", "cluster-up")
    steps = [
        "kind create cluster", "cert-manager --repo", "traefik --repo", "kserve-crd oci://", "kserve-resources oci://",
        "cloudnative-pg --repo", "manifests/postgres-cluster.yaml", "valkey --repo", "seaweedfs --repo",
        "kube-prometheus-stack --repo", "airflow --repo", "titanic-model-server:", "kind load image-archive",
        "titanic charts/titanic", "sha256sum -c", "run dataset-upload", "dags trigger titanic_training",
        "wait inferenceservice/titanic", "http://titanic.localhost/",
    ]
    position = 0
    for step in steps:
        found = out.find(step, position)
        assert found != -1, f"{step!r} missing or out of order in make -n cluster-up"
        position = found
    assert "if ! " in out and "kind get clusters" in out  # idempotent: an existing cluster is kept
    assert "--wait" in out and "condition=Ready" in out


def test_minio_option():
    out = make("-n", "object-store", "deploy", "OBJECT_STORE=minio")
    assert "manifests/minio.yaml" in out and "seaweedfs --repo" not in out
    assert "config.s3Endpoint=minio.data.svc.cluster.local:9000" in out


def test_upload_overrides_are_valid_json():
    out = make("-n", "dataset")
    overrides = json.loads(re.search(r"--overrides='(.*?)'", out).group(1))
    (c,) = overrides["spec"]["containers"]
    assert c["envFrom"] == [{"configMapRef": {"name": "titanic-config"}}, {"secretRef": {"name": "titanic-secrets"}}]
    compile(c["command"][2], "upload", "exec")


def test_help_lists_the_cluster_targets():
    out = re.sub(r"\x1b\[[0-9;]*m", "", make("help"))
    for target in ("cluster-up", "cluster-down", "images", "load", "deploy", "train", "status", "logs",
                   "grafana", "airflow", "s3-console", "lint-charts"):
        assert re.search(rf"\b{target}\b", out), target


def test_memory_budget():
    """Total memory requests of the whole stack stay within 6 GiB (README: Running the platform, memory budget)."""
    upstream = sum(helm.memory_bytes(v) for path in [*VALUES_FILES, *MANIFEST_FILES] if path.name != "minio.yaml"
                   for p, v in walk(load(path)) if p[-2:] == ("requests", "memory"))
    chart = sum(helm.memory_bytes(c["resources"]["requests"]["memory"])
                for where, spec in helm.pod_specs(helm.render()) if "Job" not in where and "Pod/" not in where
                for c in spec["containers"])
    # KServe's storage initializer runs as an init container (not summed with the app container) and the
    # KPO step pods are transient; one step pod at a time: the pipeline image with the jobs' requests.
    step_pod = helm.memory_bytes(yaml.safe_load((helm.CHART / "values.yaml").read_text())["jobs"]["resources"]["requests"]["memory"])
    total = upstream + chart + step_pod + KIND_SYSTEM_REQUESTS
    assert total <= 6 * GiB, f"{total / GiB:.2f} GiB"


def test_third_party_images_are_what_the_pinned_charts_render(tmp_path):
    """`make load-third-party` pulls on the laptop what the charts would make the node pull from Docker Hub & co.

    The list comes from rendering the pinned charts with our values (`make third-party-images`); here from the
    test inputs' charts, without kube-prometheus-stack, whose offline copy in ../shared lacks its subcharts (helm
    cannot render it).
    """
    for chart in CHARTS_DIR.iterdir():
        if chart.name != "kube-prometheus-stack" and (chart / "Chart.yaml").exists():
            (tmp_path / chart.name).symlink_to(chart)
    out = subprocess.run(["make", "-s", "--no-print-directory", "third-party-images", f"CHARTS_DIR={tmp_path}"],
                         cwd=helm.REPO, capture_output=True, text=True, check=True, timeout=300).stdout.split()
    names = {image.rsplit(":", 1)[0] for image in out}
    assert {"docker.io/traefik", "docker.io/chrislusf/seaweedfs", "docker.io/valkey/valkey", "kserve/kserve-controller",
            "kserve/storage-initializer", "kserve/agent", "quay.io/jetstack/cert-manager-controller",
            "ghcr.io/cloudnative-pg/cloudnative-pg", "ghcr.io/cloudnative-pg/postgresql"} <= names
    for image in out:
        assert re.search(r"(:[\w.-]+|@sha256:[0-9a-f]{64})$", image) and not image.endswith(":latest"), image
    # The images KServe's controller injects into InferenceService pods (the agent beside a predictor without
    # storageUri, the storage initializer) are named in its ConfigMap, in JSON, not on an image: line.
    rendered = subprocess.run([str(helm.HELM), "template", "kserve-resources", str(CHARTS_DIR / "kserve-resources"),
                               "-n", "kserve", "--kube-version", PINS["KUBE_VERSION"],
                               "-f", str(helm.UPSTREAM_VALUES / "kserve-resources.yaml")],
                              capture_output=True, text=True, check=True).stdout
    (config,) = [o for o in yaml.safe_load_all(rendered)
                 if o and o["kind"] == "ConfigMap" and o["metadata"]["name"] == "inferenceservice-config"]
    injected = {json.loads(config["data"][entry])["image"] for entry in ("agent", "storageInitializer")}
    version = PINS["KSERVE_CHART_VERSION"]
    assert injected == {f"kserve/agent:{version}", f"kserve/storage-initializer:{version}"}
    assert injected <= set(out)


def test_traefik_replaces_its_pod_in_place_on_one_node():
    """hostPort 80/443 on one node: a surge pod could never schedule beside the old one (any change would time out)."""
    chart = CHARTS_DIR / "traefik"
    rendered = subprocess.run([str(helm.HELM), "template", "traefik", str(chart), "-n", "traefik", "--kube-version",
                               PINS["KUBE_VERSION"], "-f", str(helm.UPSTREAM_VALUES / "traefik.yaml")],
                              capture_output=True, text=True, check=True).stdout
    (deployment,) = [o for o in yaml.safe_load_all(rendered) if o and o["kind"] == "Deployment"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {p.get("hostPort") for p in ports} >= {80, 443}


def test_deploy_makes_the_credentials_it_reads_when_they_are_missing(tmp_path):
    out = make("-n", "deploy", f"CLUSTER_BUILD={tmp_path}")
    assert out.index("get secret pg-titanic") < out.index("upgrade --install")
    assert "--atomic" in out  # a failed upgrade is rolled back, not left half-applied
    (tmp_path / "credentials.yaml").write_text("credentials: {}\n")
    assert "get secret pg-titanic" not in make("-n", "deploy", f"CLUSTER_BUILD={tmp_path}")


def test_first_model_fails_fast_when_the_gate_rejects_the_first_model():
    out = make("-n", "first-model")
    assert "TRAIN_REQUIRE_DEPLOY=1" in out


DOCKER_SHIM = """#!/usr/bin/env bash
# Stand-in for the docker CLI (no Docker engine here): answers `version` like a daemon of API $API, logs the rest.
if [ "$1" = version ]; then case "$3" in *APIVersion*) echo "$API";; *) echo amd64;; esac; exit 0; fi
echo "$*" >> "$LOG"
"""


@pytest.mark.parametrize("api, platform_flag", [("1.41", False), ("1.48", True), ("1.51", True)])
def test_load_saves_with_platform_only_where_the_daemon_supports_it(tmp_path, api, platform_flag):
    docker, kind, log = tmp_path / "docker", tmp_path / "kind", tmp_path / "log"
    docker.write_text(DOCKER_SHIM)
    kind.write_text("#!/usr/bin/env bash\necho kind \"$*\" >> \"$LOG\"\n")
    for shim in (docker, kind):
        shim.chmod(0o755)
    env = {**os.environ, "API": api, "LOG": str(log)}
    subprocess.run(["make", "--no-print-directory", "-o", "kind", "load", f"DOCKER={docker}", f"KIND={kind}", "LOAD_IMAGES=titanic-webapp",
                    f"CLUSTER_BUILD={tmp_path}", "IMG_TAG=t1"], cwd=helm.REPO, env=env, check=True, capture_output=True)
    calls = log.read_text().splitlines()
    save = [c for c in calls if c.startswith("save")]
    assert save and ("--platform linux/amd64" in save[0]) == platform_flag
    assert save[0].endswith("titanic-webapp:t1")
    assert any(c.startswith("kind load image-archive") for c in calls)
