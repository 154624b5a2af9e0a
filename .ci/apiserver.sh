#!/usr/bin/env bash
# Builds a real kube-apiserver (v1.20, Debian's `kubernetes` source package) once and caches it
# outside the checkout. Prints the binary's path. Idempotent: a cached binary is reused.
#
# Debian's tree vendors modern-go/reflect2 1.0.1, which crashes under Go 1.19 ("unsafe.Pointer
# to reflect.Value"); Debian's golang-github-modern-go-reflect2-dev (1.0.2) replaces it.
set -euo pipefail
CACHE=${PODMIRROR_CACHE:-/var/cache/podmirror}
BIN="$CACHE/kube-apiserver"
if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then echo "$BIN"; exit 0; fi
mkdir -p "$CACHE/src"
export DEBIAN_FRONTEND=noninteractive
if ! grep -rqs '^Types: deb deb-src' /etc/apt/sources.list.d/ && [ ! -f /etc/apt/sources.list.d/podmirror-src.sources ]; then
  cat > /etc/apt/sources.list.d/podmirror-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -q >&2
fi
apt-get install -y -q dpkg-dev golang-go golang-github-modern-go-reflect2-dev etcd-server rsync >&2
cd "$CACHE/src"
if ! ls -d kubernetes-*/ >/dev/null 2>&1; then apt-get source -q kubernetes >&2; fi
TREE=$(ls -d "$CACHE"/src/kubernetes-*/ | head -n 1)
cd "$TREE"
R2=vendor/github.com/modern-go/reflect2
if [ ! -f "$R2/.podmirror-replaced" ]; then
  rm -rf "$R2" && mkdir -p "$R2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2/. "$R2/"
  touch "$R2/.podmirror-replaced"
fi
# The build's own version stamping calls git; the source package is not a repository.
export KUBE_GIT_VERSION=v1.20.5 KUBE_GIT_TREE_STATE=clean GOFLAGS=-mod=vendor GO111MODULE=on
make WHAT=cmd/kube-apiserver >&2
OUT=$(find _output -type f -name kube-apiserver -perm -u+x | head -n 1)
install -m 0755 "$OUT" "$BIN"
echo "$BIN"
