#!/usr/bin/env bash
# Builds a real kube-apiserver (v1.20, Debian's `kubernetes` source package) once and caches it
# outside the checkout (scripts/lib/kube-build.sh). Prints the binary's path. Idempotent: a cached
# binary is reused.
set -euo pipefail
source "$(cd "$(dirname "$0")/.." && pwd)/scripts/lib/kube-build.sh"
podmirror_kube_build kube-apiserver
echo "$PODMIRROR_CACHE/kube-apiserver"
