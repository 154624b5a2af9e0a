#!/usr/bin/env bash
# The README's first command: set up, then run the local lab (a node built from network
# namespaces: pods with sidecars, the node agent, a remote sensor). Extra arguments go to
# `nodeagent lab` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/nodeagent lab "$@"
