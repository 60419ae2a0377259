"""`make cluster-up`'s own steps on a real API server: what offline rendering cannot see (admission, CRD
schemas and defaults, object order, webhooks), with the upstream charts at their pinned versions."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import yaml

from tests.apiserver.conftest import FAKE_NODE_WEBHOOKS, SKIPPED_STEPS, cluster_up_steps, helm, make
from tests.charts import helm as chart_helm
from tests.charts.test_platform import GiB, KIND_SYSTEM_REQUESTS, load, walk
from tests.conftest import REPO

PINS = chart_helm.versions()
RELEASES = {"cert-manager", "traefik", "kserve-crd", "kserve-resources", "cnpg", "valkey", "seaweedfs", "titanic"}


def test_control_plane_is_the_pinned_kubernetes_with_a_node_like_kind(kube):
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"] == f"v{PINS['KUBE_VERSION']}"  # stamped: Helm checks charts' kubeVersion
    assert PINS["KIND_NODE_IMAGE"].startswith(f"kindest/node:v{PINS['KUBE_VERSION'].rsplit('.', 1)[0]}")
    node = json.loads(kube.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert len(node) == 1
    (node,) = node
    assert node["status"]["allocatable"]["cpu"] == "4" and node["status"]["allocatable"]["memory"] == "8Gi"
    kind_labels = yaml.safe_load((REPO / "kind-config.yaml").read_text())["nodes"][0]["labels"]
    assert kind_labels.items() <= node["metadata"]["labels"].items()
    assert not node["spec"].get("taints")


def test_every_step_of_cluster_up_ran_or_is_named_as_skipped(platform):
    steps = cluster_up_steps()
    assert set(platform["skipped"]) <= set(steps), "a skipped step no longer exists in cluster-up"
    assert [s for s in steps if s not in platform["skipped"]] == list(platform["steps"])
    assert set(platform["skipped"]) - set(SKIPPED_STEPS) <= {"monitoring"}  # the only conditional skip


def test_every_release_is_deployed(kube, platform):
    releases = {r["name"]: r for r in json.loads(helm(kube, "list", "-A", "-o", "json").stdout)}
    assert RELEASES | ({"monitoring"} - set(platform["skipped"])) <= set(releases)
    assert {name: r["status"] for name, r in releases.items()} == {name: "deployed" for name in releases}


def test_kubectl_and_helm_keep_discovery_in_the_clusters_directory(kube, platform):
    """Every step's kubectl and helm cached discovery under the cluster's own directory (KUBECACHEDIR), where it
    goes with the cluster. ~/.kube/cache is keyed by host:port only, so a later cluster on a reused port would
    start from this one's API groups, and the directory would outlive the cluster."""
    cached = Path(kube.env()["KUBECACHEDIR"]) / "discovery" / f"{kube.address}_{kube.apiserver_port}"
    assert {"monitoring.coreos.com", "serving.kserve.io", "servergroups.json"} <= {p.name for p in cached.iterdir()}
    home = Path.home() / ".kube" / "cache" / "discovery" / cached.name
    started = Path(kube.kubeconfig).stat().st_mtime
    assert not home.exists() or home.stat().st_mtime < started, f"{home} was written while this cluster ran"


def test_only_the_webhooks_without_a_server_were_removed(kube, platform):
    removed = platform["webhooks_removed"]
    assert removed <= FAKE_NODE_WEBHOOKS
    assert ("validatingwebhookconfiguration", "cert-manager-webhook") in removed  # the remover really worked
    print("removed (no webhook server can run on a kwok node):", sorted(removed))
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        for config in json.loads(kube.kubectl("get", kind, "-o", "json").stdout)["items"]:
            failing = [w["name"] for w in config.get("webhooks", []) if w.get("failurePolicy", "Fail") == "Fail"]
            assert not failing, f"{kind}/{config['metadata']['name']} still blocks creates: {failing}"


def _pod_memory(pod: dict) -> int:
    """A pod's memory request as the scheduler counts it: its containers, or its largest init container."""
    spec = pod["spec"]
    total = lambda cs: sum(chart_helm.memory_bytes(((c.get("resources") or {}).get("requests") or {}).get("memory", "0"))
                           for c in cs)
    init = max([total([c]) for c in spec.get("initContainers") or []] or [0])
    return max(total(spec["containers"]), init)


def test_memory_requests_on_the_node_fit_the_readme_budget(kube, platform):
    pods = json.loads(kube.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
    running = [p for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")]
    on_node = sum(_pod_memory(p) for p in running)
    # What could not be installed here, at the requests of its values file / the kind node.
    not_installed = ["airflow.yaml"] + (["kube-prometheus-stack.yaml"] if "monitoring" in platform["skipped"] else [])
    airflow = sum(chart_helm.memory_bytes(v) for name in not_installed
                  for p, v in walk(load(REPO / "charts" / "values" / name))
                  if p[-2:] == ("requests", "memory") and not p[1].endswith("Job"))  # p[0]: the document
    step_pod = chart_helm.memory_bytes(yaml.safe_load((chart_helm.CHART / "values.yaml").read_text())
                                       ["jobs"]["resources"]["requests"]["memory"])
    total = on_node + airflow + step_pod + KIND_SYSTEM_REQUESTS
    print(f"memory requests: {on_node / 2**20:.0f} MiB on the node; with {', '.join(not_installed)} (values "
          f"files), a step pod and kind's system pods: {total / GiB:.2f} GiB")
    assert on_node > GiB // 2  # the platform's pods are really there
    assert total <= 6 * GiB  # README: Running the platform, memory budget


def _secret(kube, namespace, name, key) -> str:
    data = json.loads(kube.kubectl("-n", namespace, "get", "secret", name, "-o", "json").stdout)["data"]
    return base64.b64decode(data[key]).decode()


def test_credentials_on_an_empty_cluster_then_reused(kube, platform):
    """The first run (inside cluster-up) created every Secret; a second run keeps every value."""
    assert "credentials ready" in platform["steps"]["credentials"].stdout
    secrets = [("data", "pg-titanic", "password"), ("data", "minio-root", "MINIO_ROOT_PASSWORD"),
               ("airflow", "airflow-admin", "password"), ("airflow", "airflow-fernet", "fernet-key"),
               ("monitoring", "titanic-alertmanager-token", "token")]
    before = {s: _secret(kube, *s) for s in secrets}
    assert all(len(v) >= 16 for v in before.values())
    make(kube, "credentials")
    assert {s: _secret(kube, *s) for s in secrets} == before


def test_credentials_stop_with_kubectls_error_when_the_api_is_unreachable(kube, tmp_path):
    """Only "absent" means "generate": an unreachable API must not overwrite credentials with new ones."""
    config = json.loads(Path(kube.kubeconfig).read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    broken = tmp_path / "kubeconfig"
    broken.write_text(json.dumps(config))
    env = {**os.environ, **kube.env(), "KUBECONFIG": str(broken)}
    result = subprocess.run(["make", "--no-print-directory", "credentials", f"CLUSTER_BUILD={tmp_path / 'build'}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "connection refused" in result.stderr or "127.0.0.1:1" in result.stderr, result.stderr
    assert not (tmp_path / "build" / "credentials.yaml").exists()


def test_s3_identities_separate_reading_from_writing(kube, platform):
    """SeaweedFS gets a read-write and a read-only identity; the chart's read-only Secret holds the latter."""
    config = json.loads(_secret(kube, "data", "seaweedfs-s3-config", "seaweedfs_s3_config"))
    identities = {i["name"]: i for i in config["identities"]}
    assert set(identities) == {"titanic", "titanic-reader"}
    assert "Write" in identities["titanic"]["actions"]
    assert sorted(identities["titanic-reader"]["actions"]) == ["List", "Read"]
    reader = identities["titanic-reader"]["credentials"][0]
    assert _secret(kube, "mlops", "titanic-secrets-read", "S3_ACCESS_KEY") == reader["accessKey"]
    assert _secret(kube, "mlops", "titanic-secrets-read", "AWS_SECRET_ACCESS_KEY") == reader["secretKey"]
    assert _secret(kube, "mlops", "titanic-secrets", "S3_ACCESS_KEY") == identities["titanic"]["credentials"][0]["accessKey"]
