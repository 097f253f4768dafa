#!/usr/bin/env bash
# The test cluster: a real Kubernetes control plane on loopback (see README, "Testing").
#   scripts/cluster.sh build   builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and
#                              helm from their Go modules at pinned versions, into a cache keyed by version
#                              (${XDG_CACHE_HOME:-~/.cache}/s3backup/cluster/<component>-<version>/); skips what is there.
#   scripts/cluster.sh up      builds if needed, starts the control plane and the process kubelet in a temporary
#                              directory, and prints the `export` lines to use it (eval "$(scripts/cluster.sh up)").
#   scripts/cluster.sh down    stops everything `up` started ($CLUSTER_DIR, or the directory given as argument).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
cache="${S3BACKUP_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/s3backup/cluster}"
venv="$(realpath -m "${S3BACKUP_VENV:-$repo/.venv}")"

# Pinned versions: the Go modules under scripts/cluster/ (go.mod + go.sum) pin the same ones.
KUBE_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.22.0

kube_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34 -X k8s.io/component-base/version.gitTreeState=clean"

log() { echo "cluster: $*" >&2; }

# build_one NAME VERSION MODULE_DIR LDFLAGS PACKAGE...: `go build` into $cache/NAME-VERSION unless it is there.
build_one() {
  local name=$1 version=$2 module=$3 ldflags=$4
  shift 4
  local out="$cache/$name-$version"
  if [ -f "$out/.complete" ]; then
    return 0
  fi
  command -v go >/dev/null || { log "Go is needed to build $name (https://go.dev/dl)"; exit 2; }
  log "building $name $version (once per machine; see README, Testing)"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  local start=$SECONDS
  (cd "$here/cluster/$module" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" "$@") >&2
  rm -rf "$out" && mv "$out.tmp" "$out" && touch "$out/.complete"
  log "built $name $version in $((SECONDS - start))s"
}

build() {
  build_one kube "$KUBE_VERSION" kube "$kube_ldflags" k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  build_one etcd "$ETCD_VERSION" etcd "-s -w" .
  build_one helm "$HELM_VERSION" helm "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    helm.sh/helm/v3/cmd/helm
}

bin_dirs() {
  echo "$cache/kube-$KUBE_VERSION:$cache/helm-$HELM_VERSION:$cache/etcd-$ETCD_VERSION"
}

case "${1:-}" in
  build)
    build
    ;;
  up)
    build
    [ -x "$venv/bin/python" ] || { log "no virtualenv at $venv: run scripts/bootstrap.sh test first"; exit 2; }
    exec "$venv/bin/python" "$here/cluster/control_plane.py" up --bin-path "$(bin_dirs)" --venv "$venv" \
      --chart "$repo/charts/s3backup"
    ;;
  down)
    dir="${2:-${CLUSTER_DIR:-}}"
    [ -n "$dir" ] || { log "usage: scripts/cluster.sh down [CLUSTER_DIR] (or set CLUSTER_DIR)"; exit 2; }
    exec "$venv/bin/python" "$here/cluster/control_plane.py" down --cluster-dir "$dir"
    ;;
  *)
    echo "usage: scripts/cluster.sh build|up|down" >&2
    exit 2
    ;;
esac
