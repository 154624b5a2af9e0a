#!/usr/bin/env bash
# Installs what podmirror needs on a fresh Debian machine (run as root), idempotently and quickly
# when everything is already there:
#   scripts/setup.sh          Debian packages for the lab + a virtualenv in .venv with podmirror
#   scripts/setup.sh --test   the same, plus what the test tiers need (etcd, Go for the apiserver build)
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(iproute2 tcpdump tshark iperf3 nftables openssl procps ca-certificates)
if [ "${1:-}" = "--test" ]; then
  pkgs+=(etcd-server golang-go golang-github-modern-go-reflect2-dev dpkg-dev rsync chromium curl)
  command -v kubectl >/dev/null 2>&1 || pkgs+=(kubernetes-client)
fi
python3 -c 'import ensurepip, venv' 2>/dev/null || pkgs+=(python3-venv)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
stamp=.venv/.podmirror-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing podmirror and its Python dependencies into .venv" >&2
  .venv/bin/pip install -q --upgrade pip >&2
  .venv/bin/pip install -q -e '.[test]' >&2
  echo "$want" > "$stamp"
fi
