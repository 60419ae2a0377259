#!/usr/bin/env bash
# build.sh OUTDIR VERSION CMD...: build the Kubernetes commands of this wrapper module, version-stamped as
# Kubernetes' hack/lib/version.sh does (unstamped servers report v0.0.0-master and Helm refuses kubeVersion).
set -euo pipefail
out=$1 version=$2; shift 2
cd "$(dirname "$0")"
major=${version%%.*}; rest=${version#*.}; minor=${rest%%.*}
x=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  x+=" -X $pkg.gitVersion=v$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pkgs=(); for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w$x" -o "$tmp/" "${pkgs[@]}"
mkdir -p "$out"
for c in "$@"; do mv "$tmp/$c" "$out/$c-v$version"; ln -sf "$c-v$version" "$out/$c"; done
