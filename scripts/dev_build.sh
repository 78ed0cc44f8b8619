#!/usr/bin/env bash
# Incremental in-tree build for development: compiles fdiv_ops._C into build/dev-<cpu|cuda> and links it
# into python/fdiv_ops/, so that `PYTHONPATH=python python -m pytest` tests the working tree as it is.
#   scripts/dev_build.sh          CPU kernels only (fast: what CI's machines can run)
#   scripts/dev_build.sh cuda     CPU and CUDA kernels (FDIV_OPS_CUDA_ARCHS, default 80-real;90)
# Do not combine with an installed or editable fdiv-ops in the same environment (pip uninstall fdiv-ops).
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${1:-cpu}
case "$flavour" in
  cpu) cuda=OFF ;;
  cuda) cuda=ON ;;
  *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;;
esac
build=build/dev-$flavour
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DFDIV_OPS_CUDA=$cuda \
    -DCMAKE_CUDA_ARCHITECTURES="${FDIV_OPS_CUDA_ARCHS:-80-real;90}" \
    -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python)" >/dev/null
fi
cmake --build "$build" -j "$(nproc)"
so=$(ls "$build"/_C*.so)
ln -sf "$PWD/$so" "python/fdiv_ops/$(basename "$so")"
echo "linked $(basename "$so") -> $so"
