"""Offline validation of every rendered manifest: helm lint, kubeconform -strict, kube-score."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.charts import helm

ALL_SCENARIOS = [None, *helm.SCENARIOS]


def test_scenarios_exist():
    """One ci/<scenario>-values.yaml per feature toggle, rendered by every check below."""
    assert {"existing-secret-values.yaml", "minimal-values.yaml", "minio-values.yaml"} <= set(helm.SCENARIOS)


@pytest.mark.parametrize("values", ALL_SCENARIOS)
def test_helm_lint_strict(values):
    cmd = [str(helm.HELM), "lint", "--strict", str(helm.CHART), "--namespace", helm.NAMESPACE,
           "--kube-version", helm.versions()["KUBE_VERSION"]]
    if values:
        cmd += ["--values", str(helm.CHART / "ci" / values)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", ALL_SCENARIOS)
def test_kubeconform_strict(values, tmp_path):
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(helm.render_text(values=values))
    result = helm.kubeconform(manifest)
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = report["summary"]
    # Every object validated against a schema: none skipped for lack of one.
    assert summary["skipped"] == 0 and summary["errors"] == 0 and summary["invalid"] == 0, report
    assert summary["valid"] == len(helm.render(values=values))


def test_kubeconform_rejects_unknown_fields(tmp_path):
    """-strict with the local schemas catches a misspelt field, in core kinds and in CRDs alike."""
    objects = helm.render()
    isvc = helm.one(objects, "InferenceService", "titanic")
    isvc["spec"]["transformer"]["containers"][0]["imagePullPolcy"] = "Never"
    service = helm.one(objects, "Service", "titanic-webapp")
    service["spec"]["portz"] = []
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump_all([isvc, service]))
    report = json.loads(helm.kubeconform(manifest).stdout)
    assert report["summary"]["invalid"] == 2, report


def extra_ignores(values: str | None) -> list[str]:
    """Scenarios that switch NetworkPolicies off on purpose cannot pass kube-score's policy check."""
    if values and yaml.safe_load((helm.CHART / "ci" / values).read_text()).get("networkPolicy", {}).get("enabled") is False:
        return ["pod-networkpolicy"]
    return []


@pytest.mark.parametrize("values", ALL_SCENARIOS)
def test_kube_score_has_no_critical_finding(values, tmp_path):
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(helm.render_text(values=values))
    result = helm.kube_score(manifest, *extra_ignores(values))
    critical = [line for line in result.stdout.splitlines() if line.startswith("[CRITICAL]")]
    assert result.returncode == 0 and not critical, "\n".join(critical) or result.stderr


def test_values_schema_rejects_unknown_keys():
    for bad in ("bogus=1", "webapp.bogus=1", "inferenceService.predictor.bogus=1", "prometheusRule.bogus=1"):
        with pytest.raises(subprocess.CalledProcessError) as failure:
            helm.render("--set", bad)
        assert "additional properties" in failure.value.stderr, failure.value.stderr


def test_values_schema_rejects_unsafe_settings():
    for bad in ("image.tag=latest", "containerSecurityContext.allowPrivilegeEscalation=true",
                "podSecurityContext.runAsNonRoot=false"):
        with pytest.raises(subprocess.CalledProcessError):
            helm.render("--set", bad)


def test_webapp_needs_threads_beyond_its_bound():
    """The shed requests are answered by the threads beyond webapp.maxInFlight + maxQueued (webapp/shedding.py)."""
    for threads, in_flight, queued in (("40", "40", "0"), ("80", "40", "40")):
        with pytest.raises(subprocess.CalledProcessError) as failure:
            helm.render("--set", f"webapp.gunicorn.threads={threads}", "--set", f"webapp.maxInFlight={in_flight}",
                        "--set", f"webapp.maxQueued={queued}")
        assert "threads must exceed webapp.maxInFlight + webapp.maxQueued" in failure.value.stderr
    webapp = helm.one(helm.render(), "Deployment", "titanic-webapp")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "WEBAPP_MAX_IN_FLIGHT", "value": "40"} in webapp["env"]
    assert {"name": "WEBAPP_MAX_QUEUED", "value": "40"} in webapp["env"]
    assert {"name": "WEBAPP_QUEUE_TIMEOUT", "value": "0.5"} in webapp["env"]


def test_every_values_key_is_commented():
    """CONVENTIONS §13: a comment above every key of values.yaml; Kubernetes objects given as values
    (resources, security contexts) are described once, above their key."""
    object_keys = {"resources", "podSecurityContext", "containerSecurityContext"}
    lines = (helm.CHART / "values.yaml").read_text().splitlines()
    assert "values.schema.json" in lines[0]
    parents: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        indent, key = len(line) - len(line.lstrip()), stripped.split(":", 1)[0]
        parents = [(n, k) for n, k in parents if n < indent]
        if not any(k in object_keys for _, k in parents):
            assert lines[i - 1].strip().startswith("#"), f"values.yaml line {i + 1}: key {key!r} has no comment"
        parents.append((indent, key))
