"""tests/inputs.py fetches the pinned test inputs a fresh clone lacks, once, or fails in one line.

Upstream is played by a local HTTP server (no internet in tests): the dataset and the CRD files at the
paths raw.githubusercontent.com has them, and a Helm repository (index.yaml + packages) with a stand-in of
every upstream chart at its pinned version, which `make upstream-charts CHART_MIRROR=...` pulls with helm.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests import inputs

HELM = inputs.REPO / "bin" / "helm"


def pinned_charts() -> dict[str, str]:
    """{chart: pinned version} of `make upstream-charts`, as make itself computes them."""
    rule = "print-charts: ; @$(foreach c,$(UPSTREAM_CHARTS),echo $(c) $(CHART_VERSION_$(c));)"
    out = subprocess.run(["make", "-s", "--no-print-directory", "--eval", rule, "print-charts"], cwd=inputs.REPO,
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split() for line in out.splitlines())


class Upstream(ThreadingHTTPServer):
    """Serves a folder over HTTP on a free port and records every path asked for."""

    daemon_threads = True

    def __init__(self, root: Path):
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                server.requests.append(self.path)

        super().__init__(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory):
    """helm's caches and config in the test's own folder, not the user's."""
    home = tmp_path_factory.mktemp("helm")
    env = {f"HELM_{kind}_HOME": str(home / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, helm_env):
    root = tmp_path_factory.mktemp("upstream")
    shutil.copy(inputs.TRAIN_CSV, root / "train.csv")
    for name, where in inputs.CRDS.items():
        (root / "raw" / where).mkdir(parents=True, exist_ok=True)
        shutil.copy(inputs.CRD_FILES / name, root / "raw" / where / name)
    charts, sources = root / "charts", tmp_path_factory.mktemp("chart-sources")
    charts.mkdir()
    for name, version in pinned_charts().items():
        (sources / name / "templates").mkdir(parents=True)
        (sources / name / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": name, "version": version}))
        subprocess.run([str(HELM), "package", str(sources / name), "-d", str(charts)], check=True, capture_output=True)
    server = Upstream(root)
    subprocess.run([str(HELM), "repo", "index", str(charts), "--url", f"{server.url}/charts"], check=True)
    yield server
    server.shutdown()
    server.server_close()


def fetch(upstream: Upstream, cache: Path, **overrides) -> None:
    locations = dict(dataset_url=f"{upstream.url}/train.csv", raw=f"{upstream.url}/raw", chart_repo=f"{upstream.url}/charts")
    inputs.ensure(shared=cache / "no-shared", cache=cache, **{**locations, **overrides})


def test_a_clone_without_shared_fetches_every_input_once(upstream, tmp_path):
    fetch(upstream, tmp_path)

    csv = tmp_path / inputs.DATASET
    assert hashlib.sha256(csv.read_bytes()).hexdigest() == inputs.versions()["DATASET_SHA256"]
    # the CRDs byte for byte, and their schemas exactly as the team's converted copy (or a finished fetch) has them
    for name in inputs.CRDS:
        assert (tmp_path / "k8s" / "crds" / name).read_bytes() == (inputs.CRD_FILES / name).read_bytes(), name
    fetched = {str(p.relative_to(tmp_path / "k8s" / "schemas")): p for p in (tmp_path / "k8s" / "schemas").rglob("*.json")}
    known = {str(p.relative_to(inputs.CRD_SCHEMAS)): p for p in inputs.CRD_SCHEMAS.rglob("*.json")}
    assert set(fetched) == set(known)
    for relative, path in fetched.items():
        assert json.loads(path.read_text()) == json.loads(known[relative].read_text()), relative
    for name, version in pinned_charts().items():
        assert yaml.safe_load((tmp_path / "charts" / name / "Chart.yaml").read_text())["version"] == version
    assert not list(tmp_path.rglob(".*.partial"))

    asked = len(upstream.requests)
    fetch(upstream, tmp_path)
    assert len(upstream.requests) == asked  # once: a complete cache is not fetched again
    assert inputs.path(inputs.DATASET, tmp_path / "no-shared", tmp_path) == csv


def test_shared_inputs_are_used_as_they_are(upstream, tmp_path):
    shared = tmp_path / "shared"
    (shared / "k8s").mkdir(parents=True)
    asked = len(upstream.requests)
    inputs.ensure([inputs.K8S], shared=shared, cache=tmp_path / "cache", raw=f"{upstream.url}/raw")
    assert len(upstream.requests) == asked and not (tmp_path / "cache").exists()
    assert inputs.path(inputs.K8S, shared, tmp_path / "cache") == shared / "k8s"


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.inputs", "--shared", str(tmp_path / "no-shared"),
                           "--cache", str(tmp_path / "cache"), *args],
                          cwd=inputs.REPO, capture_output=True, text=True, timeout=120)


def test_an_unreachable_upstream_is_one_line_naming_it(tmp_path):
    with ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler) as closed:
        url = f"http://127.0.0.1:{closed.server_address[1]}/train.csv"
    proc = run_cli(tmp_path, "--path", inputs.DATASET, "--dataset-url", url)  # nothing listens there any more
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: test inputs: cannot fetch {url}: ") and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache" / inputs.DATASET).exists() and not list(tmp_path.rglob(".*.partial"))


def test_wrong_bytes_and_unreachable_charts_are_one_line_too(upstream, tmp_path):
    proc = run_cli(tmp_path, "--path", inputs.DATASET, "--dataset-url", f"{upstream.url}/charts/index.yaml")
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "its sha256 is not DATASET_SHA256" in proc.stderr

    proc = run_cli(tmp_path, "--path", inputs.CHARTS, "--chart-repo", f"{upstream.url}/nothing-here")
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: test inputs: cannot fetch the upstream charts (make upstream-charts): Error:")
    assert f"{upstream.url}/nothing-here" in proc.stderr
    assert not (tmp_path / "cache" / inputs.CHARTS).exists()


def test_cli_prints_where_an_input_is(upstream, tmp_path):
    proc = run_cli(tmp_path, "--path", inputs.DATASET, "--dataset-url", f"{upstream.url}/train.csv")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "cache" / inputs.DATASET)
