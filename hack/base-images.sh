#!/usr/bin/env bash
# The base images of the project's Dockerfiles, for `make images`: prints the build args to use, one NAME=image
# per line on stdout (PYTHON_BASE_IMAGE, NODE_IMAGE, AIRFLOW_BASE_IMAGE); everything else goes to stderr.
#
# BASE_IMAGES=auto (default): each official image is used when the engine has it or can pull it; one that cannot
#   be pulled (no registry reachable) is replaced by a local stand-in (images/base/Dockerfile), built unless the
#   engine has it, and stderr says so.
# BASE_IMAGES=official: the official images or an error.  BASE_IMAGES=local: the stand-ins, no pull tried.
#
# The stand-ins start from `debootstrap --variant=minbase` (root, package debootstrap; `make image-deps`) imported
# into the engine; they are tagged titanic-base/*:<versions>-<hash of their recipe>, so a changed recipe or pin
# builds new ones. Make passes the settings below from versions.env and make/images.mk.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${DOCKER:=docker}" "${BASE_IMAGES:=auto}" "${BASE_IMAGES_DIR:=$PWD/build/base-images}"
: "${PYTHON_BASE_IMAGE:?}" "${NODE_IMAGE:?}" "${AIRFLOW_BASE_IMAGE:?}"
: "${STANDIN_DEBIAN_SUITE:?}" "${STANDIN_DEBIAN_MIRROR:=}" "${STANDIN_NODE_VERSION:?}" "${STANDIN_NPM_VERSION:?}"
: "${AIRFLOW_VERSION:?}" "${AIRFLOW_PROVIDER_CNCF_K8S_VERSION:?}" "${PIP_VERSION:?}"
# BUILD_FLAGS: the flags of every `docker build` of make/images.mk (CA secret, network).
read -r -a docker <<< "$DOCKER"
read -r -a build_flags <<< "${BUILD_FLAGS:-}"

say() { echo "base-images: $*" >&2; }
has() { "${docker[@]}" image inspect "$1" >/dev/null 2>&1; }

recipe=$( { printf '%s\n' "$STANDIN_DEBIAN_SUITE" "$STANDIN_DEBIAN_MIRROR" "$STANDIN_NODE_VERSION" "$STANDIN_NPM_VERSION" \
  "$AIRFLOW_VERSION" "$AIRFLOW_PROVIDER_CNCF_K8S_VERSION" "$PIP_VERSION"; \
  cat hack/base-images.sh images/base/Dockerfile images/base/airflow-entrypoint.sh; } | sha256sum | cut -c1-10)
ROOTFS=titanic-base/debian-rootfs:$STANDIN_DEBIAN_SUITE-$recipe
declare -A STANDIN=(
  [python]=titanic-base/python:3-$STANDIN_DEBIAN_SUITE-$recipe
  [node]=titanic-base/node:$STANDIN_NODE_VERSION-$STANDIN_DEBIAN_SUITE-$recipe
  [airflow]=titanic-base/airflow:$AIRFLOW_VERSION-$recipe
)

# The root filesystem of the suite (minbase: essential packages and apt), imported as one layer.
rootfs() {
  has "$ROOTFS" && return
  command -v debootstrap >/dev/null || { say "debootstrap is missing: make image-deps"; exit 1; }
  [ "$(id -u)" = 0 ] || { say "debootstrap needs root"; exit 1; }
  local target=$BASE_IMAGES_DIR/rootfs start=$SECONDS
  # debootstrap mounts /proc and /sys into the target while it runs: unmount whatever is left, always.
  cleanup() {
    awk -v d="$target/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
    rm -rf "$target"
  }
  trap cleanup EXIT
  cleanup
  mkdir -p "$target"
  say "debootstrap --variant=minbase $STANDIN_DEBIAN_SUITE (log: $BASE_IMAGES_DIR/debootstrap.log)"
  # The image's apt sources come from the mirror written into the root filesystem here.
  debootstrap --variant=minbase "$STANDIN_DEBIAN_SUITE" "$target" ${STANDIN_DEBIAN_MIRROR:+"$STANDIN_DEBIAN_MIRROR"} \
    >"$BASE_IMAGES_DIR/debootstrap.log" 2>&1 || { tail -n 20 "$BASE_IMAGES_DIR/debootstrap.log" >&2; exit 1; }
  say "debootstrap took $((SECONDS - start)) s"
  rm -f "$BASE_IMAGES_DIR/debootstrap.log"
  rm -rf "$target"/var/cache/apt/archives/*.deb "$target"/var/lib/apt/lists/* "$target"/debootstrap
  tar --numeric-owner -C "$target" -c --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' . \
    | "${docker[@]}" import -m "debootstrap --variant=minbase $STANDIN_DEBIAN_SUITE" - "$ROOTFS" >/dev/null
  cleanup
  trap - EXIT
}

# node/ of the build context: the official Node binary (npm package node-linux-<arch>) and npm, as /usr/local.
node_tree() {
  local ctx=$1 arch tmp
  case "$(uname -m)" in x86_64) arch=x64 ;; aarch64) arch=arm64 ;; *) say "no Node package for $(uname -m)"; exit 1 ;; esac
  command -v npm >/dev/null || { say "npm is missing (make system-deps): it fetches Node $STANDIN_NODE_VERSION"; exit 1; }
  tmp=$(mktemp -d)
  # npm pack checks each tarball against the registry's integrity hash.
  (cd "$tmp" && npm pack -q "node-linux-$arch@$STANDIN_NODE_VERSION" "npm@$STANDIN_NPM_VERSION" >/dev/null)
  mkdir -p "$ctx/node/lib/node_modules/npm" "$ctx/node/bin"
  tar -xzf "$tmp/node-linux-$arch-$STANDIN_NODE_VERSION.tgz" -C "$ctx/node" --strip-components=1 package/bin/node package/LICENSE
  tar -xzf "$tmp/npm-$STANDIN_NPM_VERSION.tgz" -C "$ctx/node/lib/node_modules/npm" --strip-components=1
  mv "$ctx/node/LICENSE" "$ctx/node/lib/node_modules/NODE-LICENSE"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$ctx/node/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$ctx/node/bin/npx"
  rm -rf "$tmp"
}

standin() {
  local kind=$1 tag=${STANDIN[$1]} ctx log start=$SECONDS
  if has "$tag"; then echo "$tag"; return; fi
  rootfs
  ctx=$BASE_IMAGES_DIR/context
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp images/base/airflow-entrypoint.sh "$ctx/"
  [ "$kind" != node ] || node_tree "$ctx"
  log=$BASE_IMAGES_DIR/$kind.log
  say "building the stand-in $tag (log: $log)"
  DOCKER_BUILDKIT=1 "${docker[@]}" build --progress plain "${build_flags[@]}" -f images/base/Dockerfile \
    --target "$kind" -t "$tag" --build-arg DEBIAN_ROOTFS="$ROOTFS" --build-arg DEBIAN_SUITE="$STANDIN_DEBIAN_SUITE" \
    --build-arg AIRFLOW_VERSION="$AIRFLOW_VERSION" \
    --build-arg AIRFLOW_PROVIDER_CNCF_K8S_VERSION="$AIRFLOW_PROVIDER_CNCF_K8S_VERSION" \
    --build-arg PIP_VERSION="$PIP_VERSION" "$ctx" >"$log" 2>&1 || { tail -n 30 "$log" >&2; exit 1; }
  rm -rf "$ctx" "$log"
  say "built $tag in $((SECONDS - start)) s"
  echo "$tag"
}

# resolve NAME OFFICIAL KIND: print NAME=<the image to build from>.
resolve() {
  local name=$1 official=$2 kind=$3 err
  if [ "$BASE_IMAGES" != local ]; then
    if has "$official"; then echo "$name=$official"; return; fi
    if err=$("${docker[@]}" pull -q "$official" 2>&1 >/dev/null); then echo "$name=$official"; return; fi
    if [ "$BASE_IMAGES" = official ]; then say "$official cannot be pulled: $err"; exit 1; fi
    say "$official cannot be pulled (${err##*: }): building from the local stand-in ${STANDIN[$kind]} instead"
  fi
  echo "$name=$(standin "$kind")"
}

case "$BASE_IMAGES" in auto | official | local) ;; *) say "BASE_IMAGES=$BASE_IMAGES: auto, official or local"; exit 2 ;; esac
mkdir -p "$BASE_IMAGES_DIR"
resolve PYTHON_BASE_IMAGE "$PYTHON_BASE_IMAGE" python
resolve NODE_IMAGE "$NODE_IMAGE" node
resolve AIRFLOW_BASE_IMAGE "$AIRFLOW_BASE_IMAGE" airflow
rmdir "$BASE_IMAGES_DIR" 2>/dev/null || true
