"""The project images as `make images` builds them: `make test-images`, not part of `make test` (minutes of builds).

- No image carries a CA of the build machine's own (an intercepting proxy's, /usr/local/share/ca-certificates):
  builds get it as a BuildKit secret, and every member of `docker save` (each layer tar, each config with its
  history) is searched for the certificate's bytes, its base64 lines and its subject.
- The pipeline, model-server and web app images run as uid 1000 with a read-only root filesystem, as the chart
  runs them; the web app starts gunicorn there with nothing setting HOME but the image.
- The Airflow image runs as the chart's uid 50000 with the pinned Airflow and provider.
- hack/local-docker.sh (the private engine of `make local-docker-up`) leaves no process, mount, cgroup or file.

The Docker engine is DOCKER (default `docker`), e.g. DOCKER="$(hack/local-docker.sh docker)" after
`make local-docker-up`; without one every test here is skipped, naming what is missing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from tests.charts.helm import image_tag

ROOT = Path(__file__).resolve().parents[2]
DOCKER = shlex.split(os.environ.get("DOCKER") or "docker")
OWN_CAS = Path(os.environ.get("TITANIC_OWN_CA_DIR", "/usr/local/share/ca-certificates"))
HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
KINDS = ("pipeline", "model-server", "webapp", "airflow")


def _engine_problem() -> str | None:
    """Why no Docker engine can be used, or None."""
    if not shutil.which(DOCKER[0]):
        return f"no Docker client: {DOCKER[0]!r} is not on PATH (DOCKER={' '.join(DOCKER)!r})"
    try:
        answer = subprocess.run([*DOCKER, "version", "-f", "{{.Server.Version}}"], capture_output=True, text=True,
                                timeout=30)
    except subprocess.TimeoutExpired:
        return f"no Docker engine: `{' '.join(DOCKER)} version` hangs"
    if answer.returncode:
        reason = (answer.stderr.strip().splitlines() or ["no answer"])[-1]
        return (f"no Docker engine answers `{' '.join(DOCKER)} version` ({reason}); start one with "
                "`make local-docker-up` and pass DOCKER=\"$(hack/local-docker.sh docker)\"")
    return None


ENGINE_PROBLEM = _engine_problem()
needs_engine = pytest.mark.skipif(ENGINE_PROBLEM is not None, reason=ENGINE_PROBLEM or "")
pytestmark = pytest.mark.timeout(3600)  # a cold `make images` (stand-ins from debootstrap included) takes minutes


def docker(*args: str, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([*DOCKER, *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode:
        raise AssertionError(f"docker {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """kind -> image reference, built by `make images` (cached layers make a rebuild take seconds)."""
    tag = image_tag()
    build = subprocess.run(["make", "--no-print-directory", "images", f"DOCKER={' '.join(DOCKER)}", f"IMG_TAG={tag}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=3000)
    assert build.returncode == 0, f"make images failed:\n{build.stdout[-3000:]}\n{build.stderr[-5000:]}"
    refs = {kind: f"titanic-{kind}:{tag}" for kind in KINDS}
    for ref in refs.values():
        docker("image", "inspect", ref)
    return refs


# --- no CA of the build machine in any image ---------------------------------------------------------------

def _certificates(path: Path) -> list[bytes]:
    """DER of each PEM certificate in `path`."""
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", path.read_bytes(), re.S)
    return [base64.b64decode(b"".join(block.split())) for block in blocks]


def _needles(der: bytes) -> dict[str, bytes]:
    """What a copy of the certificate would contain: its DER, lines of its PEM (found wrapped or unwrapped), and
    its subject (DER, and the text of its attributes: a decoded or dumped copy)."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    b64 = base64.b64encode(der)
    lines = [b64[i:i + 64] for i in range(0, len(b64) - 63, 64)]
    needles = {"DER": der, "subject DER": cert.subject.public_bytes()}
    for index in (1, len(lines) // 2, len(lines) - 1):
        needles[f"PEM line {index + 1}"] = lines[index]
    for attribute in cert.subject:
        if len(str(attribute.value)) >= 8:  # long enough not to match by chance
            needles[f"subject {attribute.rfc4514_string()}"] = str(attribute.value).encode()
    return needles


def _scan(stream, needles: dict[str, bytes], chunk: int = 8 << 20) -> set[str]:
    """Names of the needles found in a binary stream (chunks overlap by the longest needle)."""
    overlap = max(map(len, needles.values())) - 1
    found, tail = set(), b""
    while block := stream.read(chunk):
        window = tail + block
        found.update(name for name, needle in needles.items() if name not in found and needle in window)
        tail = window[-overlap:] if overlap else b""
    return found


def _saved_members(refs: list[str], needles: dict[str, bytes]) -> tuple[dict[str, set[str]], list[dict]]:
    """`docker save` of all `refs` at once (shared layers once): the needles found in each member, and manifest.json."""
    hits, links, manifest = {}, {}, None
    with subprocess.Popen([*DOCKER, "save", *refs], stdout=subprocess.PIPE) as save:
        with tarfile.open(fileobj=save.stdout, mode="r|") as archive:
            for member in archive:
                if member.issym() or member.islnk():  # a layer saved once already: the same content
                    target = member.linkname if member.islnk() else \
                        posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
                    links[member.name] = target
                if not member.isfile():
                    continue
                data = archive.extractfile(member)
                if member.name == "manifest.json":
                    manifest = json.loads(data.read())
                    continue
                hits[member.name] = _scan(data, needles)
    assert save.returncode == 0, "docker save failed"
    hits.update({name: hits[target] for name, target in links.items()})
    assert manifest, "docker save wrote no manifest.json"
    return hits, manifest


@pytest.fixture(scope="module")
def own_cas() -> dict[str, dict[str, bytes]]:
    """The CAs this machine trusts beyond the public ones (what BUILD_CA_BUNDLE hands the builds), as needles."""
    if not HOST_BUNDLE.is_file():
        pytest.skip(f"no {HOST_BUNDLE}: the builds got no CA bundle (BUILD_CA_BUNDLE)")
    files = sorted(OWN_CAS.glob("**/*.crt")) if OWN_CAS.is_dir() else []
    cas = {f"{path.name}#{i}": _needles(der) for path in files for i, der in enumerate(_certificates(path))}
    if not cas:
        pytest.skip(f"this machine trusts no CA of its own ({OWN_CAS} has no certificate): the builds got no CA "
                    "secret, there is nothing to look for")
    return cas


def test_needles_find_the_machines_cas_in_its_bundle(own_cas):
    """Not vacuous: the needles of each own CA are found where the CA is (the machine's bundle, the secret)."""
    for name, needles in own_cas.items():
        pem_lines = {key: value for key, value in needles.items() if key.startswith("PEM line")}
        with HOST_BUNDLE.open("rb") as bundle:
            assert _scan(bundle, pem_lines) == set(pem_lines), name


@needs_engine
def test_no_image_contains_a_ca_of_the_build_machine(images, own_cas):
    needles = {f"{ca}: {what}": needle for ca, ca_needles in own_cas.items() for what, needle in ca_needles.items()}
    # A public root every image has (Debian's ca-certificates, certifi): proves each image's layers were read.
    roots = _certificates(HOST_BUNDLE)
    isrg = next((der for der in roots if b"ISRG Root X1" in der), roots[0])
    public = {"public root": base64.b64encode(isrg)[64:128]}
    hits, manifest = _saved_members(list(images.values()), {**needles, **public})
    leaks = {member: sorted(found - set(public)) for member, found in hits.items() if found - set(public)}
    assert not leaks, f"a CA of the build machine is in the images: {leaks}"
    for entry in manifest:
        (ref,) = entry["RepoTags"]
        members = [entry["Config"], *entry["Layers"]]
        assert set(members) <= set(hits), ref  # every layer and the config were searched
        assert any("public root" in hits[m] for m in entry["Layers"]), f"{ref}: no layer has the public root"


@needs_engine
def test_no_image_points_at_a_build_secret(images):
    """The CA reached the builds through /run/secrets only: no image's environment names it or a CA override."""
    for ref in images.values():
        config = json.loads(docker("image", "inspect", ref).stdout)[0]["Config"]
        env = dict(item.split("=", 1) for item in config.get("Env") or [])
        assert not {"PIP_CERT", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"} & set(env), ref
        assert not any("/run/secrets" in value for value in env.values()), ref


# --- users and read-only root filesystems ---------------------------------------------------------------------

# What the chart's pods run, with a read-only root filesystem (no /tmp: no emptyDir either, the strictest case).
READ_ONLY_COMMANDS = {
    "pipeline": ([], ["--help"], "ingest"),
    "model-server": ([], ["--help"], "predictor"),
    "webapp": (["--entrypoint", "python"], ["-c", "import gunicorn, webapp; print(gunicorn.__version__)"], "."),
}


@needs_engine
@pytest.mark.parametrize("kind", READ_ONLY_COMMANDS)
def test_image_runs_as_uid_1000_on_a_read_only_root(images, kind):
    ref = images[kind]
    assert json.loads(docker("image", "inspect", ref).stdout)[0]["Config"]["User"] == "1000"
    entrypoint, args, expected = READ_ONLY_COMMANDS[kind]
    run = docker("run", "--rm", "--read-only", "--user", "1000", "--network", "none", "--cap-drop", "ALL",
                 "--security-opt", "no-new-privileges", *entrypoint, ref, *args, check=False)
    assert run.returncode == 0, run.stderr
    assert expected in run.stdout + run.stderr
    ids = docker("run", "--rm", "--read-only", "--network", "none", "--entrypoint", "python", ref,
                 "-c", "import os; print(os.getuid(), os.getgid())").stdout.split()
    assert ids == ["1000", "1000"]  # the image's own user, without --user
    write = docker("run", "--rm", "--read-only", "--network", "none", "--entrypoint", "touch", ref, "/opt/venv/x",
                   check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr


@needs_engine
def test_webapp_serves_under_gunicorn_on_a_read_only_root(images):
    """As the chart runs it: read-only root, /tmp an emptyDir (tmpfs here), uid 1000, no HOME given by anyone
    but the image (gunicorn's control socket goes to $HOME/.gunicorn; without HOME=/tmp it would try /home/app)."""
    name = f"titanic-webapp-test-{os.getpid()}"
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp:mode=1777", "--user", "1000",
           "--network", "none", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", images["webapp"])
    try:
        probe = ("import urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2); "
                 "print(r.status)")
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            status = docker("exec", name, "python", "-c", probe, check=False)
            if status.returncode == 0:
                break
            time.sleep(1)
        logs = docker("logs", name)
        assert status.returncode == 0 and status.stdout.strip() == "200", f"{status.stderr}\n{logs.stderr}"
        env = docker("exec", name, "python", "-c", "import os; print(os.getuid(), os.environ['HOME'])").stdout.split()
        assert env == ["1000", "/tmp"]
        logs = docker("logs", name)
        text = logs.stdout + logs.stderr
        assert "Booting worker" in text
        for problem in ("Read-only file system", "Control server error", "Traceback"):
            assert problem not in text, text
    finally:
        docker("rm", "-f", name, check=False)


@needs_engine
def test_airflow_image_runs_as_the_charts_user_with_the_pinned_versions(images):
    from tests.charts.helm import versions

    pins = versions()
    ref = images["airflow"]
    assert json.loads(docker("image", "inspect", ref).stdout)[0]["Config"]["User"] == "50000"
    script = ("import os, importlib.metadata as m; print(os.getuid(), m.version('apache-airflow'), "
              "m.version('apache-airflow-providers-cncf-kubernetes'))")
    run = docker("run", "--rm", "--network", "none", ref, "python", "-c", script, timeout=120)
    assert run.stdout.split() == ["50000", pins["AIRFLOW_VERSION"], pins["AIRFLOW_PROVIDER_CNCF_K8S_VERSION"]]
    dags = docker("run", "--rm", "--network", "none", ref, "bash", "-c", "ls /opt/airflow/dags").stdout.split()
    assert dags and all(not name.endswith(".pyc") for name in dags)


# --- the private engine leaves the machine as it was ------------------------------------------------------------

def _cgroup_parent(root: Path) -> str:
    """The cgroup parent hack/local-docker.sh gives the engine of `root` (one per engine: `down` removes it)."""
    return "titanic-docker-" + hashlib.sha256(str(root).encode()).hexdigest()[:8]


def _engine_state(root: Path) -> dict:
    """What a dockerd could leave behind: its processes, mounts, cgroups, runtime files, links and iptables chains."""
    procs = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(root) in (proc / "cmdline").read_bytes().decode(errors="replace") and \
                        "Z" not in (proc / "stat").read_text().split(") ", 1)[1][:1]:
                    procs.append(proc.name)
            except OSError:
                pass
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(str(root)) or "docker" in line.split()[4]]
    chains = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout if shutil.which("iptables-save") else ""
    return {
        "processes": procs,
        "mounts": mounts,
        "cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"**/{_cgroup_parent(root)}")),
        "files": {p: os.path.exists(p) for p in ("/etc/docker", "/etc/docker/key.json", "/run/docker", "/var/lib/docker",
                                                   "/var/run/docker.sock", "/run/containerd", "/run/containerd/s")},
        "links": sorted(re.findall(r"^\d+: (docker\w*|br-\w+)[@:]", subprocess.run(
            ["ip", "-o", "link"], capture_output=True, text=True).stdout, re.M)),
        "docker chains": sorted(set(re.findall(r"^:(DOCKER[\w-]*)", chains, re.M))),
        "root exists": root.exists(),
    }


MISSING_FOR_PRIVATE_ENGINE = [what for what, ok in (
    ("root", os.geteuid() == 0),
    ("Debian's dockerd /usr/sbin/dockerd (make image-deps)", Path("/usr/sbin/dockerd").exists()),
    ("busybox, the one binary of the container it runs (apt-get install busybox-static)", shutil.which("busybox")),
) if not ok]


@pytest.mark.skipif(bool(MISSING_FOR_PRIVATE_ENGINE), reason=f"needs {', '.join(MISSING_FOR_PRIVATE_ENGINE)}")
def test_private_engine_leaves_the_machine_as_it_was():
    root = Path(tempfile.mkdtemp(prefix="titanic-docker-"))
    root.rmdir()
    before = _engine_state(root)
    script = str(ROOT / "hack" / "local-docker.sh")
    try:
        up = subprocess.run([script, "up", str(root)], capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr
        client = up.stdout.strip().removeprefix("DOCKER=").split()
        # A container exercises its cgroups, mounts and network namespace.
        with tempfile.TemporaryDirectory() as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            with tarfile.open(rootfs, "w") as tar:
                tar.add(shutil.which("busybox"), "bin/busybox")
            subprocess.run([*client, "import", str(rootfs), "probe:1"], check=True, capture_output=True, timeout=60)
        run = subprocess.run([*client, "run", "--rm", "--network", "none", "probe:1", "/bin/busybox", "echo", "ok"],
                             capture_output=True, text=True, timeout=60)
        assert run.stdout.strip() == "ok", run.stderr
        during = _engine_state(root)
        assert during["processes"] and root.exists()
        assert not during["docker chains"] and not during["links"]  # no bridge, no iptables rules, even while up
    finally:
        down = subprocess.run([script, "purge", str(root)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 10
    while _engine_state(root) != before and time.monotonic() < deadline:  # PID 1 reaps the last zombies late
        time.sleep(0.5)
    assert _engine_state(root) == before
