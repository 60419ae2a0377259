"""The model-server Dockerfile, read as text (no base image can be pulled here, so nothing is built)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.images.test_dockerfiles import (COMPILERS, PINS, ROOT, RUNS_PIP_INSTALL, arg_defaults, copied_sources,
                                         ignored, image_tag, instructions, stages)

DOCKERFILE = ROOT / "images" / "model-server" / "Dockerfile"


def test_two_stage_build_from_the_pinned_base_with_the_serving_extra():
    global_args, builder, final = stages(instructions(DOCKERFILE))
    assert arg_defaults(global_args)["PYTHON_BASE_IMAGE"] == PINS["PYTHON_BASE_IMAGE"]
    assert builder[0][1] == "${PYTHON_BASE_IMAGE} AS builder" and final[0][1] == "${PYTHON_BASE_IMAGE}"
    # The builder's layer order (the `serving` extra from pyproject.toml first, then the sources) and the script's
    # pip steps: tests/images/test_dockerfiles.py, for all three Python images.
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    assert not [args for op, args in final if op == "RUN" and (COMPILERS.search(args) or "pip install" in args
                                                              or RUNS_PIP_INSTALL.search(args))]


def test_non_root_with_the_serving_entrypoint_on_kserve_port():
    final = stages(instructions(DOCKERFILE))[-1]
    assert any(op == "RUN" and "useradd --uid 1000" in args for op, args in final)
    assert [args for op, args in final if op == "USER"][-1] == "1000"
    assert json.loads([args for op, args in final if op == "ENTRYPOINT"][-1]) == ["python", "-m", "pipeline.serving"]
    assert ("EXPOSE", "8080") in final


def test_build_context_holds_the_package_and_nothing_heavy():
    for source in copied_sources(instructions(DOCKERFILE)):
        assert (ROOT / source).exists() and not ignored(DOCKERFILE, source.rstrip("/")), source
    for heavy in (".venv", ".git", "bin", "tests", "webapp", "bench"):
        assert ignored(DOCKERFILE, heavy), heavy


def test_make_target_builds_the_contract_image_name():
    dry_run = subprocess.run(["make", "-n", "model-server-image"], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=60).stdout
    assert f"-f images/model-server/Dockerfile -t titanic-model-server:{image_tag()}" in dry_run
    assert f"--build-arg PYTHON_BASE_IMAGE={PINS['PYTHON_BASE_IMAGE']}" in dry_run


def test_entrypoint_help_lists_both_roles_and_kserve_args():
    out = subprocess.run([sys.executable, "-m", "pipeline.serving", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for needle in ("{predictor,transformer}", "--predictor_host", "--http_port", "--model_dir", "--runtime"):
        assert needle in out.stdout, needle
