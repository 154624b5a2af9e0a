#!/usr/bin/env bash
# Builds the podmirror image without a registry or a Docker daemon, and imports it into the
# cluster's containerd (scripts/cluster.sh) as podmirror:dev (containerd's name for it:
# docker.io/library/podmirror:dev).
#
#   scripts/image.sh              build (cached parts reused), write the archive, import it when
#                                 the cluster's containerd runs; prints the archive's path last
#   scripts/image.sh --no-import  build and write the archive only
#
# The same contents as the Dockerfile (the way to build where a registry exists): Debian bookworm's
# python3 with libpcap0.8, libstdc++6 (numpy's wheel needs it) and ca-certificates; a virtualenv in
# /opt/podmirror with podmirror and its Python dependencies (no pip), slimmed by
# scripts/lib/slim-venv.sh; PATH and PYTHON* variables, user 65532:65532, `nodeagent run` as command.
# tests/cluster/test_image.py checks that the two agree and runs the entry points inside the image.
#
# Steps and caches (outside the checkout, in $PODMIRROR_CACHE/image, default /var/cache/podmirror):
# 1. base/<key>: a Debian root filesystem by mmdebstrap from this machine's Debian apt sources
#    (scripts/lib/apt-src.sh): the `essential` variant (minbase without apt), the packages above,
#    without documentation, manuals and locales; dpkg's programs removed, its status file kept (so
#    scanners still see the packages). Keyed by the package list and the sources.
# 2. wheels/<key>: the Python dependencies as wheels for CPython 3.11 manylinux x86_64, downloaded
#    once (keyed by pyproject.toml's dependencies), with pip itself (run from its wheel, never
#    installed in the image).
# 3. the image: the base, a venv made by the image's own python3, podmirror's wheel built from the
#    checkout and installed there with the cached wheels only (--no-index); one layer, written by
#    scripts/lib/ociarchive.py with every mtime clamped to SOURCE_DATE_EPOCH (the checkout's last
#    commit), so the same inputs give the same image ID.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
source "$HERE/lib/apt-src.sh"
CACHE=${PODMIRROR_CACHE:-/var/cache/podmirror}/image
TAG=podmirror:dev
OUT=$CACHE/podmirror-dev.tar
PACKAGES=(python3 libpcap0.8 libstdc++6 ca-certificates)  # the Dockerfile's final stage installs the same
PY=/usr/bin/python3                             # Debian's, as in the image (not a pyenv shim)
IMPORT=1
case "${1:-}" in
  "") ;;
  --no-import) IMPORT=0 ;;
  *) echo "usage: scripts/image.sh [--no-import]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "scripts/image.sh: needs root (mmdebstrap, chroot)" >&2; exit 1; }

say() { echo "image: $*" >&2; }
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v unshare >/dev/null || need+=(util-linux)
command -v readelf >/dev/null && command -v strip >/dev/null || need+=(binutils)
$PY -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
$PY -c 'import venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

# -- 1. the Debian base ---------------------------------------------------------------------------
SOURCES=$(podmirror_apt_sources deb)
mapfile -t PROXY < <(podmirror_apt_proxy_opts)
BASE_RECIPE="v2 essential merged-usr-hook ${PACKAGES[*]} nodoc strip-dpkg"
base_key=$(printf '%s\n%s\n' "$BASE_RECIPE" "$SOURCES" | sha256sum | cut -c1-16)
BASE=$CACHE/base/$base_key
if [ ! -f "$BASE/.done" ]; then
  say "building the Debian base $base_key (mmdebstrap, ${PACKAGES[*]})"
  rm -rf "$BASE" && mkdir -p "$BASE"
  t0=$(date +%s)
  mirrors=()
  while IFS= read -r line; do [ -n "$line" ] && mirrors+=("$line"); done <<<"$SOURCES"
  # A fixed epoch: the base is cached and keyed by its recipe, not by the checkout.
  # merged-usr hook: /usr merged as bookworm does, without the usrmerge package (it pulls in perl).
  SOURCE_DATE_EPOCH=1700000000 mmdebstrap --variant=essential --mode=root --format=directory \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    "${PROXY[@]}" \
    --customize-hook='rm -f "$1"/etc/resolv.conf "$1"/etc/hostname "$1"/etc/apt/apt.conf.d/99mmdebstrap' \
    --customize-hook='rm -rf "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/log/*' \
    --customize-hook='cd "$1" && rm -rf usr/bin/dpkg usr/bin/dpkg-* usr/sbin/dpkg-* usr/share/dpkg var/lib/dpkg/info etc/dpkg usr/share/perl5/Debconf usr/share/debconf' \
    bookworm "$BASE/rootfs" "${mirrors[@]}" >&2
  touch "$BASE/.done"
  say "base built in $(( $(date +%s) - t0 )) s: $(du -sm "$BASE/rootfs" | cut -f1) MB"
fi

# -- 2. the Python dependencies as wheels ----------------------------------------------------------
deps=$($PY - "$ROOT/pyproject.toml" <<'PYEOF'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
PYEOF
)
wheel_key=$(printf 'v1 cp311 manylinux x86_64\n%s\n' "$deps" | sha256sum | cut -c1-16)
WHEELS=$CACHE/wheels/$wheel_key
if [ ! -f "$WHEELS/.done" ]; then
  say "downloading wheels for: $(echo $deps)"
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  printf '%s\n' "$deps" > "$WHEELS/requirements.in"
  $PY -m pip download -q --dest "$WHEELS" --only-binary=:all: --implementation cp --python-version 3.11 \
    --abi cp311 --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -r "$WHEELS/requirements.in" pip >&2
  (cd "$WHEELS" && ls *.whl) > "$WHEELS/wheels.txt"
  touch "$WHEELS/.done"
fi

# -- 3. the image ---------------------------------------------------------------------------------
EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)
# The archive is rebuilt only when something it is made of changed: the base, the wheels, the
# sources (as files, whatever git says), the recipe.
source_key=$( { echo "$base_key $wheel_key $EPOCH"
                tar -C "$ROOT" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
                    --exclude=__pycache__ -cf - pyproject.toml README.md nodeagent sidecar_lite | sha256sum
                cat "$0" "$HERE/lib/ociarchive.py" "$HERE/lib/slim-venv.sh"; } | sha256sum | cut -c1-16)
assemble() {  # the archive from the cached base and wheels and the checkout
  WORK=$CACHE/work
  rm -rf "$WORK" && mkdir -p "$WORK"
  [ -n "${PODMIRROR_IMAGE_KEEP_WORK:-}" ] || trap 'rm -rf "$WORK"' EXIT
  say "building podmirror's wheel from $ROOT"
  SOURCE_DATE_EPOCH=$EPOCH $PY -m pip wheel -q --no-deps --wheel-dir "$WORK/dist" "$ROOT" >&2
  rm -rf "$ROOT/build" "$ROOT"/*.egg-info 2>/dev/null || true
  ROOTFS=$WORK/rootfs
  cp -a "$BASE/rootfs" "$ROOTFS"
  mkdir -p "$ROOTFS/tmp/wheels"
  cp "$WHEELS"/*.whl "$WORK"/dist/*.whl "$ROOTFS/tmp/wheels/"
  pip_wheel=$(cd "$ROOTFS/tmp/wheels" && ls pip-*.whl)
  # Inside the image's root: its own python3 makes the venv; pip runs from its wheel; SOURCE_DATE_EPOCH
  # makes the byte-code hash-based (reproducible). Private mounts vanish with the namespace.
  unshare --mount --propagation private -- sh -euc '
    R=$1
    mount --bind /dev "$R/dev"
    mount -t proc proc "$R/proc"
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root SOURCE_DATE_EPOCH=$2 PIP_DISABLE_PIP_VERSION_CHECK=1 \
      PIP_NO_CACHE_DIR=1 PIP_CONFIG_FILE=/dev/null chroot "$R" /bin/sh -euc "
      /usr/bin/python3 -m venv --without-pip /opt/podmirror
      /opt/podmirror/bin/python /tmp/wheels/$3/pip install -q --no-index --find-links /tmp/wheels \
        --no-warn-script-location podmirror
    "
  ' sh "$ROOTFS" "$EPOCH" "$pip_wheel" >&2
  rm -rf "$ROOTFS/tmp/wheels" "$ROOTFS"/root/.cache
  find "$ROOTFS/tmp" "$ROOTFS/root" -mindepth 1 -delete 2>/dev/null || true
  # What podmirror never loads (the Dockerfile runs the same script).
  "$HERE/lib/slim-venv.sh" "$ROOTFS/opt/podmirror/lib/python3.11/site-packages"

  # The runtime configuration: the Dockerfile's USER, ENV, EXPOSE and CMD (Debian's default PATH after
  # the venv's bin, as ENV PATH=/opt/podmirror/bin:$PATH gives on debian:bookworm-slim).
  cat > "$WORK/config.json" <<'JSON'
  {
    "User": "65532:65532",
    "Env": ["PATH=/opt/podmirror/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
    "Cmd": ["nodeagent", "run"],
    "ExposedPorts": {"14789/udp": {}, "9476/tcp": {}, "9477/tcp": {}, "8443/tcp": {}},
    "WorkingDir": "/"
  }
JSON
  read -r IMAGE_ID UNPACKED STORED < <($PY "$HERE/lib/ociarchive.py" "$ROOTFS" "$OUT" --tag "$TAG" \
                                        --config "$WORK/config.json" --epoch "$EPOCH" --gzip)
  echo "$IMAGE_ID" > "$CACHE/podmirror-dev.id"
  echo "$source_key" > "$CACHE/podmirror-dev.key"
  say "$TAG $IMAGE_ID: $((STORED / 1000000)) MB compressed, $((UNPACKED / 1000000)) MB unpacked; archive $OUT"
}
if [ -f "$OUT" ] && [ "$(cat "$CACHE/podmirror-dev.key" 2>/dev/null)" = "$source_key" ]; then
  say "podmirror:dev $(cat "$CACHE/podmirror-dev.id") is up to date ($OUT)"
else
  assemble
fi

# -- import into the cluster's containerd ----------------------------------------------------------
SOCK=${PODMIRROR_CONTAINERD:-/run/podmirror-cluster/containerd/containerd.sock}
if [ "$IMPORT" = 1 ]; then
  if [ -S "$SOCK" ] && ctr --address "$SOCK" version >/dev/null 2>&1; then
    ctr --address "$SOCK" -n k8s.io images import "$OUT" >&2
    say "imported into $SOCK (namespace k8s.io) as docker.io/library/$TAG"
  else
    say "no cluster containerd at $SOCK: not imported (scripts/cluster.sh up, then run this again)"
  fi
fi
echo "$OUT"
