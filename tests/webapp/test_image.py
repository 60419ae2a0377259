"""images/webapp/Dockerfile, read as text (no base image can be pulled here, so none is built).

The image's command itself runs in test_gunicorn.py.
"""

from __future__ import annotations

import json
import shlex
import subprocess

from tests.images.test_dockerfiles import (
    COMPILERS, PINS, ROOT, RUNS_PIP_INSTALL, arg_defaults, copied_sources, ignored, image_tag, instructions, stages,
)

DOCKERFILE = ROOT / "images" / "webapp" / "Dockerfile"


def test_css_stage_builder_stage_and_slim_final_stage_from_the_pins():
    global_args, *build = stages(instructions(DOCKERFILE))
    defaults = arg_defaults(global_args)
    assert defaults["PYTHON_BASE_IMAGE"] == PINS["PYTHON_BASE_IMAGE"]
    assert defaults["NODE_IMAGE"] == PINS["NODE_IMAGE"]
    assert [s[0][1] for s in build] == ["${NODE_IMAGE} AS css", "${PYTHON_BASE_IMAGE} AS builder", "${PYTHON_BASE_IMAGE}"]
    css, builder, final = build
    # Tailwind from the lockfile (npm ci), compiled at build time: no CDN at page load.
    assert any(op == "RUN" and "npm ci" in args for op, args in css)
    assert any(op == "RUN" and "tailwindcss -i assets/app.css -o static/app.css --minify" in args for op, args in css)
    assert ("COPY", "--from=css /src/webapp/static/app.css webapp/static/app.css") in builder
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in final
    assert not [args for op, args in final if op == "RUN" and (COMPILERS.search(args) or "pip install" in args
                                                              or RUNS_PIP_INSTALL.search(args) or "npm" in args)]


def test_final_stage_runs_gunicorn_as_uid_1000_with_multiprocess_metrics():
    final = stages(instructions(DOCKERFILE))[-1]
    assert any(op == "RUN" and "useradd --uid 1000" in args for op, args in final)
    assert [args for op, args in final if op == "USER"][-1] == "1000"
    command = json.loads([a for op, a in final if op == "ENTRYPOINT"][-1]) + json.loads([a for op, a in final if op == "CMD"][-1])
    assert command == ["gunicorn", "-c", "python:webapp.gunicorn_conf", "webapp:create_app()"]
    env = " ".join(args for op, args in final if op == "ENV")
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus" in env  # /tmp is the chart's writable emptyDir
    # The user has no home directory; gunicorn's control server puts its socket under HOME (read-only root fs).
    assert "HOME=/tmp" in env
    assert ("EXPOSE", "8000") in final


def test_build_context_holds_what_copy_needs_and_nothing_heavy():
    for source in copied_sources(instructions(DOCKERFILE)):
        for path in ROOT.glob(source.rstrip("/")):
            assert not ignored(DOCKERFILE, str(path.relative_to(ROOT))), source
        assert list(ROOT.glob(source.rstrip("/"))), source
    assert "images/pip-install.sh" in copied_sources(instructions(DOCKERFILE))  # the builder's pip steps
    for heavy in (".venv", ".git", "bin", "tests", "webapp/node_modules", "webapp/static/app.css"):
        assert ignored(DOCKERFILE, heavy), heavy


def test_make_target_passes_the_pins():
    dry_run = subprocess.run(["make", "-n", "webapp-image"], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=60).stdout
    args = shlex.split(dry_run.replace("\\\n", " "))
    assert f"titanic-webapp:{image_tag()}" in args
    assert f"PYTHON_BASE_IMAGE={PINS['PYTHON_BASE_IMAGE']}" in args and f"NODE_IMAGE={PINS['NODE_IMAGE']}" in args
