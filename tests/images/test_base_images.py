"""`make base-images` (hack/base-images.sh) decides what the project images build from, against a fake engine.

The fake `docker` records its calls, has the images listed in `present`, pulls those in `pullable` and fails
other pulls as an engine without a registry does. Nothing is built for real: tests/images/test_built_images.py
(`make test-images`) builds with a real engine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PINS = dict(line.split("=", 1) for line in (ROOT / "versions.env").read_text().splitlines()
            if line.strip() and not line.startswith("#"))
OFFICIAL = {"PYTHON_BASE_IMAGE": PINS["PYTHON_BASE_IMAGE"], "NODE_IMAGE": PINS["NODE_IMAGE"],
            "AIRFLOW_BASE_IMAGE": f"apache/airflow:{PINS['AIRFLOW_VERSION']}"}

FAKE_DOCKER = """#!/usr/bin/env bash
state=$(dirname "$0")
echo "$*" >> "$state/calls"
case "$1 $2" in
  "image inspect")
    case "$3" in titanic-base/debian-rootfs:*) exit 0 ;; esac  # debootstrap is not what is tested here
    while read -r image; do [[ "$3" == $image ]] && exit 0; done < "$state/present"; exit 1 ;;  # globs too
  "pull -q")
    if grep -qxF -- "$3" "$state/pullable"; then echo "$3" >> "$state/present"
    else echo 'Error response from daemon: Get "https://registry.invalid/v2/": dial tcp: lookup registry.invalid: no such host' >&2; exit 1; fi ;;
  "build --progress")
    while [ $# -gt 0 ]; do [ "$1" = -t ] && echo "$2" >> "$state/present"; shift; done ;;
  *) echo "fake docker: unexpected $*" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def engine(tmp_path):
    state = tmp_path / "engine"
    state.mkdir()
    (state / "docker").write_text(FAKE_DOCKER)
    (state / "docker").chmod(0o755)
    for name in ("calls", "present", "pullable"):
        (state / name).write_text("")
    return state


def base_images(engine: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "--no-print-directory", "base-images", f"DOCKER={engine / 'docker'}",
                           f"BASE_IMAGES_DIR={tmp_path / 'scratch'}", "BUILD_CA_BUNDLE=/ca/bundle.crt",
                           "BUILD_NETWORK=host", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "MAKEFLAGS": ""})


def resolved(result: subprocess.CompletedProcess) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def test_stand_ins_replace_only_the_images_that_cannot_be_pulled(engine, tmp_path):
    (engine / "pullable").write_text(OFFICIAL["NODE_IMAGE"] + "\n")
    result = base_images(engine, tmp_path)
    images = resolved(result)
    assert set(images) == set(OFFICIAL)
    assert images["NODE_IMAGE"] == OFFICIAL["NODE_IMAGE"]
    assert images["PYTHON_BASE_IMAGE"].startswith(f"titanic-base/python:3-{PINS['STANDIN_DEBIAN_SUITE']}-")
    assert images["AIRFLOW_BASE_IMAGE"].startswith(f"titanic-base/airflow:{PINS['AIRFLOW_VERSION']}-")
    # stderr says which official image could not be pulled and what replaces it
    for name in ("PYTHON_BASE_IMAGE", "AIRFLOW_BASE_IMAGE"):
        assert f"{OFFICIAL[name]} cannot be pulled (no such host)" in result.stderr
        assert f"local stand-in {images[name]}" in result.stderr
    assert OFFICIAL["NODE_IMAGE"] not in result.stderr
    builds = [call for call in (engine / "calls").read_text().splitlines() if call.startswith("build")]
    assert [b.split("--target ")[1].split()[0] for b in builds] == ["python", "airflow"]
    for build in builds:  # the same flags as the project images: the CA as a secret, host network
        assert "--secret id=ca,src=/ca/bundle.crt --network host" in build
        assert "-f images/base/Dockerfile" in build and "DEBIAN_ROOTFS=titanic-base/debian-rootfs:" in build
        for pin in ("AIRFLOW_VERSION", "AIRFLOW_PROVIDER_CNCF_K8S_VERSION"):
            assert f"--build-arg {pin}={PINS[pin]}" in build
    assert not (tmp_path / "scratch").exists()  # its context and logs are gone

    # A second run finds the stand-ins and builds nothing.
    (engine / "calls").write_text("")
    assert resolved(base_images(engine, tmp_path)) == images
    assert not [call for call in (engine / "calls").read_text().splitlines() if call.startswith("build")]


def test_images_the_engine_has_are_used_without_a_pull(engine, tmp_path):
    (engine / "present").write_text("".join(f"{image}\n" for image in OFFICIAL.values()))
    assert resolved(base_images(engine, tmp_path)) == OFFICIAL
    assert not [call for call in (engine / "calls").read_text().splitlines() if not call.startswith("image inspect")]


def test_official_mode_fails_instead_of_building_a_stand_in(engine, tmp_path):
    result = base_images(engine, tmp_path, "BASE_IMAGES=official")
    assert result.returncode != 0
    assert f"{OFFICIAL['PYTHON_BASE_IMAGE']} cannot be pulled" in result.stderr
    assert not [call for call in (engine / "calls").read_text().splitlines() if call.startswith("build")]


def test_local_mode_tries_no_pull(engine, tmp_path):
    (engine / "pullable").write_text("".join(f"{image}\n" for image in OFFICIAL.values()))
    (engine / "present").write_text("titanic-base/node:*\n")  # building it would fetch Node with npm
    images = resolved(base_images(engine, tmp_path, "BASE_IMAGES=local"))
    assert set(images) == set(OFFICIAL) and all(image.startswith("titanic-base/") for image in images.values())
    assert not [call for call in (engine / "calls").read_text().splitlines() if call.startswith("pull")]
