#!/usr/bin/env bash
# The project images' tag: the commit, plus a hash of the uncommitted changes when there are any. A rebuilt image
# with other content never reuses a tag the cluster already runs (with IfNotPresent the kubelet would keep the old
# image, and `helm upgrade` would see no change to roll).
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$(git rev-parse --short=12 HEAD 2>/dev/null) || { echo "0.1.0-dev"; exit 0; }
if [ -z "$(git status --porcelain)" ]; then echo "$rev"; exit 0; fi
changes=$({ git diff HEAD --binary; git ls-files -o --exclude-standard -z | xargs -0r sha256sum; } | sha256sum | cut -c1-10)
echo "$rev-dirty-$changes"
