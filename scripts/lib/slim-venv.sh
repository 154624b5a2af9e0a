#!/bin/sh
# slim-venv.sh SITE-PACKAGES: removes from an installed podmirror venv what podmirror never loads.
# Run by scripts/image.sh and by the Dockerfile, so both images hold the same files. Needs binutils
# (readelf, strip). Measured on the image: 406 MB unpacked before, about 290 MB after.
set -eu
SP=$1
[ -d "$SP/nodeagent" ] || { echo "slim-venv.sh: $SP holds no podmirror install" >&2; exit 2; }
# The Kubernetes client's asyncio twin (64 MB): podmirror uses the synchronous client.
rm -rf "$SP/kubernetes/aio"
# The packages' own test suites.
find "$SP" -depth -type d -name tests -exec rm -rf {} +
# numpy's build-time parts (Fortran wrapper generator, C headers, static libraries).
rm -rf "$SP/numpy/f2py" "$SP/numpy/_core/include" "$SP/numpy/_core/lib"
# zstandard's CFFI backend: its C backend is the one imported.
rm -f "$SP"/zstandard/_cffi.*.so "$SP"/zstandard/backend_cffi.py "$SP"/zstandard/__pycache__/backend_cffi.*
# Debug information some wheels ship (zstandard's C backend: 11.6 MB -> 1 MB). Only --strip-debug,
# only files that carry it: libraries auditwheel vendored and patched (numpy.libs) break when stripped.
find "$SP" -type f -name '*.so*' | while read -r lib; do
  if readelf -S "$lib" 2>/dev/null | grep -q '\.debug_info'; then strip --strip-debug "$lib"; fi
done
