#!/usr/bin/env bash
# The README's second command: set up, then run every test tier (unit, component, namespaces,
# end to end, Kubernetes against the fake API and against a real kube-apiserver, a real one-node
# cluster), the linters, the import-layering contracts and the type checker. Extra arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# Built once and cached outside the checkout (/var/cache/podmirror), quick afterwards:
# a real kube-apiserver (v1.20 from Debian's source package) for the `apiserver` tier,
PODMIRROR_APISERVER=$(.ci/apiserver.sh)
export PODMIRROR_APISERVER
# the node's other binaries and its pause image, and the podmirror image, for the `cluster` tier.
scripts/cluster.sh build
scripts/image.sh --no-import >/dev/null
.venv/bin/ruff check nodeagent sidecar_lite tests bench scripts
.venv/bin/lint-imports
.venv/bin/mypy  # strict, over nodeagent and sidecar_lite (pyproject.toml [tool.mypy])
# The cluster tier brings the node up and down itself (tests/cluster/conftest.py), also when a test
# fails; if pytest itself dies, the node it left is brought down here.
cluster_was_up=0
scripts/cluster.sh status >/dev/null 2>&1 && cluster_was_up=1
rc=0
.venv/bin/pytest "$@" || rc=$?
if [ $rc -ne 0 ] && [ $cluster_was_up = 0 ] && [ -d /var/lib/podmirror-cluster ]; then scripts/cluster.sh down || rc=1; fi
exit $rc
