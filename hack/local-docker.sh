#!/usr/bin/env bash
# A private Docker engine for `make images` on a machine without one (or whose own must stay untouched):
# Debian's dockerd 20.10 (package docker.io) with everything of its own under DIR (default build/docker):
# data root (images, build cache), exec root (its containerd, network namespaces), pidfile, socket, config and log.
# It touches nothing of the host's networking: no bridge (builds use `--network host`, see make/images.mk), no
# iptables rules, no ip_forward; its containers' cgroups live under /titanic-docker-<hash of DIR>. Root only.
#
#   hack/local-docker.sh up [DIR]      start it (no-op when it runs); prints DOCKER=... for make
#   hack/local-docker.sh down [DIR]    stop it; leaves no process, mount, cgroup or runtime file behind, but
#                                      keeps DIR/data (the images and the build cache) for the next `up`
#   hack/local-docker.sh purge [DIR]   down, then delete DIR (images and cache too)
#   hack/local-docker.sh status [DIR]  exit 0 when it answers
#   hack/local-docker.sh docker [DIR]  print the client command: /usr/bin/docker -H unix://DIR/docker.sock
#
#   make images DOCKER="$(hack/local-docker.sh docker)"
#
# The client must be Debian's /usr/bin/docker (20.10, BuildKit built into the daemon): a newer client without
# the buildx plugin refuses DOCKER_BUILDKIT=1.
set -euo pipefail

cmd=${1:-}
dir=${2:-$(cd "$(dirname "$0")/.." && pwd)/build/docker}
dir=$(realpath -m "$dir")
sock=$dir/docker.sock
client=(/usr/bin/docker -H "unix://$sock")
# The parent cgroup of its containers, one per DIR: `down` removes it, and another engine's stays.
CGROUP_PARENT=titanic-docker-$(printf %s "$dir" | sha256sum | cut -c1-8)

# Outside DIR, parents before children (see up).
HOST_PATHS=(/run/docker /run/docker/plugins /etc/docker /etc/docker/key.json /run/containerd /run/containerd/s)

die() { echo "local-docker: $*" >&2; exit 1; }

answers() { "${client[@]}" version >/dev/null 2>&1; }

alive() { [ -d "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

# Processes of this engine: dockerd, its containerd and the containerd shims whose command line names DIR
# (never a client such as `make images DOCKER=...`, whose command line names the socket too).
own_pids() {
  local p exe
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    exe=$(readlink "/proc/$p/exe" 2>/dev/null) || continue
    case "${exe##*/}" in dockerd|containerd|containerd-shim*|runc|tini) ;; *) continue ;; esac
    tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$dir/" && alive "$p" && echo "$p"
  done; true
}

# Mount points under DIR, deepest first.
own_mounts() {
  awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (dockerd)"
  [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || die "no dockerd: apt-get install docker.io (make image-deps)"
  if answers; then "${client[@]}" version -f 'dockerd {{.Server.Version}} answers on unix://'"$sock" >&2; return; fi
  [ -z "$(own_pids)" ] || die "a dockerd of $dir runs but does not answer; run: $0 down $dir"
  mkdir -p "$dir/data" "$dir/run"
  echo '{}' > "$dir/daemon.json"  # not /etc/docker/daemon.json: the machine's own settings stay out of it
  # Paths dockerd 20.10 and its containerd 1.6 use whatever their roots: /run/docker/plugins (plugin discovery),
  # /etc/docker/key.json (the daemon's ID key), /run/containerd/s (the shims' sockets). `down` removes those that
  # were not there before (directories only when empty: another containerd's shims use /run/containerd/s too).
  local path
  : > "$dir/made-paths"
  for path in "${HOST_PATHS[@]}"; do [ -e "$path" ] || echo "$path" >> "$dir/made-paths"; done
  # tini -s: a subreaper, so the containerd shims this engine leaves orphaned are reaped by it, not by PID 1.
  # PATH: Debian's containerd 1.6 and runc, never a containerd of ./bin (the real node's 2.x).
  PATH=/usr/sbin:/usr/bin:/sbin:/bin setsid /usr/bin/tini -s -- /usr/sbin/dockerd \
    --config-file "$dir/daemon.json" --data-root "$dir/data" --exec-root "$dir/run" \
    --pidfile "$dir/docker.pid" -H "unix://$sock" \
    --bridge=none --iptables=false --ip-forward=false --ip-masq=false --userland-proxy=false \
    --cgroup-parent="/$CGROUP_PARENT" --storage-driver=overlay2 \
    >"$dir/dockerd.log" 2>&1 </dev/null &
  echo $! > "$dir/tini.pid"
  local i
  for i in $(seq 1 120); do
    answers && break
    alive "$(cat "$dir/tini.pid")" || { tail -n 20 "$dir/dockerd.log" >&2; down; die "dockerd exited (log above)"; }
    sleep 0.5
  done
  answers || { tail -n 20 "$dir/dockerd.log" >&2; down; die "dockerd did not answer within 60 s"; }
  "${client[@]}" version -f 'dockerd {{.Server.Version}} (API {{.Server.APIVersion}}) up on unix://'"$sock" >&2
}

down() {
  local pid pids i
  if [ -f "$dir/docker.pid" ] && pid=$(cat "$dir/docker.pid") && alive "$pid"; then
    kill -TERM "$pid"  # dockerd stops its containers and its containerd, and unmounts their layers
    for i in $(seq 1 120); do alive "$pid" || break; sleep 0.5; done
  fi
  pids=$(own_pids)
  if [ -n "$pids" ]; then
    echo "local-docker: stopping leftover processes of $dir: $pids" >&2
    kill -TERM $pids 2>/dev/null || true
    for i in $(seq 1 20); do pids=$(own_pids); [ -z "$pids" ] && break; sleep 0.5; done
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  fi
  if [ -f "$dir/tini.pid" ]; then
    pid=$(cat "$dir/tini.pid")
    for i in $(seq 1 20); do alive "$pid" || break; sleep 0.5; done
  fi
  local m
  for m in $(own_mounts); do umount "$m" 2>/dev/null || umount -l "$m"; done
  # cgroup v1: dockerd leaves the (empty) parent cgroup in every hierarchy; cgroup v2: one directory.
  local cg
  for cg in /sys/fs/cgroup/"$CGROUP_PARENT" /sys/fs/cgroup/*/"$CGROUP_PARENT"; do
    [ -d "$cg" ] || continue
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$cg" ] || echo "local-docker: $cg still exists (a process is still in it?)" >&2
  done
  local path
  if [ -f "$dir/made-paths" ]; then
    for path in $(tac "$dir/made-paths"); do  # children before parents
      if [ -d "$path" ]; then rmdir "$path" 2>/dev/null || echo "local-docker: $path is not empty: kept" >&2
      else rm -f "$path"; fi
    done
  fi
  rm -rf "$dir/run" "$sock" "$dir/docker.pid" "$dir/tini.pid" "$dir/daemon.json" "$dir/made-paths"
  [ -z "$(own_pids)" ] && [ -z "$(own_mounts)" ] || die "could not stop everything of $dir"
}

case "$cmd" in
  up) up; echo "DOCKER=${client[*]}" ;;
  down) down ;;
  purge) down; rm -rf "$dir" ;;
  status) answers ;;
  docker) echo "${client[*]}" ;;
  *) sed -n '2,17s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
esac
