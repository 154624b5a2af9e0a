#!/usr/bin/env bash
# The README's second command: set up, then run every test tier (unit, component, namespaces,
# end to end, Kubernetes against the fake API and against a real kube-apiserver), the linters,
# the import-layering contracts and the type checker. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# A real kube-apiserver (v1.20 from Debian's source package), built once and cached outside the
# checkout; the `apiserver` tier uses it.
PODMIRROR_APISERVER=$(.ci/apiserver.sh)
export PODMIRROR_APISERVER
.venv/bin/ruff check nodeagent sidecar_lite tests bench
.venv/bin/lint-imports
.venv/bin/mypy  # strict, over nodeagent and sidecar_lite (pyproject.toml [tool.mypy])
exec .venv/bin/pytest "$@"
