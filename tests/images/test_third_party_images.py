"""The upstream images `make third-party-images-local` builds here for a node that reaches no registry: KServe's
controller, its kube-rbac-proxy sidecar, KServe's storage initializer and KServe's agent. `make
test-third-party-images`, not part of `make test` (cold, the Go builds take ~12 min on 2 cores).

- Each has the name the rendered upstream charts use (`make third-party-images`) and a numeric non-root USER (the
  charts set runAsNonRoot), and runs as it with no capabilities on a read-only root filesystem.
- The binaries are the pinned versions: kube-rbac-proxy and the storage initializer say so (`--version`); the
  controller and the agent report none, so their Go build info must name github.com/kserve/kserve at
  KSERVE_CHART_VERSION.
- Both controller-pod containers take the args the chart renders for them; the controller's probe port is its default.
- The agent, which KServe injects beside our predictor while it has no storageUri (before the first model), starts
  with the args and environment KServe gives it (--enable-puller, our predictor's readiness probe) and proxies to
  the predictor's port.
- The storage initializer downloads an s3:// folder from a real S3 server (versitygw, tests/services.py) with the
  environment KServe injects from an S3 Secret, and fails on a prefix that holds nothing; no layer keeps the
  build machine's CA.

The Docker engine is DOCKER (default `docker`); without one the tests that need it are skipped, naming what is missing.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests import inputs
from tests.charts import helm
from tests.charts.helm import HELM, versions
from tests.images.test_built_images import (  # one engine check, one CA scan for all image tests
    DOCKER, ENGINE_PROBLEM, HOST_BUNDLE, _certificates, _saved_members, docker, own_cas)

ROOT = Path(__file__).resolve().parents[2]
PINS = versions()
CONTROLLER = f"kserve/kserve-controller:{PINS['KSERVE_CHART_VERSION']}"
RBAC_PROXY = f"quay.io/brancz/kube-rbac-proxy:{PINS['KUBE_RBAC_PROXY_VERSION']}"
STORAGE_INITIALIZER = f"kserve/storage-initializer:{PINS['KSERVE_CHART_VERSION']}"
AGENT = f"kserve/agent:{PINS['KSERVE_CHART_VERSION']}"
# How the chart runs its containers: no capabilities, no privilege escalation, the image's own (non-root) user.
RESTRICTED = ("--cap-drop", "ALL", "--security-opt", "no-new-privileges")

needs_engine = pytest.mark.skipif(ENGINE_PROBLEM is not None, reason=ENGINE_PROBLEM or "")
pytestmark = pytest.mark.timeout(3600)  # a cold build compiles two Go programs of ~100 modules each


def make(*args: str, timeout: float = 60) -> str:
    result = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"make {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def built() -> str:
    """The output of `make third-party-images-local`: what it built, and what the engine had already."""
    return make("third-party-images-local", f"DOCKER={' '.join(DOCKER)}", timeout=3000)


@pytest.fixture(scope="module")
def controller_pod() -> dict:
    """The pod spec of KServe's controller Deployment as cluster-up installs it (pinned chart, our values)."""
    chart = inputs.CHARTS_DIR / "kserve-resources"
    if not chart.is_dir():
        pytest.skip(f"no unpacked kserve-resources chart in {inputs.CHARTS_DIR}: make test-inputs")
    rendered = subprocess.run([str(HELM), "template", "kserve-resources", str(chart), "--namespace", "kserve",
                               "--kube-version", PINS["KUBE_VERSION"], "-f",
                               str(ROOT / "charts" / "values" / "kserve-resources.yaml")],
                              capture_output=True, text=True, check=True).stdout
    (deployment,) = [o for o in yaml.safe_load_all(rendered)
                     if o and o["kind"] == "Deployment" and o["metadata"]["name"] == "kserve-controller-manager"]
    return deployment["spec"]["template"]["spec"]


def container(pod: dict, image: str) -> dict:
    (found,) = [c for c in pod["containers"] if c["image"] == image]
    return found


def test_the_images_are_the_ones_the_rendered_chart_uses(tmp_path):
    chart = inputs.CHARTS_DIR / "kserve-resources"
    if not chart.is_dir():
        pytest.skip(f"no unpacked kserve-resources chart in {inputs.CHARTS_DIR}: make test-inputs")
    local = make("-s", "third-party-images-local-list").split()
    assert local == [CONTROLLER, RBAC_PROXY, STORAGE_INITIALIZER, AGENT]
    # `make third-party-images` renders the charts found in CHARTS_DIR: here KServe's alone.
    (tmp_path / "kserve-resources").symlink_to(chart)
    rendered = make("-s", "third-party-images", f"CHARTS_DIR={tmp_path}").split()
    assert set(local) <= set(rendered), f"not in the rendered chart: {set(local) - set(rendered)}"


@needs_engine
def test_the_target_builds_or_has_each_image_and_says_which(built):
    for image in (CONTROLLER, RBAC_PROXY, STORAGE_INITIALIZER, AGENT):
        assert f"built {image} in" in built or f"have {image} (" in built, built
        docker("image", "inspect", image)
    again = make("-s", "third-party-images-local", f"DOCKER={' '.join(DOCKER)}", timeout=600)
    assert again.count("(built here from this recipe)") == 4, again  # warm: nothing is built twice


@needs_engine
@pytest.mark.parametrize("image, user", [(CONTROLLER, "65532:65532"), (RBAC_PROXY, "65532:65532"),
                                         (STORAGE_INITIALIZER, "1000"), (AGENT, "65532:65532")])
def test_image_user_is_numeric_and_not_root(built, image, user):
    # Numeric: the kubelet can check runAsNonRoot against it (a user name makes it refuse to start the pod).
    assert json.loads(docker("image", "inspect", image).stdout)[0]["Config"]["User"] == user


def run(image: str, *args: str, entrypoint: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the image as the chart would, on a read-only root with no network."""
    return docker("run", "--rm", "--read-only", "--network", "none", *RESTRICTED,
                  *(["--entrypoint", entrypoint] if entrypoint else []), image, *args, check=check, timeout=120)


def built_from_pinned_kserve(image: str, binary: str, tmp_path: Path) -> bool:
    """Whether the image's binary was built from github.com/kserve/kserve at KSERVE_CHART_VERSION. KServe's commands
    print no version: their Go build info (what `go version -m` reads) names the module they were built from."""
    name = f"kserve-binary-{uuid.uuid4().hex[:8]}"
    docker("create", "--name", name, image)
    try:
        docker("cp", f"{name}:{binary}", str(tmp_path / "binary"))
    finally:
        docker("rm", name)
    build_info = f"mod\tgithub.com/kserve/kserve\t{PINS['KSERVE_CHART_VERSION']}\t".encode()
    return build_info in (tmp_path / "binary").read_bytes()


@needs_engine
def test_controller_is_kserve_at_the_pinned_version(built, tmp_path):
    help_text = run(CONTROLLER, "-help").stderr
    assert "-health-probe-addr" in help_text and "-leader-elect" in help_text
    assert built_from_pinned_kserve(CONTROLLER, "/manager", tmp_path)


@needs_engine
def test_controller_takes_the_charts_args_and_probe_port(built, controller_pod):
    manager = container(controller_pod, CONTROLLER)
    assert manager["command"] == ["/manager"]  # the image's entrypoint
    # `-help` after the chart's args: Go's flag package stops at an undefined flag (exit 2) before it reaches -help.
    help_text = run(CONTROLLER, *manager["args"], "-help").stderr
    port = manager["livenessProbe"]["httpGet"]["port"]
    assert manager["readinessProbe"]["httpGet"]["port"] == port
    assert f'The address the probe endpoint binds to. (default ":{port}")' in help_text


@needs_engine
def test_kube_rbac_proxy_is_the_pinned_version_and_takes_the_charts_args(built, controller_pod):
    assert run(RBAC_PROXY, "--version").stdout.strip() == f"kube-rbac-proxy {PINS['KUBE_RBAC_PROXY_VERSION']}"
    proxy = container(controller_pod, RBAC_PROXY)
    assert "command" not in proxy  # the image's entrypoint
    # With the chart's args it gets past flag parsing and stops only for want of a cluster.
    started = run(RBAC_PROXY, *proxy["args"], check=False)
    assert started.returncode != 0
    assert "unable to load in-cluster configuration" in started.stderr, started.stderr


@needs_engine
def test_storage_initializer_is_the_pinned_version_as_uid_1000(built):
    assert run(STORAGE_INITIALIZER, "--version").stdout.strip() == f"kserve-storage {PINS['KSERVE_CHART_VERSION'][1:]}"
    assert "SRC_URI DEST_DIR" in run(STORAGE_INITIALIZER, "--help").stdout
    ids = run(STORAGE_INITIALIZER, "-c", "import os; print(os.getuid(), os.getgid())", entrypoint="python").stdout
    assert ids.split() == ["1000", "1000"]
    assert run(STORAGE_INITIALIZER, check=False).returncode != 0  # no args: usage, as upstream's entrypoint


@pytest.fixture
def s3_folder(services):
    """A bucket with a model folder (nested files) in the local S3 server, and the environment KServe's controller
    gives the storage initializer for an S3 Secret annotated like the project chart's (plain http, no TLS check)."""
    from minio import Minio

    client = Minio(f"127.0.0.1:{services.s3_port}", access_key=services.s3_access_key,
                   secret_key=services.s3_secret_key, secure=False)
    bucket = f"storage-initializer-{uuid.uuid4().hex[:8]}"
    client.make_bucket(bucket)
    files = {"model.joblib": bytes(range(256)) * 1024, "metadata.json": b'{"version": "v1"}',
             "report/plots/roc.json": b"[0.5, 0.9]"}
    for name, data in files.items():
        client.put_object(bucket, f"models/titanic/v1/{name}", io.BytesIO(data), len(data))
    client.put_object(bucket, "models/titanic/v2/model.joblib", io.BytesIO(b"other"), 5)  # not under the prefix
    env = {"AWS_ACCESS_KEY_ID": services.s3_access_key, "AWS_SECRET_ACCESS_KEY": services.s3_secret_key,
           "S3_ENDPOINT": f"127.0.0.1:{services.s3_port}", "S3_USE_HTTPS": "0",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{services.s3_port}", "S3_VERIFY_SSL": "0",
           "AWS_DEFAULT_REGION": "us-east-1", "S3_USER_VIRTUAL_BUCKET": "false"}
    return bucket, files, env


@needs_engine
def test_storage_initializer_downloads_an_s3_folder(built, s3_folder, tmp_path):
    bucket, files, env = s3_folder
    models = tmp_path / "models"
    models.mkdir(mode=0o777)
    models.chmod(0o777)  # an emptyDir: writable by the container's uid 1000
    download = docker("run", "--rm", "--read-only", "--network", "host", *RESTRICTED,
                      *[arg for name, value in env.items() for arg in ("-e", f"{name}={value}")],
                      "-v", f"{models}:/mnt/models", STORAGE_INITIALIZER,
                      f"s3://{bucket}/models/titanic/v1", "/mnt/models", check=False, timeout=300)
    assert download.returncode == 0, download.stdout + download.stderr
    got = {str(p.relative_to(models)): p.read_bytes() for p in models.rglob("*") if p.is_file()}
    assert got == files
    missing = docker("run", "--rm", "--network", "host", *RESTRICTED,
                     *[arg for name, value in env.items() for arg in ("-e", f"{name}={value}")],
                     STORAGE_INITIALIZER, f"s3://{bucket}/models/titanic/v9", "/tmp/models", check=False, timeout=300)
    assert missing.returncode != 0
    assert "No model found" in missing.stdout + missing.stderr


@needs_engine
def test_storage_initializer_keeps_no_ca_of_the_build_machine(built, own_cas):
    """pip got the build's CA as a BuildKit secret (tests/images/test_built_images.py's scan, on this image)."""
    needles = {f"{ca}: {what}": needle for ca, ca_needles in own_cas.items() for what, needle in ca_needles.items()}
    # A public root the image has (Debian's ca-certificates, certifi): proves its layers were read.
    roots = _certificates(HOST_BUNDLE)
    public = {"public root": base64.b64encode(next((der for der in roots if b"ISRG Root X1" in der), roots[0]))[64:128]}
    hits, manifest = _saved_members([STORAGE_INITIALIZER], {**needles, **public})
    leaks = {member: sorted(found - set(public)) for member, found in hits.items() if found - set(public)}
    assert not leaks, f"a CA of the build machine is in the image: {leaks}"
    (entry,) = manifest
    assert {entry["Config"], *entry["Layers"]} <= set(hits)  # every layer was searched
    assert any("public root" in hits[layer] for layer in entry["Layers"])


@needs_engine
def test_agent_is_kserve_at_the_pinned_version(built, tmp_path):
    image = json.loads(docker("image", "inspect", AGENT).stdout)[0]["Config"]
    assert image["Entrypoint"] == ["/ko-app/agent"]  # upstream's agent.Dockerfile (KServe sets only args)
    help_text = run(AGENT, "--help").stderr  # exit 0 (pflag's --help)
    assert all(flag in help_text for flag in ("--enable-puller", "--config-dir", "--model-dir", "--component-port"))
    assert built_from_pinned_kserve(AGENT, "/ko-app/agent", tmp_path)


@pytest.fixture(scope="module")
def predictor() -> dict:
    """The predictor container of our InferenceService as KServe builds its pod (project chart, default values)."""
    objects = helm.render()
    (isvc,) = [o for o in objects if o["kind"] == "InferenceService"]
    # No storageUri until the first model is deployed: KServe then takes it for a multi-model server and injects
    # the agent with --enable-puller (IsMMSPredictor in KServe's inferenceservice utils).
    assert "storageUri" not in isvc["spec"]["predictor"]["model"]
    (spec,) = [spec for where, spec in helm.pod_specs(objects) if where.endswith("/predictor")]
    return spec["containers"][0]


# A stand-in for the predictor in the agent's network namespace (the storage initializer image has Python): it
# serves on the predictor's port, then asks the agent's port (9081, once it listens), which must proxy to it.
STAND_IN = """
import http.server, sys, threading, time, urllib.error, urllib.request
class Predictor(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"predictor " + self.path.encode())
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Predictor)
threading.Thread(target=server.serve_forever, daemon=True).start()
for _ in range(50):
    try:
        print(urllib.request.urlopen("http://127.0.0.1:9081" + sys.argv[2], timeout=30).read().decode())
        break
    except urllib.error.URLError as error:
        failure = error
        time.sleep(0.2)
else:
    sys.exit(f"agent: {failure}")
"""


@needs_engine
def test_agent_starts_as_kserve_injects_it_beside_our_predictor(built, predictor, tmp_path):
    # What KServe's agent injector gives it: the puller flags with the model-config mount (a ConfigMap holding
    # models.json, "[]" while no TrainedModel exists) and the model dir, the predictor's first port, and the
    # predictor's readiness probe as SERVING_READINESS_PROBE (no queue-proxy in Standard mode).
    port = predictor["ports"][0]["containerPort"]
    configs, models = tmp_path / "configs", tmp_path / "models"
    configs.mkdir()
    (configs / "models.json").write_text("[]")
    models.mkdir(mode=0o777)
    models.chmod(0o777)  # an emptyDir: writable by the agent's uid 65532
    name = f"kserve-agent-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "--read-only", "--network", "none", *RESTRICTED,
           "-e", f"SERVING_READINESS_PROBE={json.dumps(predictor['readinessProbe'])}",
           "-v", f"{configs}:/mnt/configs:ro", "-v", f"{models}:/mnt/models", AGENT,
           "--enable-puller", "--config-dir", "/mnt/configs", "--model-dir", "/mnt/models",
           "--component-port", str(port))
    try:
        path = predictor["readinessProbe"]["httpGet"]["path"]
        proxied = docker("run", "--rm", "--network", f"container:{name}", *RESTRICTED, "--entrypoint", "python",
                         STORAGE_INITIALIZER, "-c", STAND_IN, str(port), path, check=False, timeout=120)
        logged = docker("logs", name)
        logs = logged.stdout + logged.stderr
        assert proxied.stdout.strip() == f"predictor {path}", proxied.stdout + proxied.stderr + logs
        assert "Starting puller" in logs and "Starting agent http server" in logs, logs
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        assert state["Running"], logs
    finally:
        docker("rm", "-f", name)
