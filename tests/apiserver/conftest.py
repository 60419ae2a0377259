"""A real control plane for the whole session (tests/kube.py: etcd, kube-apiserver, controller-manager,
scheduler, kwok node), and the platform installed on it through the make targets a user runs."""

from __future__ import annotations

import bz2
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

from tests import kube as local_kube
from tests.conftest import REPO
from tests.inputs import CHARTS_DIR


def _missing_binary() -> str | None:
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm"):
        if not (REPO / "bin" / name).exists():
            return name
    return None


@pytest.fixture(scope="session")
def kube():
    """The control plane, started once and stopped (with its directory) at the end of the session."""
    if missing := _missing_binary():
        pytest.skip(f"bin/{missing} is missing (`make kube-tools tools` builds it)")
    root = Path(tempfile.mkdtemp(prefix="titanic-kube-"))
    cluster = local_kube.up(root)
    yield cluster
    local_kube.down(root)


def make(cluster: local_kube.Cluster, *targets: str, check: bool = True, **variables: str):
    """Run make targets exactly as a user would, pointed at the control plane (KUBECONFIG, KUBE_CONTEXT)."""
    env = {**os.environ, **cluster.env(), "CHARTS_DIR": str(CHARTS_DIR)}
    # Generated credentials go to the cluster's own directory, never to the repository's build/.
    variables.setdefault("CLUSTER_BUILD", str(Path(cluster.root) / "build"))
    argv = ["make", "--no-print-directory", *targets, *(f"{k}={v}" for k, v in variables.items())]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def helm(cluster: local_kube.Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "bin" / "helm"), "--kubeconfig", cluster.kubeconfig, *args],
                          capture_output=True, text=True, check=check, timeout=600, env={**os.environ, **cluster.env()})


# Steps of `make cluster-up` that cannot happen here, each with the reason; every other step runs as is.
SKIPPED_STEPS = {
    "cluster-create": "kind create cluster needs Docker; the control plane of tests/kube.py is the cluster",
    "load-third-party": "docker pull needs a container registry, which this machine cannot reach",
    "postgres-ready": "waits for CNPG's Postgres pods to really run (kwok pods run nothing)",
    "airflow-install": "the Airflow chart needs the titanic-airflow image (and ../shared/charts lacks it: too large to bring here)",
    "images": "docker build needs a Docker engine",
    "load": "kind load needs a kind node",
    "dataset": "the upload pod must really run",
    "first-model": "a training run needs step pods that really run",
}
# Admission webhooks (failurePolicy Fail) whose server pods cannot run on a kwok node: while they exist, every
# create of their kinds is refused (no endpoint). Removed as soon as they appear, by name, and nothing else.
FAKE_NODE_WEBHOOKS = {
    ("validatingwebhookconfiguration", "cert-manager-webhook"),
    ("mutatingwebhookconfiguration", "cert-manager-webhook"),
    ("validatingwebhookconfiguration", "cnpg-validating-webhook-configuration"),
    ("mutatingwebhookconfiguration", "cnpg-mutating-webhook-configuration"),
    ("validatingwebhookconfiguration", "inferenceservice.serving.kserve.io"),
    ("mutatingwebhookconfiguration", "inferenceservice.serving.kserve.io"),
    ("validatingwebhookconfiguration", "trainedmodel.serving.kserve.io"),
    ("validatingwebhookconfiguration", "inferencegraph.serving.kserve.io"),
    ("validatingwebhookconfiguration", "servingruntime.serving.kserve.io"),
    ("validatingwebhookconfiguration", "clusterservingruntime.serving.kserve.io"),
    ("validatingwebhookconfiguration", "localmodelcache.serving.kserve.io"),
    ("validatingwebhookconfiguration", "llminferenceservice.serving.kserve.io"),
    ("validatingwebhookconfiguration", "llminferenceserviceconfig.serving.kserve.io"),
}


def cluster_up_steps() -> list[str]:
    """The steps of `make cluster-up`, in order, read from its recipe in make/cluster.mk."""
    recipe = (REPO / "make" / "cluster.mk").read_text().split("\ncluster-up:", 1)[1].split("\n\n", 1)[0]
    return [line.split()[-1] for line in recipe.splitlines() if line.startswith("\t$(MAKE) --no-print-directory ")]


class Poller:
    """Calls the subclass's `poll()` every `interval` seconds on a background thread while the `with` block runs."""

    interval = 0.3

    def __init__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(self.interval):
            self.poll()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


class WebhookRemover(Poller):
    """Deletes FAKE_NODE_WEBHOOKS as soon as an install creates them."""

    def __init__(self, cluster: local_kube.Cluster):
        super().__init__()
        self.cluster, self.removed = cluster, set()

    def poll(self):
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            names = self.cluster.kubectl("get", kind, "-o", "name", check=False).stdout.split()
            for name in (n.split("/", 1)[1] for n in names):
                if (kind, name) in FAKE_NODE_WEBHOOKS:
                    self.cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
                    self.removed.add((kind, name))


def missing_subcharts(chart: Path) -> list[str]:
    """Dependencies a chart declares that its unpacked copy lacks (helm refuses to install it then)."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    return [d["name"] for d in meta.get("dependencies") or [] if not (chart / "charts" / d["name"]).is_dir()]


def monitoring_crds(kube: local_kube.Cluster) -> None:
    """The Prometheus operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule, ...) from the chart's own
    crds subchart, server-side as Helm installs them: the project chart's monitors need them."""
    crds = bz2.decompress((CHARTS_DIR / "kube-prometheus-stack" / "charts" / "crds" / "files" / "crds.bz2").read_bytes())
    local_kube.apply_crds(kube.kubectl, crds.decode())


@pytest.fixture(scope="session")
def platform(kube):
    """`make cluster-up`'s steps run one by one against the control plane, upstream charts from CHARTS_DIR (tests/inputs.py).

    Returns {step: CompletedProcess} of the steps that ran, and the webhook configurations removed.
    """
    ran, skipped = {}, dict(SKIPPED_STEPS)
    if missing := missing_subcharts(CHARTS_DIR / "kube-prometheus-stack"):
        skipped["monitoring"] = (f"the offline kube-prometheus-stack lacks its subcharts {missing}, so helm cannot "
                                 "install it; its CRDs are applied from the copy instead")
    with WebhookRemover(kube) as remover:
        for step in cluster_up_steps():
            if step not in skipped:
                ran[step] = make(kube, step)
            elif step == "monitoring":
                monitoring_crds(kube)
    for step, why in skipped.items():
        print(f"cluster-up step {step} skipped: {why}")
    return {"steps": ran, "skipped": skipped, "webhooks_removed": remover.removed}


def pytest_collection_modifyitems(items):
    # The first test here installs the whole platform (its setup counts against the test's timeout).
    for item in items:
        if "tests/apiserver/" in str(item.fspath):
            item.add_marker(pytest.mark.timeout(1800))
