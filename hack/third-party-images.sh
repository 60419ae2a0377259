#!/usr/bin/env bash
# The upstream images of `make cluster-up` built here for machines that reach no container registry (`make
# third-party-images-local`), tagged with the names the upstream charts use: kserve/kserve-controller, kserve/agent
# and quay.io/brancz/kube-rbac-proxy from the Go binaries make/third-party.mk builds from the Go module proxy
# (images/third-party/static.Dockerfile), kserve/storage-initializer from PyPI's kserve-storage on the project's
# Python base image (images/third-party/storage-initializer.Dockerfile). Prints one line per image.
#
# An image is built only when the engine lacks it: one of that name not built here (upstream's own, pulled where a
# registry is reachable) is kept; one built here from another recipe (binary, Dockerfile, pins, base image) is
# built again. Make passes the settings below.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${DOCKER:=docker}" "${BUILD_DIR:=$PWD/build/third-party}"
: "${KSERVE_VERSION:?}" "${PYTHON_BASE_IMAGE:?}" "${KSERVE_CONTROLLER_BIN:?}" "${KSERVE_AGENT_BIN:?}"
: "${KUBE_RBAC_PROXY_BIN:?}" "${KSERVE_CONTROLLER_IMAGE:?}" "${KSERVE_AGENT_IMAGE:?}" "${KUBE_RBAC_PROXY_IMAGE:?}"
: "${STORAGE_INITIALIZER_IMAGE:?}"
# BUILD_FLAGS: the flags of every `docker build` of make/images.mk (the build CA as a secret, network).
read -r -a docker <<< "$DOCKER"
read -r -a build_flags <<< "${BUILD_FLAGS:-}"
LABEL=org.titanic-mlops.recipe  # hash of what an image built here was built from
SRC=images/third-party

# build IMAGE RECIPE DOCKER-BUILD-ARGS...: docker build unless the engine has IMAGE (see above).
build() {
  local image=$1 recipe=$2 have old="" log=$BUILD_DIR/build.log start=$SECONDS; shift 2
  if have=$("${docker[@]}" image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$image" 2>/dev/null); then
    case $have in
      "$recipe") echo "have $image (built here from this recipe)"; return ;;
      "" | "<no value>") echo "have $image (not built here: kept)"; return ;;
    esac
    old=$("${docker[@]}" image inspect -f '{{.Id}}' "$image")
  fi
  DOCKER_BUILDKIT=1 "${docker[@]}" build --progress plain "${build_flags[@]}" --label "$LABEL=$recipe" \
    -t "$image" "$@" >"$log" 2>&1 || { tail -n 30 "$log" >&2; exit 1; }
  rm -f "$log"
  # The image of the older recipe, now untagged (kept while a container uses it).
  [ -z "$old" ] || "${docker[@]}" rmi "$old" >/dev/null 2>&1 || true
  echo "built $image in $((SECONDS - start)) s ($("${docker[@]}" image inspect -f '{{.Size}}' "$image" \
    | awk '{ printf "%.1f MB", $1 / 1e6 }'))"
}

# static TARGET BINARY IMAGE: an image of static.Dockerfile; its context holds the binary and the nonroot user's files.
static() {
  local target=$1 binary=$2 image=$3 ctx=$BUILD_DIR/context recipe
  recipe=$(cat hack/third-party-images.sh "$binary" "$SRC/static.Dockerfile" "$SRC/passwd" "$SRC/group" \
    <(echo "$target") | sha256sum | cut -c1-16)
  rm -rf "$ctx" && mkdir -p "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/rootfs/home" "$ctx/nonroot-home"
  chmod 1777 "$ctx/rootfs/tmp"
  cp "$SRC/passwd" "$SRC/group" "$ctx/rootfs/etc/"
  ln "$binary" "$ctx/binary" 2>/dev/null || cp "$binary" "$ctx/binary"  # a hard link: no 80 MB copy
  build "$image" "$recipe" -f "$SRC/static.Dockerfile" --target "$target" "$ctx"
  rm -rf "$ctx"
}

mkdir -p "$BUILD_DIR"
static kserve-controller "$KSERVE_CONTROLLER_BIN" "$KSERVE_CONTROLLER_IMAGE"
static kserve-agent "$KSERVE_AGENT_BIN" "$KSERVE_AGENT_IMAGE"
static kube-rbac-proxy "$KUBE_RBAC_PROXY_BIN" "$KUBE_RBAC_PROXY_IMAGE"
base_id=$("${docker[@]}" image inspect -f '{{.Id}}' "$PYTHON_BASE_IMAGE")
recipe=$(cat hack/third-party-images.sh "$SRC/storage-initializer.Dockerfile" "$SRC/initializer-entrypoint" \
  "$SRC/storage-initializer-constraints.txt" <(echo "$KSERVE_VERSION $base_id") | sha256sum | cut -c1-16)
build "$STORAGE_INITIALIZER_IMAGE" "$recipe" -f "$SRC/storage-initializer.Dockerfile" \
  --build-arg PYTHON_BASE_IMAGE="$PYTHON_BASE_IMAGE" --build-arg KSERVE_VERSION="$KSERVE_VERSION" "$SRC"
rmdir "$BUILD_DIR" 2>/dev/null || true
