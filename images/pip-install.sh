#!/bin/sh
# The two pip steps of the builder stage of the Python images (pipeline, model-server, webapp), run in /src by
#   RUN --mount=type=secret,id=ca,mode=0444,required=false sh pip-install.sh deps <extras>   (before the sources)
#   RUN --mount=type=secret,id=ca,mode=0444,required=false sh pip-install.sh project         (after them)
# Dependencies first, from pyproject.toml alone (empty packages stand in for the sources), so that a change of the
# sources rebuilds the small `project` layer only; that one installs the project itself, without its dependencies.
# The build's CA bundle (make passes the machine's when it trusts CAs of its own, e.g. an intercepting proxy's) is a
# BuildKit secret: pip sees it during these RUNs only (PIP_CERT is exported here, never set with ENV/ARG) and no
# layer keeps it; without it pip uses its own CAs.
set -eu

usage() { echo "usage: sh pip-install.sh deps <extras> | project" >&2; exit 2; }

if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi

case "${1-}" in
deps)
    [ $# -eq 2 ] || usage
    mkdir pipeline webapp
    touch README.md pipeline/__init__.py webapp/__init__.py
    /opt/venv/bin/pip install --only-binary=:all: --no-binary=titanic-mlops ".[$2]"
    rm -rf README.md pipeline webapp build *.egg-info
    ;;
project)
    [ $# -eq 1 ] || usage
    /opt/venv/bin/pip install --no-deps --force-reinstall --no-binary=titanic-mlops .
    ;;
*)
    usage
    ;;
esac
