"""Live-cluster fixtures: every test here needs the cluster of `make cluster-up` and is skipped without one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTEXT = os.environ.get("KUBE_CONTEXT", "kind-titanic")
KUBECTL = os.environ.get("KUBECTL") or shutil.which("kubectl") or str(REPO / "bin" / "kubectl")
INGRESS_URL = os.environ.get("TITANIC_URL", "http://titanic.localhost")


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
