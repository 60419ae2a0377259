#!/usr/bin/env bash
# /entrypoint of the local stand-in of apache/airflow (images/base/Dockerfile): the official entrypoint's dispatch
# only. `bash ...` and `python ...` run as given, `airflow X` and plain `X` run `airflow X`; no arguments: bash.
set -euo pipefail
case "${1:-}" in
  "") exec bash ;;
  bash | python) exec "$@" ;;
  airflow) shift; exec airflow "$@" ;;
  *) exec airflow "$@" ;;
esac
