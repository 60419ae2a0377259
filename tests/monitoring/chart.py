"""Render the project chart with the pinned helm and pull out the monitoring objects."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "titanic"
HELM = REPO / "bin" / "helm"
NAMESPACE = "mlops"
ALERTS_TEST = Path(__file__).with_name("alerts_test.yaml")


def kube_version() -> str:
    """The Kubernetes version of the kind node, pinned in versions.env."""
    for line in (REPO / "versions.env").read_text().splitlines():
        if line.startswith("KUBE_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("KUBE_VERSION missing from versions.env")


def render(values: dict | None = None) -> list[dict]:
    """`helm template` the chart (release `titanic`, namespace `mlops`) into a list of objects.

    `values` is passed as a values file (typed, unlike `--set`, which turns 0.5 into a string).
    """
    cmd = [str(HELM), "template", "titanic", str(CHART), "--namespace", NAMESPACE, "--kube-version", kube_version()]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values or {}, f)
        f.flush()
        result = subprocess.run(cmd + ["--values", f.name], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def prometheus_rule(objects: list[dict]) -> dict:
    """The one PrometheusRule of the rendered chart."""
    rules = [o for o in objects if o["kind"] == "PrometheusRule"]
    assert len(rules) == 1, f"expected one PrometheusRule, got {[r['metadata']['name'] for r in rules]}"
    return rules[0]


def dashboards(objects: list[dict]) -> dict[str, dict]:
    """Every Grafana dashboard in ConfigMaps labelled for the sidecar, by data key."""
    found = {}
    for o in objects:
        if o["kind"] == "ConfigMap" and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            for key, text in o.get("data", {}).items():
                found[key] = json.loads(text)
    return found


def write_rule_groups(rule: dict, directory: Path) -> Path:
    """The PrometheusRule's groups as a plain Prometheus rule file, as the operator would load it."""
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: `make system-deps` installs the Debian prometheus package"
    return path
