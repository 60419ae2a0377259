"""The pipeline and Airflow Dockerfiles, read as text, and images/pip-install.sh, the pip steps of the
builder stages of the three Python images.

No image can be built here (no base image can be pulled), so the rules an image must keep are
checked on the Dockerfile itself: base images pinned through ARGs whose defaults are the pins of
versions.env, a builder stage and a slim final stage, a numeric non-root USER, the entrypoint, and
build contexts that contain what the COPY lines need.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.charts.helm import image_tag

ROOT = Path(__file__).resolve().parents[2]
PINS = dict(line.split("=", 1) for line in (ROOT / "versions.env").read_text().splitlines()
            if line.strip() and not line.startswith("#"))
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|python3?-dev|libpq-dev)\b")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(parts[0].upper(), parts[1].strip() if len(parts) > 1 else "")
            for parts in (line.strip().split(None, 1) for line in text.splitlines() if line.strip())]


def stages(steps: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage; stage 0 holds the global ARGs before the first FROM."""
    grouped = [[]]
    for step in steps:
        if step[0] == "FROM":
            grouped.append([])
        grouped[-1].append(step)
    return grouped


def arg_defaults(steps) -> dict[str, str]:
    return dict(args.split("=", 1) for op, args in steps if op == "ARG" and "=" in args)


def ignored(dockerfile: Path, path: str, ignore_file: Path | None = None) -> bool:
    """Whether the Dockerfile's own .dockerignore (BuildKit: <Dockerfile>.dockerignore), or `ignore_file`,
    drops `path`."""
    result = False
    ignore_file = ignore_file or dockerfile.with_name(dockerfile.name + ".dockerignore")
    for pattern in ignore_file.read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate, pattern = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or (
                pattern.startswith("**/") and any(fnmatch.fnmatch(part, pattern[3:]) for part in path.split("/"))):
            result = not negate
    return result


def copied_sources(steps) -> list[str]:
    sources = []
    for op, args in steps:
        if op == "COPY" and "--from=" not in args:
            sources += [a for a in args.split() if not a.startswith("--")][:-1]
    return sources


PIPELINE = ROOT / "images" / "pipeline" / "Dockerfile"
AIRFLOW = ROOT / "images" / "airflow" / "Dockerfile"
MODEL_SERVER = ROOT / "images" / "model-server" / "Dockerfile"
WEBAPP = ROOT / "images" / "webapp" / "Dockerfile"
# The builder stages of the Python images run their two pip steps with this script (copied in with pyproject.toml).
PIP_INSTALL = ROOT / "images" / "pip-install.sh"
RUNS_PIP_INSTALL = re.compile(r"\bsh pip-install\.sh\b")
CA_EXPORT = r"if \[ -s /run/secrets/ca \]; then export (PIP_CERT|NODE_EXTRA_CA_CERTS)=/run/secrets/ca; fi"


def test_pipeline_image_is_a_slim_two_stage_build_from_the_pinned_base():
    steps = instructions(PIPELINE)
    global_args, *build = stages(steps)
    assert arg_defaults(global_args)["PYTHON_BASE_IMAGE"] == PINS["PYTHON_BASE_IMAGE"]
    assert [s[0][1] for s in build] == ["${PYTHON_BASE_IMAGE} AS builder", "${PYTHON_BASE_IMAGE}"]
    builder, final = build
    assert any(op == "RUN" and "python -m venv /opt/venv" in args for op, args in builder)
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    # nothing is compiled or installed in the final stage, so it carries no toolchain
    assert not [args for op, args in final if op == "RUN" and (COMPILERS.search(args) or "pip install" in args
                                                              or RUNS_PIP_INSTALL.search(args))]


def test_pipeline_image_runs_the_cli_as_uid_1000():
    final = stages(instructions(PIPELINE))[-1]
    assert any(op == "RUN" and "useradd --uid 1000" in args for op, args in final)
    assert [args for op, args in final if op == "USER"][-1] == "1000"
    assert json.loads([args for op, args in final if op == "ENTRYPOINT"][-1]) == ["python", "-m", "pipeline"]


def test_airflow_image_is_the_pinned_official_image_with_the_dags():
    steps = instructions(AIRFLOW)
    global_args, *build = stages(steps)
    assert arg_defaults(global_args)["AIRFLOW_VERSION"] == PINS["AIRFLOW_VERSION"]
    # the official image by default; make passes a local stand-in where it cannot be pulled
    assert arg_defaults(global_args)["AIRFLOW_BASE_IMAGE"] == "apache/airflow:${AIRFLOW_VERSION}"
    ((_, base),) = [s[0] for s in build]
    assert base == "${AIRFLOW_BASE_IMAGE}"
    (final,) = build
    defaults = arg_defaults(final)
    assert defaults["AIRFLOW_PROVIDER_CNCF_K8S_VERSION"] == PINS["AIRFLOW_PROVIDER_CNCF_K8S_VERSION"]
    assert "IMG_TAG" not in defaults and ("ARG", "IMG_TAG") in final  # no default: make passes the commit's tag
    (install,) = [args for op, args in final if op == "RUN" and "pip install" in args]
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in install  # pip may not move Airflow for the provider
    assert '"apache-airflow-providers-cncf-kubernetes==${AIRFLOW_PROVIDER_CNCF_K8S_VERSION}"' in install
    assert any(op == "COPY" and args.endswith("dags/ /opt/airflow/dags/") for op, args in final)
    assert ("ENV", "TITANIC_PIPELINE_IMAGE=titanic-pipeline:${IMG_TAG}") in final
    user = [args for op, args in final if op == "USER"][-1]
    assert user.isdigit() and int(user) != 0  # numeric, so the kubelet can enforce runAsNonRoot
    assert not [op for op, _ in final if op in ("ENTRYPOINT", "CMD")]  # the chart relies on the official entrypoint


@pytest.mark.parametrize("dockerfile", [PIPELINE, AIRFLOW], ids=["pipeline", "airflow"])
def test_build_context_holds_what_copy_needs_and_no_venv(dockerfile):
    for source in copied_sources(instructions(dockerfile)):
        assert (ROOT / source).exists(), source
        assert not ignored(dockerfile, source.rstrip("/")), source
    for heavy in (".venv", ".venv-airflow", ".git", "bin", "tests"):
        assert ignored(dockerfile, heavy), heavy


def test_dockerignore_reader_is_not_vacuous():
    assert ignored(PIPELINE, "webapp") and not ignored(PIPELINE, "pipeline")
    assert ignored(PIPELINE, "pipeline/__pycache__/x.pyc")
    # the Python images' context gets the builder's script from images/, nothing else from there
    assert not ignored(PIPELINE, "images/pip-install.sh") and ignored(PIPELINE, "images/pipeline/Dockerfile")


def builder_stage(dockerfile: Path) -> list[tuple[str, str]]:
    (builder,) = [s for s in stages(instructions(dockerfile)) if s[0][1].endswith(" AS builder")]
    return builder


@pytest.mark.parametrize("dockerfile, extras", [(PIPELINE, '"${PIPELINE_EXTRAS}"'), (MODEL_SERVER, "serving"),
                                                (WEBAPP, "web")], ids=["pipeline", "model-server", "webapp"])
def test_python_builders_install_the_dependencies_before_the_sources(dockerfile, extras):
    """Dependencies from pyproject.toml alone (+ the script), then the sources, then the project without its
    dependencies: a change of the sources rebuilds the small last layer only. Both steps are the shared script."""
    builder = builder_stage(dockerfile)
    deps, project = [i for i, (op, args) in enumerate(builder) if op == "RUN" and RUNS_PIP_INSTALL.search(args)]
    assert builder[deps] == ("RUN", f"{CA_SECRET} sh pip-install.sh deps {extras}")
    assert builder[project] == ("RUN", f"{CA_SECRET} sh pip-install.sh project")
    copies = [i for i, (op, _) in enumerate(builder) if op == "COPY"]
    # all the dependencies layer reads is pyproject.toml and the script, copied in together before it
    assert [builder[i] for i in copies if i < deps] == [("COPY", "pyproject.toml images/pip-install.sh ./")]
    assert ("COPY", "README.md ./") in builder and ("COPY", "pipeline/ pipeline/") in builder
    assert all(deps < i < project for i in copies if i > deps)  # the sources, between the two steps
    assert not [args for op, args in builder if op == "RUN" and "pip install" in args]  # no inline pip step left
    if "PIPELINE_EXTRAS" in extras:
        assert builder.index(("ARG", "PIPELINE_EXTRAS=deploy,explain")) < deps


def test_make_targets_pass_the_pins_as_build_args():
    dry_run = subprocess.run(["make", "-n", "pipeline-image", "airflow-image"], cwd=ROOT, capture_output=True,
                             text=True, check=True, timeout=60).stdout
    assert f"-t titanic-pipeline:{image_tag()}" in dry_run
    assert f"--build-arg PYTHON_BASE_IMAGE={PINS['PYTHON_BASE_IMAGE']}" in dry_run
    assert f"-t titanic-airflow:{image_tag()}" in dry_run
    assert f"--build-arg IMG_TAG={image_tag()}" in dry_run
    assert f"--build-arg AIRFLOW_BASE_IMAGE=apache/airflow:{PINS['AIRFLOW_VERSION']}" in dry_run
    for pin in ("AIRFLOW_VERSION", "AIRFLOW_PROVIDER_CNCF_K8S_VERSION"):
        assert f"--build-arg {pin}={PINS[pin]}" in dry_run


def test_image_tag_changes_with_every_change_of_content(tmp_path):
    """A rebuilt image never reuses a tag the cluster runs: clean tree -> the commit; any change -> a new tag."""
    script = tmp_path / "hack" / "image-tag.sh"
    script.parent.mkdir()
    script.write_bytes((ROOT / "hack" / "image-tag.sh").read_bytes())
    script.chmod(0o755)
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,
                                    check=True, capture_output=True, text=True).stdout.strip()
    tag = lambda: subprocess.run([str(script)], capture_output=True, text=True, check=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "app.py").write_text("a = 1\n")
    git("add", ".")
    git("commit", "-qm", "one")
    clean = tag()
    assert clean == git("rev-parse", "--short=12", "HEAD")
    (tmp_path / "app.py").write_text("a = 2\n")
    first = tag()
    (tmp_path / "app.py").write_text("a = 3\n")
    second = tag()
    (tmp_path / "new.py").write_text("b = 1\n")  # untracked files are built into images too
    third = tag()
    assert first.startswith(clean + "-dirty-") and len({first, second, third}) == 3
    (tmp_path / "new.py").unlink()
    (tmp_path / "app.py").write_text("a = 1\n")
    assert tag() == clean


def test_root_dockerignore_keeps_the_classic_builder_context_small_and_complete():
    """Docker's classic builder reads only the root .dockerignore: it must drop the heavy folders (1.4 GB of
    .venv was sent before it existed) and keep everything any Dockerfile copies."""
    root_ignore = ROOT / ".dockerignore"
    for heavy in (".venv", ".venv-airflow", ".git", "bin", "build", "webapp/node_modules", "pipeline/__pycache__"):
        assert ignored(PIPELINE, heavy, root_ignore), heavy
    # images/base (the local stand-ins of the base images) builds from a context hack/base-images.sh makes
    dockerfiles = sorted(p for p in (ROOT / "images").glob("*/Dockerfile") if p.parent.name != "base")
    assert len(dockerfiles) == 4
    for dockerfile in dockerfiles:
        for source in copied_sources(instructions(dockerfile)):
            assert not ignored(dockerfile, source.rstrip("/"), root_ignore), (dockerfile.parent.name, source)


DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
CA_SECRET = "--mount=type=secret,id=ca,mode=0444,required=false"
CA_VARIABLES = ("PIP_CERT", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_downloads_get_the_build_ca_as_a_secret_and_no_image_keeps_it(dockerfile):
    """Every RUN that downloads over HTTPS (pip, npm, images/pip-install.sh) mounts the build's CA bundle as an
    optional BuildKit secret (absent on a machine without a proxy: the RUN uses its own CAs) and points its
    download tool at it inside the RUN only (inline, or in the script: test below); no instruction copies a CA
    into an image or points an image's environment at one. tests/images/test_built_images.py checks the built
    layers."""
    downloads = 0
    for op, args in instructions(dockerfile):
        if op == "RUN" and (re.search(r"\bpip install\b|\bnpm (ci|install)\b", args) or RUNS_PIP_INSTALL.search(args)):
            downloads += 1
            assert args.startswith(CA_SECRET), args
        if op == "RUN" and CA_SECRET in args:
            assert RUNS_PIP_INSTALL.search(args) or re.search(CA_EXPORT + ";", args), args
        if op in ("COPY", "ADD"):
            assert not re.search(r"\.(crt|pem)\b|ca-certificates", args), args
        if op in ("ENV", "ARG"):
            assert not any(name in args for name in CA_VARIABLES), args
    assert downloads, "no download step found: the check above would be vacuous"


def pip_install_script(tmp_path: Path, ca: str | None) -> tuple[Path, Path]:
    """images/pip-install.sh in a fake /src (tmp_path/src, with pyproject.toml) whose pip and CA secret live in
    tmp_path; the fake pip logs PIP_CERT, its arguments and the folder it sees, and leaves build/ and an
    egg-info as setuptools does. Returns (src, log)."""
    src, log, pip, secret = tmp_path / "src", tmp_path / "pip.log", tmp_path / "pip", tmp_path / "ca"
    src.mkdir()
    (src / "pyproject.toml").write_text("[project]\n")
    text = PIP_INSTALL.read_text()
    assert text.count("/opt/venv/bin/pip ") == 2 and text.count("/run/secrets/ca") == 2
    (src / "pip-install.sh").write_text(text.replace("/opt/venv/bin/pip ", f"{pip} ")
                                        .replace("/run/secrets/ca", str(secret)))
    pip.write_text(f'#!/bin/sh\n{{ echo "PIP_CERT=${{PIP_CERT-}}"; echo "$*"; ls -A | tr "\\n" " "; echo; }} >>{log}\n'
                   'mkdir -p build titanic_mlops.egg-info\n')
    pip.chmod(0o755)
    if ca is not None:
        secret.write_text(ca)
    return src, log


@pytest.mark.parametrize("ca", [None, "", "-----BEGIN CERTIFICATE-----\n"], ids=["no-secret", "empty", "bundle"])
def test_pip_install_script_deps_then_project(tmp_path, ca):
    src, log = pip_install_script(tmp_path, ca)
    env = {k: v for k, v in os.environ.items() if k not in CA_VARIABLES}  # as in a build: no CA variable set
    sh = lambda *a: subprocess.run(["sh", "pip-install.sh", *a], cwd=src, env=env, capture_output=True, text=True,
                                   timeout=30)
    cert = f"PIP_CERT={tmp_path / 'ca'}" if ca else "PIP_CERT="
    deps = sh("deps", "deploy,explain")
    assert deps.returncode == 0, deps.stderr
    # pip saw the empty stand-ins of the sources; they and pip's leftovers are gone, the script stays
    cert_seen, args, folder = log.read_text().splitlines()
    assert (cert_seen, args) == (cert, "install --only-binary=:all: --no-binary=titanic-mlops .[deploy,explain]")
    assert sorted(folder.split()) == ["README.md", "pip-install.sh", "pipeline", "pyproject.toml", "webapp"]
    assert sorted(p.name for p in src.iterdir()) == ["pip-install.sh", "pyproject.toml"]
    log.unlink()
    project = sh("project")
    assert project.returncode == 0, project.stderr
    assert log.read_text().splitlines()[:2] == [cert, "install --no-deps --force-reinstall --no-binary=titanic-mlops ."]


def test_pip_install_script_refuses_anything_else(tmp_path):
    src, log = pip_install_script(tmp_path, None)
    for args in ([], ["bogus"], ["deps"], ["deps", "web", "x"], ["project", "x"]):
        result = subprocess.run(["sh", "pip-install.sh", *args], cwd=src, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and result.stderr.startswith("usage: "), (args, result)
        assert not log.exists() and sorted(p.name for p in src.iterdir()) == ["pip-install.sh", "pyproject.toml"]


def test_no_dockerfile_needs_a_frontend_from_a_registry():
    """RUN --mount works with the Dockerfile frontend built into the engine (Docker 20.10 included); a
    `# syntax=` line would pull a frontend image, which a machine without a registry cannot."""
    for dockerfile in DOCKERFILES:
        assert not re.search(r"^#\s*syntax\s*=", dockerfile.read_text(), re.M | re.I), dockerfile


def test_builds_get_buildkit_and_the_ca_secret_only_when_there_is_a_bundle(tmp_path):
    bundle = tmp_path / "ca.crt"
    bundle.write_text("")
    run = lambda *extra: subprocess.run(["make", "-n", "pipeline-image", "model-server-image", "webapp-image",
                                         "airflow-image", *extra], cwd=ROOT, capture_output=True, text=True,
                                        check=True, timeout=60).stdout
    with_ca = run(f"BUILD_CA_BUNDLE={bundle}", "BUILD_NETWORK=host")
    builds = [line for line in with_ca.splitlines() if " build " in line]
    assert len(builds) == 4
    for line in builds:
        assert line.startswith("DOCKER_BUILDKIT=1 docker build ")
        assert f"--secret id=ca,src={bundle}" in line and "--network host" in line
    assert "--secret" not in run("BUILD_CA_BUNDLE=")
    # every image target builds with the engine DOCKER names (a private one: hack/local-docker.sh)
    private = run("DOCKER=/usr/bin/docker -H unix:///x/docker.sock")
    assert [line.split(" build ")[0] for line in private.splitlines() if " build " in line] == \
        ["DOCKER_BUILDKIT=1 /usr/bin/docker -H unix:///x/docker.sock"] * 4
