#!/usr/bin/env bash
# build.sh OUT MODULE VERSION CMD [APP_VERSION]: build MODULE@VERSION's ./cmd/CMD into OUT from the Go module
# proxy. `go install MODULE/cmd/CMD@VERSION` refuses both: Prometheus' go.mod has a replace directive, and
# Alertmanager embeds ui/app/dist, a JavaScript build the module does not ship. So build inside a copy of the
# module (its own go.mod and go.sum, replace honoured) and give Alertmanager an empty UI page: the tests use
# the API only. Prometheus' UI is served from disk unless built with -tags builtinassets, so it needs nothing.
set -euo pipefail
out=$1 module=$2 version=$3 cmd=$4 app_version=${5:-${3#v}}
dir=$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
tmp=$(mktemp -d); trap 'chmod -R u+w "$tmp"; rm -rf "$tmp"' EXIT
cp -r "$dir/." "$tmp"; chmod -R u+w "$tmp"
if grep -qs '^//go:embed app/dist' "$tmp/ui/web.go" && [ ! -d "$tmp/ui/app/dist" ]; then
  mkdir -p "$tmp/ui/app/dist"
  echo '<!doctype html><title>Alertmanager</title><p>UI not built; use the API (/api/v2).' >"$tmp/ui/app/dist/index.html"
fi
x="-X github.com/prometheus/common/version.Version=$app_version -X github.com/prometheus/common/version.Branch=HEAD"
x+=" -X github.com/prometheus/common/version.Revision=$version -X github.com/prometheus/common/version.BuildDate=19700101-00:00:00"
(cd "$tmp" && CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=mod" go build -trimpath -ldflags "-s -w $x" -o "$tmp/$cmd.bin" "./cmd/$cmd")
mkdir -p "$(dirname "$out")"; mv "$tmp/$cmd.bin" "$out"
