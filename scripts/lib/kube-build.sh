# Sourced by .ci/apiserver.sh and scripts/cluster.sh: Kubernetes v1.20 binaries built from Debian's
# `kubernetes` source package, once, cached in $PODMIRROR_CACHE (/var/cache/podmirror) outside the
# checkout. One source tree serves every binary (the generated code is made once); a lock keeps two
# builds from running in that tree at the same time.
#
# Debian's tree vendors modern-go/reflect2 1.0.1, which crashes under Go 1.19 ("unsafe.Pointer
# to reflect.Value"); Debian's golang-github-modern-go-reflect2-dev (1.0.2) replaces it.

source "${BASH_SOURCE[0]%/*}/apt-src.sh"
PODMIRROR_CACHE=${PODMIRROR_CACHE:-/var/cache/podmirror}

# podmirror_kube_built NAME: true when $PODMIRROR_CACHE/NAME exists and runs.
podmirror_kube_built() {
  [ -x "$PODMIRROR_CACHE/$1" ] && "$PODMIRROR_CACHE/$1" --version >/dev/null 2>&1
}

# podmirror_kube_build NAME...: builds the missing ones of kube-apiserver, kubelet, kube-proxy,
# kube-controller-manager, kube-scheduler (cmd/NAME) into $PODMIRROR_CACHE/NAME. Output on stderr.
podmirror_kube_build() {
  local name want=()
  for name in "$@"; do podmirror_kube_built "$name" || want+=("cmd/$name"); done
  [ ${#want[@]} -gt 0 ] || return 0
  mkdir -p "$PODMIRROR_CACHE/src"
  (
    flock 9
    export DEBIAN_FRONTEND=noninteractive
    podmirror_ensure_deb_src
    apt-get install -y -q --no-install-recommends dpkg-dev golang-go golang-github-modern-go-reflect2-dev \
      etcd-server rsync >&2
    cd "$PODMIRROR_CACHE/src"
    if ! ls -d kubernetes-*/ >/dev/null 2>&1; then apt-get source -q kubernetes >&2; fi
    cd "$(ls -d "$PODMIRROR_CACHE"/src/kubernetes-*/ | head -n 1)"
    local r2=vendor/github.com/modern-go/reflect2
    if [ ! -f "$r2/.podmirror-replaced" ]; then
      rm -rf "$r2" && mkdir -p "$r2"
      cp -r /usr/share/gocode/src/github.com/modern-go/reflect2/. "$r2/"
      touch "$r2/.podmirror-replaced"
    fi
    # The build's own version stamping calls git; the source package is not a repository.
    export KUBE_GIT_VERSION=v1.20.5 KUBE_GIT_TREE_STATE=clean GOFLAGS=-mod=vendor GO111MODULE=on
    want=()
    for name in "$@"; do podmirror_kube_built "$name" || want+=("cmd/$name"); done  # built meanwhile?
    [ ${#want[@]} -gt 0 ] || exit 0
    make WHAT="${want[*]}" >&2
    for name in "${want[@]#cmd/}"; do
      install -m 0755 "$(find _output -type f -name "$name" -perm -u+x | head -n 1)" "$PODMIRROR_CACHE/$name"
    done
  ) 9>"$PODMIRROR_CACHE/src/.build.lock"
}
