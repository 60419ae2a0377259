"""Live-cluster fixtures: every test here needs a cluster with the platform and is skipped without one.

Two such clusters: kind's of `make cluster-up` (defaults below), and the local cluster with a real node of
`make local-platform-up`, whose `export` lines set KUBECONFIG, KUBE_CONTEXT, TITANIC_URL (the web app's
Service address) and AIRFLOW_URL (Airflow on the host).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTEXT = os.environ.get("KUBE_CONTEXT", "kind-titanic")
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or str(REPO / "bin" / "kubectl")
# The web app: through the ingress on kind, its Service address on the local cluster.
TITANIC_URL = os.environ.get("TITANIC_URL", "http://titanic.localhost")
# `kubectl wait` for a Ready InferenceService. Not --for=condition=Ready: kubectl ignores conditions while
# status.observedGeneration < metadata.generation, and KServe's Standard mode reports the predictor Deployment's
# observedGeneration there (see make/cluster.mk's ISVC_READY).
ISVC_READY = "--for=jsonpath={.status.conditions[?(@.type==\"Ready\")].status}=True"
# Airflow's API, to follow a run (optional: on kind `make airflow` port-forwards it to 127.0.0.1:8080).
AIRFLOW_URL = os.environ.get("AIRFLOW_URL", "")


def kubectl(*args: str, timeout: float = 60) -> str:
    """kubectl against the cluster of `make cluster-up` (context KUBE_CONTEXT)."""
    return subprocess.run([KUBECTL, "--context", CONTEXT, *args], check=True, capture_output=True, text=True,
                          timeout=timeout).stdout


def cluster_unreachable_reason() -> str | None:
    if not Path(KUBECTL).exists() and not shutil.which(KUBECTL):
        return "no kubectl: run `make cluster-up` on a machine with Docker first"
    try:
        kubectl("get", "--raw", "/readyz", timeout=10)
        kubectl("-n", "mlops", "get", "inferenceservice", "titanic", timeout=10)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        return f"no reachable cluster with the titanic release (context {CONTEXT}): {exc.__class__.__name__}"
    return None


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    reason = None
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.cluster)
            reason = reason or cluster_unreachable_reason() or "reachable"
            if reason != "reachable":
                item.add_marker(pytest.mark.skip(reason=reason))


def service_proxy_get(namespace: str, service: str, path: str) -> dict:
    """GET through the API server's service proxy: no port-forward needed."""
    return json.loads(kubectl("get", "--raw", f"/api/v1/namespaces/{namespace}/services/{service}/proxy{path}"))


def secret_value(namespace: str, name: str, key: str) -> str:
    return base64.b64decode(kubectl("-n", namespace, "get", "secret", name, "-o", f"jsonpath={{.data.{key}}}")).decode()


def monitoring_missing_reason() -> str | None:
    """kube-prometheus-stack runs on kind; the local cluster cannot run its images (none can be pulled here)."""
    try:
        kubectl("-n", "monitoring", "get", "service", "kps-prometheus", timeout=10)
    except subprocess.CalledProcessError:
        return ("kube-prometheus-stack (Prometheus, Grafana) is not installed on this cluster: its images cannot be "
                "pulled or built on this machine")
    return None
